"""Bearer tokens, roles and queue scopes: what a token may do (docs/protocol.md,
"Authentication").

The configuration file holds each token's SHA-256, never the token, so a leaked file does not
leak credentials. Nothing here logs a token; katar.http.auth checks a request's token.

Every route of the application declares the least role it needs (:class:`Access`); routes with a
``{queue}`` parameter also check the token's queues. The check runs before the handler, so a
token learns nothing about queues outside its scope, not even whether they exist.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

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


@dataclass(frozen=True, kw_only=True)
class AwsCredential:
    """An access key that signs requests to the SQS-compatible API with AWS Signature
    Version 4 (``[[aws_credentials]]``): its role and queues are a token's. The secret is
    read at start-up from the environment variable or the file the block names, never from
    the configuration file itself; it is never shown (``repr=False``) nor logged."""

    access_key_id: str
    secret: str = field(repr=False)
    role: Role
    queues: frozenset[str]
    name: str = ""

    @property
    def all_queues(self) -> bool:
        return ALL_QUEUES in self.queues

    def may_use(self, queue: str) -> bool:
        """True when the credential's scope covers ``queue``."""
        return ALL_QUEUES in self.queues or queue in self.queues
