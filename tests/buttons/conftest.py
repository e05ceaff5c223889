"""What the button tests share: a failing test still closes what it booted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import pytest


class Closable(Protocol):
    async def close(self) -> None: ...


OPEN: list[Closable] = []
"""What a test booted and has not closed yet (closed at its teardown)."""


@pytest.fixture(autouse=True)
async def _close_left_open() -> AsyncIterator[None]:
    """A failing test still closes its databases (no unclosed-connection warnings)."""
    yield
    while OPEN:
        await OPEN.pop().close()
