"""The minimal drain the speed targets were set against: raw ASGI and SQLite, nothing else.

    python -m bench.minimal PORT DB

What issue 4 describes as "about 80 lines of raw ASGI and SQLite (WAL, synchronous=NORMAL,
one transaction per request, no validation, no fencing, no history)", served exactly as the
ceiling is. It speaks just enough of the protocol for bench/drain.lua and the bulk fill:
``POST /v1/queue/bench/tasks`` with ``{"tasks": [{"data": ...}]}``, ``POST
/v1/queue/bench`` with ``{"max": n, "tasks": [{"_id": ..., "status": "done"}]}``, and
``GET /v1/queue/bench/tasks`` (how many are left). It has no queues, priorities, leases,
attempts, authentication, limits or error handling: it is a yardstick, not a server.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from bench.ceiling import serve

Message = MutableMapping[str, Any]
JSON = [(b"content-type", b"application/json")]

db = sqlite3.connect(sys.argv[2] if len(sys.argv) > 2 else "minimal.db", isolation_level=None)
db.execute("PRAGMA journal_mode = WAL")
db.execute("PRAGMA synchronous = NORMAL")
db.execute("CREATE TABLE IF NOT EXISTS tasks (id INTEGER PRIMARY KEY, state INTEGER, data BLOB)")
db.execute("CREATE INDEX IF NOT EXISTS ready ON tasks (id) WHERE state = 0")


def enqueue(body: Any) -> bytes:
    with db:
        db.executemany(
            "INSERT INTO tasks (state, data) VALUES (0, ?)",
            [(json.dumps(task["data"]),) for task in body["tasks"]],
        )
    return b"{}"


def poll(body: Any) -> bytes:
    db.execute("BEGIN IMMEDIATE")
    for ack in body.get("tasks", ()):
        db.execute("DELETE FROM tasks WHERE id = ?", (int(ack["_id"]),))
    rows = db.execute(
        "UPDATE tasks SET state = 1 WHERE id IN (SELECT id FROM tasks WHERE state = 0"
        " ORDER BY id LIMIT ?) RETURNING id, data",
        (body.get("max", 1),),
    ).fetchall()
    db.execute("COMMIT")
    tasks = ",".join(f'{{"_id":"{task_id}","data":{data}}}' for task_id, data in rows)
    return f'{{"tasks":[{tasks}]}}'.encode()


def left() -> bytes:
    row = db.execute("SELECT id FROM tasks LIMIT 1").fetchone()
    return b'{"tasks":[{"_id":"%d"}]}' % row[0] if row else b'{"tasks":[]}'


async def app(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["method"] == "GET":
        answer = left()
    elif scope["method"] == "PUT":  # the fill's queue creation: there is one queue
        answer = b"{}"
    elif scope["path"].endswith("/tasks"):
        answer = enqueue(json.loads(body))
    else:
        answer = poll(json.loads(body or b"{}"))
    headers = [*JSON, (b"content-length", b"%d" % len(answer))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


if __name__ == "__main__":
    serve(app, int(sys.argv[1]))
