"""A memory store that fails as in an outage, for the tests of what retries after one."""

from __future__ import annotations

from katar.core.model import QueueOptions
from katar.errors import StoreUnavailable
from katar.store.memory import MemoryStore


class Flaky(MemoryStore):
    """A memory store whose next ``failures`` loads of the queues fail as in an outage."""

    failures = 0

    async def load_queues(self) -> dict[str, QueueOptions]:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("PostgreSQL is unavailable (reconnecting)")
        return await super().load_queues()
