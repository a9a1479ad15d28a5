"""Katar: an HTTP work-queue server. Workers in any language poll it for tasks over HTTP.

The Python API mirrors the original Node.js katar and katar-worker-http:

    from katar import Katar, WorkerServer

    katar = Katar()                                   # sqlite:///katar.db
    queue = katar.queue("emails", persistent=False)
    worker_server = WorkerServer(katar=katar, port=3000, host="127.0.0.1")
    worker_server.config(queue, {"interval": 1000})
    worker_server.run()

The server's names are imported on first use (PEP 562), so that ``import katar.client`` on a
worker host loads neither the server nor its dependencies (uvicorn, httptools, the stores).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from katar._version import __version__
from katar.errors import KatarError

if TYPE_CHECKING:
    from katar.api import Katar, Queue
    from katar.auth import Role, Token
    from katar.core.model import QueueOptions, Task
    from katar.server import WorkerServer

# name -> the module that defines it
_LAZY = {
    "Katar": "katar.api",
    "Queue": "katar.api",
    "QueueOptions": "katar.core.model",
    "Task": "katar.core.model",
    "Role": "katar.auth",
    "Token": "katar.auth",
    "WorkerServer": "katar.server",
}

__all__ = [
    "Katar",
    "KatarError",
    "Queue",
    "QueueOptions",
    "Role",
    "Task",
    "Token",
    "WorkerServer",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'katar' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later look-ups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
