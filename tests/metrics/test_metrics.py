"""Prometheus metrics: the health snapshot's figures as metric families (parsed back with
prometheus-client's own parser), hostile snapshot values dropped rather than rendered, and the
real daemon serving /metrics on loopback with a pty receiver and a real broker (only GET
/metrics; a taken port never stops it; a LAN address refused by the config)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from common.errors import ConfigError
from gateway.config import parse_config
from gateway.metrics.exposition import MAX_LABELS, Snapshot, families, registry_for
from gateway.metrics.feature import MetricsFeature
from tests.buttons.test_buttons import T1, WAIT_S, Rig, _cfg, call, wait_events
from tests.support.broker import free_port

SNAPSHOT: dict[str, Any] = {
    "uptime_s": 12.5,
    "disk_free_bytes": 1_000_000,
    "cpu_temp_c": None,
    "outbox": {
        "depth": 3,
        "rows": [1, 0, 2, 0],
        "bytes": 900,
        "oldest_age_s_by_lane": [4.5, None, 1.0, None],
        "dropped": {"2": 0, "3": 7},
        "dead_letters": 1,
        "store_ok": True,
    },
    "uplink": {"state": "disconnected", "connects": 2, "delivered": 40, "failures": {"0x97": 3}},
    "commands": {"received": 5, "refused": {"signature_required": 2, "malformed": 1}},
    "buttons": {
        "receivers": {"rx1": {"online": True, "frames": 42}},
        "devices": 2,
        "devices_silent": ["t-1"],
        "open_alarms": [{"ack_status": "pending"}, {"ack_status": "ok"}],
    },
    "access": {
        "camera": {"online": True, "fps": 9.5},
        "faces": {"worker_restarts": 1, "granted": 3, "denied": 1, "unknown": 0},
        "door": {"state": "closed", "locked_down": False},
    },
    "sms": {"paths": {"uplink": {"up": False}, "sms": {"up": True}}, "messages": {"sent": 2}},
}


def samples(snapshot: dict[str, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """name + labels -> value, parsed back from the text format."""
    registry = registry_for(collector := Snapshot())
    collector.update(snapshot)
    text = generate_latest(registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_the_health_figures_become_metrics() -> None:
    got = samples(SNAPSHOT)
    assert got[("eldergate_outbox_rows", (("lane", "0"),))] == 1
    assert got[("eldergate_outbox_rows", (("lane", "2"),))] == 2
    assert got[("eldergate_outbox_oldest_age_seconds", (("lane", "0"),))] == 4.5
    assert ("eldergate_outbox_oldest_age_seconds", (("lane", "1"),)) not in got  # empty lane
    assert got[("eldergate_outbox_dropped_total", (("lane", "3"),))] == 7
    assert got[("eldergate_outbox_dead_letters", ())] == 1
    assert got[("eldergate_store_ok", ())] == 1
    assert got[("eldergate_uplink_connected", ())] == 0
    assert got[("eldergate_uplink_connects_total", ())] == 2
    assert got[("eldergate_uplink_failures_total", (("reason_code", "0x97"),))] == 3
    assert got[("eldergate_command_refusals_total", (("code", "signature_required"),))] == 2
    assert got[("eldergate_devices_lost", ())] == 1
    assert got[("eldergate_alarms_open", ())] == 2
    assert got[("eldergate_alarms_unanswered", ())] == 1
    assert got[("eldergate_receiver_online", (("receiver", "rx1"),))] == 1
    assert got[("eldergate_camera_fps", ())] == 9.5
    assert got[("eldergate_face_worker_restarts_total", ())] == 1
    assert got[("eldergate_access_decisions_total", (("result", "granted"),))] == 3
    assert got[("eldergate_door_open", ())] == 0
    assert got[("eldergate_path_up", (("path", "uplink"),))] == 0
    assert got[("eldergate_sms_messages", (("state", "sent"),))] == 2
    assert ("eldergate_cpu_temperature_celsius", ()) not in got  # not known here


def test_a_gateway_without_features_has_only_the_core() -> None:
    got = samples({k: SNAPSHOT[k] for k in ("uptime_s", "outbox", "uplink")})
    assert not [name for name, _ in got if "camera" in name or "devices" in name]
    assert got[("eldergate_outbox_rows", (("lane", "3"),))] == 0


def test_hostile_values_are_dropped_not_rendered() -> None:
    hostile = {
        "uptime_s": float("nan"),
        "disk_free_bytes": "lots",
        "outbox": {
            "rows": [1, "x", float("inf"), None],
            "dropped": {'2"} evil{': 1, "3": [1]},
            "store_ok": "yes",
        },
        "uplink": {"state": 5, "failures": {f"0x{n:02X}": n for n in range(200)}},
        "commands": {"refused": {"a\nb": 1, "": 2, "x" * 65: 3, "ok_code": 4}},
        "buttons": {"receivers": {"rx": "online"}, "devices_silent": "t-1", "open_alarms": 7},
        "access": ["not", "a", "section"],
    }
    got = samples(hostile)
    assert got == {
        **{
            ("eldergate_uplink_failures_total", (("reason_code", f"0x{n:02X}"),)): float(n)
            for n in range(MAX_LABELS)
        },
        ("eldergate_outbox_rows", (("lane", "0"),)): 1.0,
        ("eldergate_command_refusals_total", (("code", "ok_code"),)): 4.0,
    }
    assert len(families({"uplink": {"failures": {str(n): 1 for n in range(10_000)}}})) == 1


def test_a_lan_address_is_refused_by_the_config() -> None:
    text = '[gateway]\nid = "g"\n[metrics]\nlisten = "192.168.1.10"\n'
    with pytest.raises(ConfigError, match=r"metrics.listen: .*loopback"):
        parse_config(text, source="gw.toml")
    assert parse_config('[gateway]\nid = "g"\n[metrics]\nlisten = "::1"\n').metrics is not None


async def test_the_daemon_serves_its_metrics_on_loopback(rig: Rig) -> None:
    port = free_port()
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    cfg = with_metrics(_cfg(rig.tmp_path, rig.broker, rig.receiver.path), port)
    gw = await rig.start(cfg)
    metrics = cast(MetricsFeature, gw.gateway.feature("metrics"))
    try:
        # The port is taken: the daemon goes on (a press is answered) and keeps trying.
        await until(lambda: metrics.site.error is not None)
        await rig.receiver.terminal(T1, repeat_s=0.5).press(timeout_s=WAIT_S)
        await wait_events(rig.sub, "alarm.raised")
        blocker.close()
        await until(lambda: metrics.site.listening)
        unsigned = await call(rig.sub, "alarm.clear", {"alarm": "x", "by": "y"})
        assert not unsigned["ok"]
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as client:
            async with client.get(url + "/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                text = await response.text()
            async with client.post(url + "/metrics", data=b"x" * 2048) as response:
                assert response.status in (405, 413)
            async with client.get(url + "/") as response:
                assert response.status == 404
        got = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert got[("eldergate_uplink_connected", ())] == 1
        assert got[("eldergate_receiver_online", (("receiver", "rx1"),))] == 1
        assert got[("eldergate_alarms_unanswered", ())] == 1
        assert got[("eldergate_command_refusals_total", (("code", "signature_required"),))] >= 1
        assert ("eldergate_outbox_rows", (("lane", "0"),)) in got
        health = await gw.gateway.health.snapshot()
        assert health["metrics"]["scrapes"] == 1 and health["metrics"]["listening"] is True
    finally:
        blocker.close()
        assert await gw.finish() == 0


def with_metrics(cfg: Any, port: int) -> Any:
    import msgspec

    from gateway.metrics.config import MetricsSection

    return msgspec.structs.replace(cfg, metrics=MetricsSection(port=port))


async def until(predicate: Any) -> None:
    async with asyncio.timeout(WAIT_S):
        while not predicate():
            await asyncio.sleep(0.05)
