"""The tokens of the HTTP tests: one per role, scoped to the queue "own", and an admin of
every queue; their secrets, and the header that presents one."""

from __future__ import annotations

from katar.http.auth import Role, Token, digest

SECRETS = {
    "worker": "katar_worker-secret",
    "producer": "katar_producer-secret",
    "admin": "katar_admin-secret",  # scoped to the own queue, like the others
    "root": "katar_root-secret",  # admin of every queue
}
TOKENS = [
    Token(sha256=digest(SECRETS["worker"]), role=Role.WORKER, queues=frozenset({"own"})),
    Token(sha256=digest(SECRETS["producer"]), role=Role.PRODUCER, queues=frozenset({"own"})),
    Token(sha256=digest(SECRETS["admin"]), role=Role.ADMIN, queues=frozenset({"own"})),
    Token(sha256=digest(SECRETS["root"]), role=Role.ADMIN, queues=frozenset({"*"}), name="ops"),
]


def bearer(who: str) -> dict[str, str]:
    return {"authorization": f"Bearer {SECRETS[who]}"}
