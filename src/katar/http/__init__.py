"""Katar's HTTP interface: the ASGI application."""

from katar.http.app import App, Limits

__all__ = ["App", "Limits"]
