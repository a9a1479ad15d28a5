"""Stores, chosen by URL scheme. See :mod:`katar.store.base` for the contract."""

from __future__ import annotations

from katar.core.storage import Change, PollResult, Store
from katar.errors import ConfigError
from katar.logs import mask_credentials

__all__ = ["Change", "PollResult", "Store", "open_store"]


def open_store(url: str) -> Store:
    """The store for ``url`` (not yet opened): ``sqlite:///path.db``, ``memory://``, ..."""
    scheme, sep, _rest = url.partition("://")
    if not sep:
        raise ConfigError(
            f"invalid store URL {mask_credentials(url)!r}: expected sqlite:///path.db, "
            "memory:// or postgresql://user@host:port/dbname"
        )
    if scheme == "sqlite":
        from katar.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme == "memory":
        from katar.store.memory import MemoryStore

        return MemoryStore(url)
    if scheme in ("postgresql", "postgres"):
        from katar.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigError(
        f"unknown store scheme {scheme!r} in {mask_credentials(url)!r}; use sqlite://, "
        "memory:// or postgresql://"
    )
