"""The storage contract, owned by the engine: see :mod:`katar.core.storage`."""

from katar.core.storage import Change, Enqueued, Observer, PollResult, Store

__all__ = ["Change", "Enqueued", "Observer", "PollResult", "Store"]
