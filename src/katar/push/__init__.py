"""Push delivery: the server POSTs a push queue's tasks to its endpoint, signed per the
Standard Webhooks specification, within the queue's limits (katar.push.dispatcher), and
only to the addresses the outbound safety allows (katar.push.safety)."""

from katar.push.dispatcher import Dispatcher
from katar.push.safety import Allow

__all__ = ["Allow", "Dispatcher"]
