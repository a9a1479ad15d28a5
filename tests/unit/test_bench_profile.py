"""The PostgreSQL profile's readings (bench/pgprofile.py): statements, transactions and round
trips from libpq's trace, and top frames from py-spy's raw output."""

from __future__ import annotations

from pathlib import Path

from bench.pgprofile import _sizes, count, top_frames

# One transaction as libpq traces it: BEGIN, a statement prepared under a name, then run
# again by that name, COMMIT; four round trips.
TRACE = """F\t10\tQuery\t "BEGIN"
B\t10\tCommandComplete\t "BEGIN"
B\t5\tReadyForQuery\t T
F\t40\tParse\t "_pg3_0" "DELETE FROM s.tasks WHERE id = $1" 1 NNNN
F\t22\tBind\t "" "_pg3_0" 1 1 1 8 '\\x00' 1 0
F\t9\tExecute\t "" 0
F\t4\tSync
B\t5\tReadyForQuery\t T
F\t22\tBind\t "" "_pg3_0" 1 1 1 8 '\\x01' 1 0
F\t9\tExecute\t "" 0
F\t4\tSync
B\t5\tReadyForQuery\t T
F\t11\tQuery\t "COMMIT"
B\t5\tReadyForQuery\t I
"""


def test_count_reads_statements_transactions_and_round_trips(tmp_path: Path) -> None:
    (tmp_path / "a.trace").write_text('F\t10\tQuery\t "SELECT 1"\nB\t5\tReadyForQuery\t I\n')
    since = _sizes(tmp_path)  # what was traced before the phase is left out
    with (tmp_path / "a.trace").open("a") as trace:
        trace.write(TRACE)
    figures = count(tmp_path, since, {})
    assert figures["transactions"] == 1
    assert figures["statements"] == 2
    assert figures["round_trips"] == 4
    assert figures["statement_mix"] == [("DELETE FROM s.tasks WHERE id = $1", 2)]


def test_top_frames_gives_self_and_inclusive_shares(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "run (katar/server.py:10);poll (katar/store/postgres.py:800) 3\n"
        "run (katar/server.py:10);write (katar/http/protocol.py:50) 1\n"
    )
    frames = top_frames(raw)
    assert frames["self"][0] == ("katar.store.postgres.poll", 75.0)
    assert ("katar.server.run", 100.0) in frames["inclusive"]
