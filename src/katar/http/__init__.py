"""Katar's HTTP interface: the app (an ASGI application too) and the HTTP/1.1 protocol
``katar serve`` answers through (katar.http.protocol)."""

from katar.http.app import App, Limits

__all__ = ["App", "Limits"]
