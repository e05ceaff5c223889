"""Shared fixtures. Sections: real broker, daemon configs, network faults, MQTT clients, serial
devices (add yours below).

Everything here runs real processes and sockets on loopback only, and cleans up at teardown
even when the test fails. When a test fails, the log tail of every broker it used is attached to
the failure report ("mosquitto ..." sections).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.config import Config
from tests.support.broker import MosquittoBroker
from tests.support.configs import daemon_config
from tests.support.proxy import TcpProxy
from tests.support.pty_board import ReaderPty
from tests.support.subscriber import Subscriber

_BROKERS = pytest.StashKey[list[MosquittoBroker]]()
_T = TypeVar("_T")


# The face pipeline's tests and the benchmarks' smoke run keep both cores busy. scripts/test.sh
# runs two workers (pytest-xdist, --dist loadgroup): these share one worker, so they never run
# at the same time as each other, only beside the tests that mostly wait on sockets.
_CPU_HEAVY = frozenset(
    {
        "test_access_e2e",
        "test_access_service",
        "test_benchmark_refresh",
        "test_benchmarks_tiny",
        "test_browser",
        "test_camera",
        "test_console_e2e",
        "test_enrolment",
        "test_enrolment_quality",
        "test_face_accuracy",
        "test_face_doors",
        "test_faces_store",
        "test_image_bombs",
        "test_liveness",
        "test_motion",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    untimed = []
    for item in items:
        if item.path.stem in _CPU_HEAVY:
            item.add_marker(pytest.mark.xdist_group("cpu-heavy"))
        # A long run under the suite's 120 s time-out could never pass: `-m slow` would fail.
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            untimed.append(item.nodeid)
    if untimed:
        raise pytest.UsageError(f"slow tests need their own @pytest.mark.timeout: {untimed}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for broker in item.stash.get(_BROKERS, []):
            report.sections.append((f"mosquitto {broker.url} log", broker.log_tail()))
    return report


def _close_all(made: list[_T], close: Callable[[_T], object]) -> None:
    """Teardown: ``close`` each of ``made``, the last made first; one failing does not keep the
    others open (it is printed)."""
    for thing in reversed(made):
        try:
            close(thing)
        except Exception as exc:  # keep closing the others
            print(f"closing {thing!r} failed: {exc!r}")


# -- real broker -------------------------------------------------------------------------------

BrokerFactory = Callable[..., MosquittoBroker]


@pytest.fixture
def broker_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerFactory]:
    """Start extra brokers: ``broker_factory(name="tls", certfile=..., ...)``.

    Keyword arguments go to :class:`MosquittoBroker`; each broker gets ``tmp_path/name``.
    All are stopped at teardown.
    """
    brokers = request.node.stash.setdefault(_BROKERS, [])
    started: list[MosquittoBroker] = []

    def make(name: str = "broker", *, start: bool = True, **kwargs: Any) -> MosquittoBroker:
        broker = MosquittoBroker(tmp_path / name, **kwargs)
        brokers.append(broker)
        started.append(broker)
        return broker.start() if start else broker

    yield make
    _close_all(started, MosquittoBroker.stop)


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> MosquittoBroker:
    """A started mosquitto on a loopback port, persistence on, in ``tmp_path/broker``."""
    return broker_factory("broker")


# -- daemon configs ----------------------------------------------------------------------------

DaemonConfig = Callable[..., Config]


@pytest.fixture
def daemon_cfg(tmp_path: Path, broker: MosquittoBroker) -> DaemonConfig:
    """`daemon_cfg(gateway_id=..., section={...}, ...)`: an in-process daemon's config on
    `broker`, state in tmp_path/state, the sections merged over the shared base
    (tests/support/configs.py)."""

    def make(*, gateway_id: str = "gw-test", **sections: Any) -> Config:
        return daemon_config(
            tmp_path / "state", broker.host, broker.port, gateway_id=gateway_id, **sections
        )

    return make


# -- network faults ----------------------------------------------------------------------------


@pytest.fixture
def proxy(broker: MosquittoBroker) -> Iterator[TcpProxy]:
    """A :class:`TcpProxy` in front of ``broker``: connect clients to ``proxy.port``."""
    with TcpProxy(broker.host, broker.port) as p:
        yield p


# -- MQTT clients ------------------------------------------------------------------------------

SubscriberFactory = Callable[..., Subscriber]


@pytest.fixture
def subscriber(broker: MosquittoBroker) -> Iterator[SubscriberFactory]:
    """Make started subscribers: ``subscriber("eldergate/#", client_id="platform")``.

    They connect straight to ``broker`` unless ``host``/``port`` are given (e.g.
    ``port=proxy.port``); other keyword arguments go to :class:`Subscriber`. All are closed at
    teardown (their broker sessions are kept).
    """
    made: list[Subscriber] = []

    def make(
        topic_filter: str = "#",
        *,
        host: str | None = None,
        port: int | None = None,
        start: bool = True,
        **kwargs: Any,
    ) -> Subscriber:
        sub = Subscriber(host or broker.host, port or broker.port, topic_filter, **kwargs)
        made.append(sub)
        return sub.start() if start else sub

    yield make
    _close_all(made, Subscriber.close)


# -- serial devices ----------------------------------------------------------------------------


@pytest.fixture
def reader_pty() -> Iterator[ReaderPty]:
    """A card reader on a real pty: the gateway opens ``reader_pty.path``."""
    pty = ReaderPty()
    yield pty
    pty.unplug()


# -- the shared face photos ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def encoded() -> Any:
    """Encodings of every shared photo (../shared/data/faces, read in place) with the daemon's
    settings, computed once per test session (~15 s) by benchmarks/face_accuracy.py."""
    from tests.support.benchmarks import load_benchmark

    fa = load_benchmark("face_accuracy")
    root = fa.faces_dir()
    if not root.is_dir():
        pytest.skip(f"face photos not found at {root}")
    photos = fa.list_photos(root)
    assert len(photos) >= 20, f"only {len(photos)} photos in {root}"
    return fa.encode_photos(photos, fa.EncodeConfig(upsample=0, landmarks="small", jitters=1))
