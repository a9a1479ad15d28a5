"""The web dashboard's files, served at ``/ui`` by ``katar serve`` (docs/dashboard.md).

The page holds no data: it is plain files (``static/``, and the front-end toolkit in
``vendor/``, each with its version and licence noted), and every datum comes from the HTTP
API with the visitor's token. So the files are served to anyone (the route is open), with a
Content-Security-Policy that lets the page reach no other host and run no inline script.

This module knows files and HTTP headers, not requests: katar.http routes ``/ui`` and
``/ui/{asset}`` here, and answers what :func:`answer` returns. It imports nothing of Katar,
so that the HTTP layer may import it.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Final

#: The page that ``/ui`` answers; every other file is ``/ui/<name>``.
INDEX: Final = "index.html"

#: Where the page may load from and talk to: this server only. No inline script or style
#: (the page has none), no plugin, no framing by another site (clickjacking), no <base> tag.
CSP: Final = (
    b"default-src 'self'; connect-src 'self'; script-src 'self'; style-src 'self'; "
    b"img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; "
    b"frame-ancestors 'none'"
)

_TYPES: Final = {
    ".html": b"text/html; charset=utf-8",
    ".mjs": b"text/javascript; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
}
#: The folders whose files are served, each file under its own name (one flat namespace, so
#: one route serves them all; _files() refuses two files of the same name).
_FOLDERS: Final = ("static", "vendor")


@dataclass(frozen=True)
class Asset:
    """A file of the dashboard, read once."""

    body: bytes
    content_type: bytes
    #: A strong validator, the hash of the content: a reload after an upgrade gets the new
    #: file, and one without costs a 304.
    etag: bytes


@functools.cache
def _files() -> dict[str, Asset]:
    found: dict[str, Asset] = {}
    package = resources.files(__name__)
    for folder in _FOLDERS:
        for entry in package.joinpath(folder).iterdir():
            kind = _TYPES.get("." + entry.name.rpartition(".")[2])
            if kind is None:  # a licence text: shipped beside its file, not served
                continue
            if entry.name in found:
                raise RuntimeError(f"two dashboard files are named {entry.name}")
            body = entry.read_bytes()
            etag = b'"%s"' % hashlib.sha256(body).hexdigest()[:32].encode()
            found[entry.name] = Asset(body, kind, etag)
    return found


def find(name: str) -> Asset | None:
    """The file served as ``/ui/<name>`` (``name`` is one path segment), or None."""
    return _files().get(name)


def answer(
    asset: Asset, if_none_match: bytes | None
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, body and headers for ``asset``: 304 when the browser's copy is current."""
    headers = [
        (b"content-type", asset.content_type),
        # Cached, but checked at each use: file names carry no version, and an upgraded
        # server must not leave a browser running the old page against the new API.
        (b"cache-control", b"no-cache"),
        (b"etag", asset.etag),
        (b"content-security-policy", CSP),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]
    if if_none_match is not None and asset.etag in _etags(if_none_match):
        return 304, b"", headers[1:]
    return 200, asset.body, headers


def _etags(header: bytes) -> set[bytes]:
    return {tag.strip().removeprefix(b"W/") for tag in header.split(b",")}
