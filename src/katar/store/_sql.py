"""The rules' predicates and the task states as SQL, for both SQL stores (SQLite and
PostgreSQL write them alike): each written once here, from the State values and the rules
they restate, so that a state renumbered or a rule changed cannot leave one statement behind.
The text built is the text the statements were tuned with (plans, instruction counts):
tests/unit/test_sql_text.py holds every statement to its snapshot, character for character."""

from __future__ import annotations

from typing import Final

from katar.core.model import State

#: The states by value, a row's state column to its State (faster than State(value)).
STATES: Final = tuple(State)

# The states as the integers the state column holds.
PAUSED: Final = State.PAUSED.value
READY: Final = State.READY.value
SCHEDULED: Final = State.SCHEDULED.value
RUNNING: Final = State.RUNNING.value
DONE: Final = State.DONE.value
FAILED: Final = State.FAILED.value
CANCELLED: Final = State.CANCELLED.value
WAITING: Final = State.WAITING.value

#: The tasks at rest: paused (0), done (4), failed (5), cancelled (6). Not "state IN (0, 4,
#: 5, 6)": SQLite evaluates a partial index's condition for every row a statement writes, and
#: an IN list builds a temporary b-tree each time (a 4 KiB page zeroed): 56,000 instructions
#: per task claimed and finished, more than the two statements' own work (callgrind).
AT_REST: Final = f"state NOT BETWEEN {READY} AND {RUNNING}"
#: Paused, queued or in progress (a fair queue's places, rules.fair_seq); with WAITING, every
#: task not finished.
UNDERWAY: Final = f"state BETWEEN {PAUSED} AND {RUNNING}"
#: Finished, and kept while it holds its unique_key (rules.holds_key).
ENDED_KEPT: Final = f"state BETWEEN {DONE} AND {FAILED}"
#: The parents whose end settles their children (rules.parent_end): done, failed, cancelled.
ENDED: Final = f"({DONE}, {FAILED}, {CANCELLED})"
#: The children an end of their parent still reaches (rules.orphaned).
NOT_STARTED: Final = f"({PAUSED}, {READY}, {SCHEDULED}, {WAITING})"
#: The tasks that hold their debounce_key (rules.holds_debounce, for a row with one):
#: waiting (paused, ready, scheduled), never delivered.
HOLDS_DEBOUNCE: Final = f"attempts = 0 AND state BETWEEN {PAUSED} AND {SCHEDULED}"
#: The tasks that have an expiry to come (rules.expiry): never delivered, not started.
HAS_EXPIRY: Final = f"expires_at IS NOT NULL AND attempts = 0 AND state < {RUNNING}"


def not_expired(now: str) -> str:
    """rules.expired, negated: the task may still be delivered at ``now`` (a parameter)."""
    return f"(expires_at IS NULL OR attempts > 0 OR expires_at > {now})"


def holds_key(now: str) -> str:
    """rules.holds_key, for a row with a unique_key: not finished, or held until later."""
    return f"(state < {DONE} OR state = {WAITING} OR unique_until > {now})"
