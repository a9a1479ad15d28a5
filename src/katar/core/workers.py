"""The names of the workers that polled this server, per queue (GET /v1/workers).

Names are the clients' to choose, so the table is bounded: past ``limit`` names in all, a
new name takes the place of the longest unseen name of the queue that has the most. This
way the polls of one queue (one token's scope) never push another queue's workers out,
unless it has more.
"""

from __future__ import annotations

from collections.abc import Callable


class WorkerNames:
    """Per queue, the names of the workers that polled it, each with its last poll (ms),
    oldest first; at most ``limit`` names in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[str, dict[str, int]] = {}
        self._count = 0

    def saw(self, worker: str, queue: str, now: int) -> None:
        """A poll of ``queue`` named ``worker`` at ``now``."""
        names = self._seen.get(queue)
        if names is None:
            names = self._seen[queue] = {}
        if worker in names:
            del names[worker]  # each queue's names in the order of their last poll
        else:
            if self._count >= self.limit:
                self._forget_one()
            self._count += 1
        names[worker] = now

    def _forget_one(self) -> None:
        """Make room for a name: forget the longest unseen name of the queue that has the
        most."""
        largest = max(self._seen.values(), key=len)
        del largest[next(iter(largest))]
        self._count -= 1

    def since(self, since: int, visible: Callable[[str], bool]) -> dict[str, dict[str, int]]:
        """Per name, the queues that ``visible`` lets through that it polled at or after
        ``since`` (ms), each with its last poll then."""
        polled: dict[str, dict[str, int]] = {}
        for queue, names in self._seen.items():
            if visible(queue):
                for name, at in names.items():
                    if at >= since:
                        polled.setdefault(name, {})[queue] = at
        return polled
