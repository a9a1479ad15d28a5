"""Bearer tokens, roles and queue scopes (section 4 of the contract).

The configuration file holds each token's SHA-256, never the token, so a leaked file does not
leak credentials. A request's token is hashed and compared with every known digest in constant
time, and the comparison does not stop at the first match, so timing tells nothing about which
digests exist. Nothing here logs a token.

Every route of the application declares the least role it needs (:class:`Access`); routes with a
``{queue}`` parameter also check the token's queues. The check runs before the handler, so a
token learns nothing about queues outside its scope, not even whether they exist.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from katar.errors import Forbidden, Unauthenticated

#: The ``queues`` entry that stands for every queue.
ALL_QUEUES: Final = "*"
#: What new tokens start with, so that secret scanners and people recognise them.
TOKEN_PREFIX: Final = "katar_"


class Role(enum.IntEnum):
    """A token's role; each role may do everything the roles below it may."""

    WORKER = 1  # poll and acknowledge tasks (sections 1 and 2)
    PRODUCER = 2  # also enqueue tasks and read them
    ADMIN = 3  # everything: queues, task changes, listings, metrics

    @property
    def label(self) -> str:
        return self.name.lower()


class Access(enum.Enum):
    """The access rule of one route and method."""

    OPEN = 0  # no token needed: health checks and the API's own documentation
    WORKER = Role.WORKER
    PRODUCER = Role.PRODUCER
    ADMIN = Role.ADMIN


@dataclass(frozen=True, kw_only=True)
class Token:
    """A token the server accepts, as the configuration file declares it."""

    sha256: bytes  # the SHA-256 of the token's text
    role: Role
    queues: frozenset[str]  # the queues it may touch; ALL_QUEUES for every one
    name: str = ""  # a label for people (the file's optional ``name``)

    @classmethod
    def declare(
        cls, *, sha256: str, role: str | Role, queues: Iterable[str], name: str = ""
    ) -> Token:
        """A token as a ``[[tokens]]`` block declares it: the hex digest, and the role by name.

        ``Token.declare(sha256=digest(secret).hex(), role="worker", queues=["emails"])``
        """
        return cls(
            sha256=bytes.fromhex(sha256),
            role=role if isinstance(role, Role) else Role[role.upper()],
            queues=frozenset(queues),
            name=name,
        )

    @property
    def all_queues(self) -> bool:
        return ALL_QUEUES in self.queues

    def may_use(self, queue: str) -> bool:
        """True when the token's scope covers ``queue``."""
        return ALL_QUEUES in self.queues or queue in self.queues


def digest(token: str) -> bytes:
    """The SHA-256 of a token's text."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_token() -> str:
    """A new random token: 256 bits from the operating system's generator."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class Authenticator:
    """Decides, for each request, whether its token allows the route and the queue."""

    def __init__(self, tokens: Iterable[Token] = ()) -> None:
        self.tokens: Final[Sequence[Token]] = tuple(tokens)

    @property
    def enabled(self) -> bool:
        """False when no token is configured: the server is then open to all."""
        return bool(self.tokens)

    def authenticate(self, headers: Iterable[tuple[bytes, bytes]]) -> Token:
        """The token a request's ``Authorization`` header carries; Unauthenticated if none."""
        presented = None
        for name, value in headers:
            if name == b"authorization":
                presented = value
                break
        if presented is None:
            raise Unauthenticated()
        scheme, _, credentials = presented.strip().partition(b" ")
        credentials = credentials.strip()
        if scheme.lower() != b"bearer" or not credentials:
            raise Unauthenticated(
                "the Authorization header must be 'Bearer <token>', with the token after one space"
            )
        wanted = hashlib.sha256(credentials).digest()
        found = None
        for token in self.tokens:
            # Every digest is compared, whatever matched before: constant time in the position.
            if hmac.compare_digest(token.sha256, wanted):
                found = token
        if found is None:
            raise Unauthenticated(
                "the token is not valid on this server (unknown or revoked); "
                "ask the operator for a token"
            )
        return found

    @staticmethod
    def authorize(token: Token, access: Access, queue: str | None) -> None:
        """Raise Forbidden unless ``token`` may use a route needing ``access`` on ``queue``."""
        if access is Access.OPEN:
            return
        needed = Role(access.value)
        if token.role < needed:
            wanted = "an admin" if needed is Role.ADMIN else f"a {needed.label} or admin"
            raise Forbidden(
                f"a {token.role.label} token may not do this; it needs {wanted} token",
                role=token.role.label,
                needs=needed.label,
            )
        if queue is not None and not token.may_use(queue):
            raise Forbidden(f"this token may not use the queue {queue!r}", queue=queue)
