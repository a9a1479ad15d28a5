"""Katar: an HTTP work-queue server. Workers in any language poll it for tasks over HTTP.

The Python API mirrors the original Node.js katar and katar-worker-http:

    from katar import Katar, WorkerServer

    katar = Katar()                                   # sqlite:///katar.db
    queue = katar.queue("emails", persistent=False)
    worker_server = WorkerServer(katar=katar, port=3000, host="127.0.0.1")
    worker_server.config(queue, {"interval": 1000})
    worker_server.run()
"""

from katar._version import __version__
from katar.api import Katar, Queue
from katar.core.model import QueueOptions, Task
from katar.errors import KatarError
from katar.http.auth import Role, Token
from katar.server import WorkerServer

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
