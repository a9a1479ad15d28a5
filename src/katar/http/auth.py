"""The HTTP side of tokens (docs/protocol.md, "Authentication"): a request's
``Authorization`` header checked against the configured tokens, and a route's access rule
against the token.

Tokens, roles and digests are not HTTP concepts: they live in :mod:`katar.auth`, and are
re-exported here. A request's token is hashed and compared with every known digest in constant
time, and the comparison does not stop at the first match, so timing tells nothing about which
digests exist. Nothing here logs a token.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from typing import Final

from katar.auth import ALL_QUEUES, TOKEN_PREFIX, Access, Role, Token, digest, new_token
from katar.errors import Forbidden, Unauthenticated

__all__ = [
    "ALL_QUEUES",
    "TOKEN_PREFIX",
    "Access",
    "Authenticator",
    "Role",
    "Token",
    "digest",
    "new_token",
]


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
