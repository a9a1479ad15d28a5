"""``sqlite:///path.db``: the default store, one file on local disk.

Its modules, each an object the store is composed of and given what it needs: ``schema``
(tables, indexes, version), ``writer`` (the file, its connections, the group commit that
operations are submitted to, the checkpointer, the disk's outages), ``queues`` (the queues'
ids and fairness and the last task id, kept in memory), ``deps`` (the dependencies),
``batch`` (the acks, and the polls of a group finished with one "done" statement and one
claim, with the rate limits' buckets) and ``store`` (the contract's operations).

With ``synchronous=NORMAL`` (the default) a committed transaction survives the process being
killed; ``?synchronous=full`` in the URL makes it survive a power cut too, at the cost of a
disk flush per commit.
"""

from katar.store.sqlite.schema import SCHEMA_VERSION
from katar.store.sqlite.store import SQLiteStore
from katar.store.sqlite.writer import parse_url

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "parse_url"]
