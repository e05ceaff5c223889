"""The feature shape (gateway/feature.py): run_all's rules, and the daemon's composition of
features (load in the build, start after the core runs and after the feature before it,
one supervised task each, stopped last-first and closed) without naming their tasks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway import daemon
from gateway.feature import Core, Feature, TaskEnded, run_all
from tests.conftest import DaemonConfig
from tests.test_daemon import InProcess


async def test_run_all_runs_until_cancelled_and_cancels_every_task() -> None:
    cancelled: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.append(name)

    task = asyncio.create_task(run_all({"a": forever("a"), "b": forever("b")}))
    await asyncio.sleep(0)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(cancelled) == ["a", "b"]


async def test_run_all_a_task_that_returns_ends_it_naming_the_task() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    async def returns() -> None:
        return None

    with pytest.raises(ExceptionGroup) as caught:
        await run_all({"steady": forever(), "quitter": returns()})
    assert caught.group_contains(TaskEnded, match="task quitter ended")


async def test_run_all_a_task_that_raises_cancels_the_others() -> None:
    stopped = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    async def fails() -> None:
        raise OSError("the port went away")

    with pytest.raises(ExceptionGroup) as caught:
        await run_all({"steady": forever(), "broken": fails()})
    assert caught.group_contains(OSError)
    assert stopped.is_set()


class Recorder:
    """A feature that writes down what the daemon asks of it."""

    def __init__(self, name: str, calls: list[str], *, run_ends: bool = False) -> None:
        self.name = name
        self.loads = "nothing"
        self.starts = ""
        self.calls = calls
        self.run_ends = run_ends
        self.running = asyncio.Event()

    async def load(self) -> None:
        self.calls.append(f"{self.name}.load")

    async def start(self) -> None:
        self.calls.append(f"{self.name}.start")

    async def run(self) -> None:
        self.calls.append(f"{self.name}.run")
        self.running.set()
        if self.run_ends:
            raise OSError(f"{self.name}: the device went away")
        try:
            await asyncio.Event().wait()
        finally:
            self.calls.append(f"{self.name}.cancelled")

    async def close(self) -> None:
        self.calls.append(f"{self.name}.close")

    def health(self) -> dict[str, Any]:
        return {"calls": len(self.calls)}

    def healthy(self, now: float) -> tuple[bool, str]:
        return True, "ok"


def _compose(monkeypatch: pytest.MonkeyPatch, *features: Recorder) -> None:
    def build(cfg: Any, core: Core, hooks: Any) -> list[Feature]:
        assert core.commands is not None and core.outbox is not None
        return list(features)

    monkeypatch.setattr(daemon, "build_features", build)


async def test_features_load_start_in_order_and_stop_last_first(
    daemon_cfg: DaemonConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    first, second = Recorder("first", calls), Recorder("second", calls)
    _compose(monkeypatch, first, second)
    proc = InProcess(daemon_cfg())
    gateway = await proc.gateway()
    async with asyncio.timeout(10):
        await first.running.wait()
        await second.running.wait()
    assert calls[:2] == ["first.load", "second.load"]
    # Each starts once the one before it runs.
    assert calls.index("first.run") < calls.index("second.start") < calls.index("second.run")
    assert (await gateway.health.snapshot())["second"] == {"calls": 6}
    assert await proc.finish() == 0
    assert calls[-4:] == ["second.cancelled", "first.cancelled", "second.close", "first.close"]


async def test_a_feature_whose_run_fails_stops_the_daemon_with_exit_1(
    daemon_cfg: DaemonConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    steady, broken = Recorder("steady", calls), Recorder("broken", calls, run_ends=True)
    _compose(monkeypatch, steady, broken)
    proc = InProcess(daemon_cfg())
    async with asyncio.timeout(30):
        code = await proc.task  # nobody asked it to stop
    assert code == 1
    assert calls[-3:] == ["steady.cancelled", "broken.close", "steady.close"]
