"""The push and notify tests' fixtures: the stores they run on, a Katar engine, its push
dispatcher (which runs the notify sender too) with loopback allowed, and a real receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from katar import Katar
from katar.push import Allow, Dispatcher
from tests.http.conftest import opened
from tests.push.receiver import Receiver, serving

#: Loopback opened, as a test configuration must for its receiver.
ALLOW = Allow(["127.0.0.1"])


@pytest.fixture(params=["memory", "sqlite"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    async with serving(found):
        yield found


@pytest.fixture
async def katar(make_url: Callable[[], str]) -> AsyncIterator[Katar]:
    instance = Katar(make_url(), reap_interval=0.02)
    async with opened(instance):
        yield instance


@pytest.fixture
async def dispatcher(katar: Katar) -> AsyncIterator[Dispatcher]:
    sender = Dispatcher(katar.engine, ALLOW)
    katar.engine.option_checks.append(sender.check)
    sender.start()
    try:
        yield sender
    finally:
        await sender.stop()
