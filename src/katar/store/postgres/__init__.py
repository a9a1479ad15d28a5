"""``postgresql://user@host:port/dbname``: a store that several Katar servers can share.

Its modules: ``schema`` (the migrations and their version), ``queries`` (the statements, one
typed attribute each), ``connection`` (the URL, the pool, outages, transactions with their
time limit and watchdog, the notifications' listener), ``deps`` (the dependencies),
``group`` (the group commit of the workers' polls) and ``store`` (the contract's
operations).
"""

from katar.store.postgres.connection import parse_url
from katar.store.postgres.schema import _MIGRATIONS, SCHEMA_VERSION
from katar.store.postgres.store import PostgresStore

__all__ = ["SCHEMA_VERSION", "_MIGRATIONS", "PostgresStore", "parse_url"]
