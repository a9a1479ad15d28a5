"""Katar's HTTP interface: the app (an ASGI application too) and the HTTP/1.1 protocol
``katar serve`` answers through (katar.http.connection).

``App`` and ``Limits`` are imported on first use (PEP 562), so that the light modules below
(``katar.http.auth``) can be used without the app and the engine behind it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from katar.http.app import App, Limits

__all__ = ["App", "Limits"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'katar.http' has no attribute {name!r}")
    app = importlib.import_module("katar.http.app")

    value = getattr(app, name)
    globals()[name] = value
    return value
