"""Start-up (issue 8, item 9): the README's install flow (CLI enrolment, then the first start)
reaches READY and the platform; a stop request is honoured while start-up is blocked; every
start-up step is bounded and named; a second daemon on the same state directory exits 73 at
once, naming the pid that holds it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from common.errors import StartupTimeoutError
from gateway import daemon
from gateway.config import config_from_mapping
from gateway.daemon import DaemonHooks, StateDirLocked, lock_state_dir
from tests.support.broker import MosquittoBroker
from tests.support.gateway_process import GatewayProcess
from tests.support.paths import FACES, REPO
from tests.support.proxy import TcpProxy
from tests.support.subscriber import ReceivedMessage, Subscriber

ACCESS_TOML = '[access]\n[access.door]\nid = "door-main"\n'
EXIT_BOUND_S = 60.0  # well inside systemd's TimeoutStopSec (90 s by default)


def _cli(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
        check=False,
    )


def _photo() -> Path:
    for person in sorted(FACES.iterdir()):
        if person.is_dir():
            photos = sorted(p for p in person.iterdir() if p.suffix.lower() == ".jpg")
            if photos:
                return photos[0]
    raise AssertionError(f"no photo under {FACES}")


def _kinds(messages: list[ReceivedMessage]) -> list[str]:
    kinds = []
    for m in messages:
        if "/event/" in m.topic:
            kinds.append(str(json.loads(m.payload)["kind"]))
    return kinds


def _write_config(gw: GatewayProcess) -> None:
    gw.work_dir.mkdir(parents=True, exist_ok=True)
    gw.config_path.write_text(gw.config_text(), encoding="utf-8")


def test_readme_flow_cli_enrolment_then_first_start(
    tmp_path: Path, broker: MosquittoBroker, subscriber: Any
) -> None:
    """`eldergate faces enroll` on a fresh state dir, then the daemon's first start: READY,
    connected, and the platform receives the CLI's face.enrolled audit event. Before the fix
    the daemon hung in Gateway.build awaiting Outbox.append (never READY)."""
    gw = GatewayProcess(tmp_path / "gw", uplink_port=broker.port, extra_toml=ACCESS_TOML)
    sub: Subscriber = subscriber(gw.event_filter, client_id="platform")
    try:
        _write_config(gw)
        enrol = _cli(
            "faces", "enroll", "--config", str(gw.config_path), "--person", "p-readme",
            "--photo", str(_photo()), "--consent", "consent-readme",
        )  # fmt: skip
        assert enrol.returncode == 0, enrol.stdout + enrol.stderr
        gw.start(timeout=120)  # raises (with the log) if READY=1 never comes
        got = sub.wait_for(lambda msgs: "face.enrolled" in _kinds(msgs), timeout=60)
        enrolled = [json.loads(m.payload) for m in got if "face.enrolled" in _kinds([m])]
        assert enrolled[0]["data"]["person"] == "p-readme"
        assert "gateway.started" in _kinds(sub.messages)
        statuses = [n.fields.get("STATUS", "") for n in gw.notifications]
        assert "starting: loading access: the door's keys" in statuses
        assert "starting: starting access: face models, gallery, camera" in statuses
        assert gw.terminate() == 0
    finally:
        gw.close()


def test_sigterm_during_start_up_and_with_the_broker_unreachable_exits_cleanly(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A real SIGTERM sent as soon as the daemon logged its configuration (start-up under way:
    the face models, the keys), and again once it is READY with the broker black-holed: each
    time it exits 0 within the bound."""
    with TcpProxy(broker.host, broker.port) as proxy:
        proxy.blackhole()
        gw = GatewayProcess(tmp_path / "gw", uplink_port=proxy.port, extra_toml=ACCESS_TOML)
        try:
            _write_config(gw)
            env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
            env.pop("NOTIFY_SOCKET", None)
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "--config", str(gw.config_path)],
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                text=True,
                cwd=REPO,
                env=env,
            )
            try:
                assert proc.stderr is not None
                for _ in range(200):  # bounded: the first lines of the log
                    line = proc.stderr.readline()
                    if not line or "configuration:" in line:
                        break
                assert "configuration:" in line, line
                proc.send_signal(signal.SIGTERM)
                rest = proc.communicate(timeout=EXIT_BOUND_S)[1]
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            assert proc.returncode == 0, rest
            gw.start(timeout=120)  # READY while the broker cannot be reached
            assert gw.terminate(timeout=EXIT_BOUND_S) == 0, gw.log_tail()
        finally:
            gw.close()


async def test_stop_request_while_a_start_up_step_hangs(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A step that never finishes: the stop request (what SIGTERM sets) ends start-up with 0,
    and the state directory's lock is released."""
    cfg = config_from_mapping(
        {
            "gateway": {"id": "gw-start", "state_dir": str(tmp_path / "state")},
            "uplink": {"port": broker.port},
        }
    )
    entered = asyncio.Event()

    async def hang() -> None:
        entered.set()
        await asyncio.Event().wait()

    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(cfg, stop=stop, hooks=DaemonHooks(before_build=hang)))
    async with asyncio.timeout(30):
        await entered.wait()
    stop.set()
    async with asyncio.timeout(EXIT_BOUND_S):
        assert await task == 0
    os.close(lock_state_dir(cfg.state_dir))  # released: can be taken again


async def test_a_start_up_step_that_times_out_is_named(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon, "STEP_TIMEOUT_S", 0.2)
    cfg = config_from_mapping(
        {
            "gateway": {"id": "gw-start", "state_dir": str(tmp_path / "state")},
            "uplink": {"port": broker.port},
        }
    )

    async def hang() -> None:
        await asyncio.Event().wait()

    with pytest.raises(StartupTimeoutError, match="test hook before the build.*within"):
        async with asyncio.timeout(EXIT_BOUND_S):
            await daemon.run(cfg, stop=asyncio.Event(), hooks=DaemonHooks(before_build=hang))
    os.close(lock_state_dir(cfg.state_dir))


def test_second_instance_exits_73_naming_the_holder(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    gw = GatewayProcess(tmp_path / "gw", uplink_port=broker.port)
    try:
        gw.start()
        holder = gw.pid
        second = _cli("run", "--config", str(gw.config_path), timeout=EXIT_BOUND_S)
        assert second.returncode == 73, second.stderr
        assert f"pid {holder}" in second.stderr, second.stderr
        assert gw.running  # the first one is untouched
        assert gw.terminate() == 0
    finally:
        gw.close()


def test_lock_names_the_holder_in_process(tmp_path: Path) -> None:
    fd = lock_state_dir(tmp_path / "state")
    try:
        # flock locks belong to the open file description: a second open conflicts even here.
        with pytest.raises(StateDirLocked, match=f"pid {os.getpid()}"):
            lock_state_dir(tmp_path / "state")
    finally:
        os.close(fd)
