"""One request on a connection (katar.http.connection), from its first byte to its answer: its
head as it is parsed, its admission, its body, and how far it has got (:class:`Stage`).

The connection (:class:`katar.http.connection.HttpProtocol`) owns what outlives a request (the
transport, the parser, the queue of requests, flow control, keep-alive); a :class:`Cycle`
owns what is one request's, and is dropped once answered.
"""

from __future__ import annotations

import enum
from typing import Final

import httptools

from katar.errors import InvalidRequest
from katar.http.app import App
from katar.http.request import Admission, check_declared_length
from katar.http.responses import Response
from katar.http.routes import BODY_METHODS

#: Bytes of a request's line and headers; beyond, 431 (llhttp itself sets no bound).
MAX_HEAD: Final = 64 * 1024


class Refused(Exception):
    """Raised from a parser callback: answer the request with ``response`` and close the
    connection (the rest of the request is not read)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class Stage(enum.Enum):
    """How far a request has got. Each step is one method of :class:`Cycle`:

    HEAD --admit--> BODY --complete--> COMPLETE --start--> ANSWERING --finish--> ANSWERED,
    and HEAD --admit--> UPGRADE: the request asks to upgrade, and is parsed again without
    (a new cycle; this one is dropped).
    """

    HEAD = "head"  # its line and headers are being parsed
    UPGRADE = "upgrade"  # its head asks to upgrade: it is parsed again without
    BODY = "body"  # routed and admitted; its body is being read
    COMPLETE = "complete"  # read whole; queued while the requests before it are answered
    ANSWERING = "answering"  # the app answers it
    ANSWERED = "answered"  # its answer is written (or its client is gone)


# Enum members through their class cost a lookup in the metaclass on every use (3.11):
# the protocol compares stages on every request.
HEAD: Final = Stage.HEAD
UPGRADE: Final = Stage.UPGRADE
BODY: Final = Stage.BODY
COMPLETE: Final = Stage.COMPLETE
ANSWERING: Final = Stage.ANSWERING
ANSWERED: Final = Stage.ANSWERED


class Cycle:
    """One request: what the parser has given of it so far (the connection's parser callbacks
    fill it in), then what the app needs to answer it. Its head and body chunks are let go
    once it is complete, so that a queued request holds its body alone."""

    __slots__ = (
        "admission",
        "body",
        "chunks",
        "expect_continue",
        "head_size",
        "headers",
        "keep_alive",
        "keep_body",
        "method",
        "path",
        "query",
        "site",
        "size",
        "stage",
        "url",
    )

    def __init__(self) -> None:
        self.stage = HEAD
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.expect_continue = False
        #: Its headers that say which site sent it (katar.http.sites.SITE_HEADERS), noted
        #: as they are parsed: the app need not look for them in all of them.
        self.site: dict[bytes, bytes] = {}
        self.method = ""
        self.path = ""
        self.query = b""
        self.admission: Admission | None = None
        self.keep_body = False  # False: the body is not the app's (refused, or a GET's)
        self.chunks: list[bytes] = []
        self.size = 0
        self.body = b""
        self.keep_alive = True

    # -- the head --------------------------------------------------------------------------

    def admit(self, method: str, upgrade: bool, app: App, limit: int) -> None:
        """The head is parsed: route it and check its token (:meth:`App.admit`: a refused
        request's body is never kept), or, asked to upgrade, mark it to be parsed again."""
        self.method = method
        if method == "CONNECT":
            raise InvalidRequest("CONNECT is not supported: Katar is not a proxy")
        if upgrade:
            self.stage = UPGRADE
            return
        try:
            url = httptools.parse_url(self.url)
            path = url.path.decode("ascii")  # escaped: the app decodes each segment
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            raise InvalidRequest("the request's target is not a valid URL path") from None
        self.path = path
        self.query = url.query or b""
        site = (self.site.get(b"host"), self.site.get(b"origin"), self.site.get(b"sec-fetch-site"))
        self.admission = admission = app.admit(method, path, self.headers, site)
        self.stage = BODY
        self.keep_body = admission.refusal is None and method in BODY_METHODS
        if self.keep_body:
            check_declared_length(self.headers, limit)

    def head_without_upgrade(self, version: str) -> bytes:
        """The request's head without its Upgrade and the Connection options that name it,
        to parse again."""
        lines = [b"%s %s HTTP/%s" % (self.method.encode(), self.url, version.encode())]
        for name, value in self.headers:
            if name in (b"upgrade", b"http2-settings"):
                continue
            if name == b"connection":
                options = [o.strip() for o in value.split(b",")]
                value = b", ".join(
                    o for o in options if o.lower() not in (b"upgrade", b"http2-settings")
                )
                if not value:
                    continue
            lines.append(name + b": " + value)
        return b"\r\n".join(lines) + b"\r\n\r\n"

    # -- the body and the answer -----------------------------------------------------------

    def complete(self, keep_alive: bool) -> None:
        """Read whole: its body joined, its head let go."""
        chunks = self.chunks
        self.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.keep_alive = keep_alive
        self.chunks = []
        self.headers = []
        self.url = b""
        self.stage = COMPLETE

    def start(self) -> None:
        """The app begins its answer."""
        self.stage = ANSWERING

    def finish(self) -> None:
        """Answered: its body let go."""
        self.body = b""
        self.stage = ANSWERED
