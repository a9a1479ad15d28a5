"""Outbound safety: where a push (or a webhook) may go.

By default a push reaches public addresses only: loopback, private, link-local (the cloud
metadata services among them), shared, multicast and reserved addresses are refused. The
check is made on the addresses a name resolves to, and the connection is made to the
address checked (the name goes in the Host header and the TLS server name), so a name that
resolves to a public address when checked and a private one when connected (DNS rebinding)
cannot slip through. The configuration's ``[push] allow`` opens hosts or URL prefixes.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Iterable
from typing import Final

from katar.errors import ValidationError

#: Names that always mean this machine, refused without resolving them.
LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
#: Cloud metadata services that are public addresses or names (most are link-local).
METADATA_NAMES: Final = frozenset({"metadata.google.internal", "metadata", "instance-data"})

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """A push target the outbound safety refuses: a failed attempt, with this message."""


def refused_address(address: Address) -> str | None:
    """Why a push may not go to ``address``; None when it may (a global address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (cloud metadata services live there)"
    if address.is_private:
        return "a private address"
    if not address.is_global or address.is_multicast:
        return "an address that is not public (reserved, shared or multicast)"
    return None


def literal_address(host: str) -> Address | None:
    """The address ``host`` is written as, or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


class Allow:
    """The configuration's ``[push] allow``: hosts (``hooks.internal``, ``127.0.0.1``,
    ``127.0.0.1:8080``) or URL prefixes (``http://127.0.0.1:8080/hooks/``) that a push may
    reach although they are loopback, private or link-local."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.hosts: set[str] = set()
        self.prefixes: list[str] = []
        for entry in entries:
            entry = entry.strip()
            if not entry:
                raise ValueError("an empty entry")
            if "://" in entry:
                parts = urllib.parse.urlsplit(entry)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise ValueError(f"{entry!r} is not an http:// or https:// URL prefix")
                self.prefixes.append(entry)
            else:
                if "/" in entry:
                    raise ValueError(f"{entry!r}: a host, host:port or a URL prefix")
                self.hosts.add(entry.lower())

    def __bool__(self) -> bool:
        return bool(self.hosts or self.prefixes)

    def permits(self, url: str) -> bool:
        """Whether ``url`` is opened by the list (its host, host:port or a prefix)."""
        if any(url.startswith(prefix) for prefix in self.prefixes):
            return True
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
        if host in self.hosts:
            return True
        port = parts.port or (443 if parts.scheme == "https" else 80)
        bracketed = f"[{host}]" if ":" in host else host
        return f"{bracketed}:{port}" in self.hosts

    def check(self, url: str, option: str = "push") -> None:
        """Refuse, as bad input (422), a URL known not to be allowed without resolving it:
        a literal loopback, private or link-local address, or a name that always means this
        machine or a metadata service. Other names are checked at connect time. ``option``:
        the queue option that names it (push, notify)."""
        why = self.refused_without_dns(url)
        if why is not None:
            raise ValidationError(
                f"queue option '{option}.url' {why}; the server calls public addresses "
                "only unless the configuration's [push] allow names the host or a URL prefix",
                option=option,
            )

    def refused_without_dns(self, url: str) -> str | None:
        """Why ``url`` is refused whatever its name resolves to; None if it may be tried."""
        if self.permits(url):
            return None
        host = (urllib.parse.urlsplit(url).hostname or "").lower().rstrip(".")
        if host in LOOPBACK_NAMES or host.endswith(".localhost"):
            return f"names this machine ({host})"
        if host in METADATA_NAMES:
            return f"names a cloud metadata service ({host})"
        address = literal_address(host)
        if address is not None:
            why = refused_address(address)
            if why is not None:
                return f"is {why} ({address})"
        return None
