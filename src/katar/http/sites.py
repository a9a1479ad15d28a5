"""Which sites may talk to the server: the ``Host`` a server without tokens answers, and the
browser requests from other sites that no route which changes anything accepts.

A server without tokens trusts whoever reaches its port, which is safe on a loopback
address only while nothing else can make requests there in a user's name. A web page can:

- DNS rebinding: a page of ``evil.example`` whose name then resolves to 127.0.0.1 sends its
  requests to Katar as "same-origin" ones, with ``Host: evil.example``. A server without
  tokens answers only the names it knows (:class:`Hosts`), as development servers do.
- Cross-site requests: any page may send a POST without reading its answer
  (``fetch(url, {mode: "no-cors"})`` or a form, with a ``text/plain`` or form body that
  needs no CORS preflight). Browsers mark such a request with ``Sec-Fetch-Site`` and
  ``Origin``; :func:`cross_site` reads them, and the app refuses the routes that change
  something. Clients that are not browsers (curl, the workers) send neither, and are not
  concerned.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

#: Host names a server without tokens always answers: loopback names. (Addresses, such as
#: 127.0.0.1 or [::1], are always answered: a page cannot rebind an address.)
LOOPBACK_NAMES: Final = ("localhost", ".localhost")
#: Allowed Host values remembered, so that a request costs one lookup: this many, of up to
#: _REMEMBERED_BYTES each; refused ones are not remembered (a client could send any number).
_REMEMBERED: Final = 64
_REMEMBERED_BYTES: Final = 300
#: What a browser's ``Sec-Fetch-Site`` says of a request from this server's own pages, or
#: typed by the user (a bookmark, the address bar).
_OWN_SITE: Final = frozenset({b"same-origin", b"none"})
_DEFAULT_PORTS: Final = {b"http": b"80", b"https": b"443"}


def check_host_pattern(pattern: str) -> str:
    """An allowed host as the configuration gives it, normalized: a name (``queue.internal``),
    a domain and its subdomains (``.internal``), an address, or ``*`` for any; ValueError
    when it is none of these."""
    text = pattern.strip().lower().rstrip(".")
    if text == "*":
        return text
    name = text.removeprefix(".")
    if _is_address(name):
        return name
    if not name or ":" in name or "/" in name or any(c.isspace() for c in name):
        raise ValueError(
            f"{pattern!r} is not a host name: give a name such as queue.internal (no port, "
            "no scheme), .internal for a domain and its subdomains, or * for any"
        )
    return text


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def host_name(header: bytes) -> str:
    """The name in a Host header, without its port, in lower case, without a trailing dot."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):  # an IPv6 address, with or without a port
        return text.partition("]")[0] + "]"
    return text.rpartition(":")[0].rstrip(".") if ":" in text else text.rstrip(".")


class Hosts:
    """The Host names a server without tokens answers: loopback names, any address, and the
    configured ``allowed``."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        patterns = [check_host_pattern(p) for p in (*LOOPBACK_NAMES, *allowed)]
        self.any: Final = "*" in patterns
        self.names: Final = frozenset(p for p in patterns if not p.startswith("."))
        self.domains: Final = tuple(p for p in patterns if p.startswith("."))
        self._known: dict[bytes, bool] = {}

    def allows(self, header: bytes | None) -> bool:
        """Whether a request with this Host header (None: without one) is answered. A
        request without one comes from no browser (HTTP/1.0): nothing to rebind."""
        if header is None or self.any:
            return True
        if header in self._known:
            return True
        name = host_name(header)
        allowed = (
            name in self.names
            or any(name.endswith(d) or name == d[1:] for d in self.domains)
            or _is_address(name)
        )
        if allowed and len(self._known) < _REMEMBERED and len(header) <= _REMEMBERED_BYTES:
            self._known[header] = True
        return allowed


#: A request's Host, Origin and Sec-Fetch-Site headers (None: not sent).
SiteHeaders = tuple[bytes | None, bytes | None, bytes | None]
#: Their names, as the HTTP layer gives header names (in lower case).
SITE_HEADERS: Final = frozenset({b"host", b"origin", b"sec-fetch-site"})
_NONE: Final[SiteHeaders] = (None, None, None)


def site_headers(headers: Iterable[tuple[bytes, bytes]]) -> SiteHeaders:
    """A request's Host, Origin and Sec-Fetch-Site headers, from all of them."""
    found = {name: value for name, value in headers if name in SITE_HEADERS}
    if not found:
        return _NONE
    return found.get(b"host"), found.get(b"origin"), found.get(b"sec-fetch-site")


def cross_site(fetch_site: bytes | None, origin: bytes | None, host: bytes | None) -> bool:
    """Whether a browser sent this request from another site's page: its ``Sec-Fetch-Site``
    says so (same-site counts: another port of the same machine is another origin), or,
    from a browser that sends none, its ``Origin`` is not the server's own (``host``: its
    Host header). Requests that carry neither (not from a browser) are not."""
    if fetch_site is not None:
        return fetch_site.strip().lower() not in _OWN_SITE
    if origin is None:
        return False
    scheme, _, authority = origin.strip().lower().partition(b"://")
    if not authority or host is None:
        return True  # "null" (a sandboxed page, a file), or nothing to compare with
    return _authority(scheme, authority) != _authority(scheme, host.strip().lower())


def _authority(scheme: bytes, authority: bytes) -> bytes:
    """host:port, with the scheme's default port written out."""
    if authority.endswith(b"]") or b":" not in authority:
        return authority + b":" + _DEFAULT_PORTS.get(scheme, b"")
    return authority
