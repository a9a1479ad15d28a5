# Sourced by scripts/serve and scripts/test: make .venv on first use and install Katar into
# it, again only when pyproject.toml or constraints.txt has changed. KATAR_ENV says what:
#   (empty)  Katar alone, as users install it (scripts/serve): no development tool.
#   dev      the test environment (scripts/test, .ci/run): Katar with its postgres extra and
#            the dev dependency group, every package at the version pinned in constraints.txt,
#            so that a release upstream cannot change CI overnight (scripts/test-newest is
#            the run that meets new releases first).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
case ${KATAR_ENV:-} in
    "") stamp=.venv/.installed ;;
    dev) stamp=.venv/.installed-dev ;;
    *) echo "KATAR_ENV must be empty or dev, not '$KATAR_ENV'" >&2; exit 2 ;;
esac
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] ||
    { [ "$stamp" = .venv/.installed-dev ] && [ constraints.txt -nt "$stamp" ]; }; then
    if [ "$stamp" = .venv/.installed-dev ]; then
        # pip itself is pinned too; `--group` needs pip 25.1 or newer.
        "${pip[@]}" -c constraints.txt --upgrade pip
        "${pip[@]}" -c constraints.txt -e ".[postgres]" --group dev
    else
        "${pip[@]}" --upgrade pip
        "${pip[@]}" -e .
    fi
    touch "$stamp"
fi
