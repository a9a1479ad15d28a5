# Sourced by scripts/serve and scripts/test: make .venv on first use and install Katar into
# it (with the extras in $KATAR_EXTRAS), again only when pyproject.toml has changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
stamp=".venv/.installed${KATAR_EXTRAS:+-$KATAR_EXTRAS}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${KATAR_EXTRAS:+[$KATAR_EXTRAS]}"
    touch "$stamp"
fi
