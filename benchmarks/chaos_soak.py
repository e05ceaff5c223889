"""Crash-safety soak: the real daemon under SIGKILL, broker restarts/SIGKILL and link faults.

    .venv/bin/python benchmarks/chaos_soak.py [--scenarios all] [--faults N] [--duration S]
                                              [--rate R] [--seed SEED] [--json FILE] [--pace F]

The scenarios of tests/test_crash_safety.py (shared code in tests/support/gateway_process.py),
each with a fresh mosquitto (persistence on, autosave every 1 s), a fresh gateway state dir and a
persistent-session subscriber (the platform), all on 127.0.0.1:

* ``gateway-kill``: SIGKILL the daemon at random (seeded) moments, restart it at once;
* ``broker-restart``: stop (SIGTERM) the broker, keep it down a while, start it;
* ``broker-kill``: SIGKILL the broker (and restart it) while the subscriber is connected;
* ``link``: cut (RST) or black-hole (then heal) the TCP link between daemon and broker.

Four devices stream events (lanes 0, 1, 2, 3), ``--rate`` events/s each, through the ingest
socket; only acknowledged (committed) events are counted. A scenario ends after ``--faults``
faults or ``--duration`` seconds, whichever is first; then every acknowledged event must arrive.
``--pace`` scales the pauses between faults, the broker's down time and the black-hole time
(default 1; smaller: a quicker run with shorter outages).
Printed: a summary table (events acked, delivered, missing (per lane), duplicates, first-arrival
order errors, faults, max recovery time from the end of a fault to the first delivery of an
event acked after it, max time from spawn to READY=1). Exit status 1 if anything acked was
never delivered (lanes 1-3 after a broker SIGKILL excepted: see the test's docstring) or a
device's first arrivals went out of order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.broker import MosquittoBroker  # noqa: E402
from tests.support.chaos import (  # noqa: E402
    ChaosResult,
    FaultInjector,
    broker_bounce,
    format_table,
    gateway_kill,
    link_fault,
    run_chaos,
)
from tests.support.gateway_process import GatewayProcess  # noqa: E402
from tests.support.proxy import TcpProxy  # noqa: E402
from tests.support.subscriber import Subscriber  # noqa: E402

SCENARIOS = ("gateway-kill", "broker-restart", "broker-kill", "link")
GATEWAY_ID = "soak-gw"

# scenario -> (pause between faults in seconds, rough seconds one fault takes)
_PACING: dict[str, tuple[tuple[float, float], float]] = {
    "gateway-kill": ((0.2, 1.0), 0.2),
    "broker-restart": ((0.5, 2.0), 1.5),
    "broker-kill": ((0.3, 1.5), 2.0),
    "link": ((0.3, 1.5), 1.5),
}


def _paced(span: tuple[float, float], pace: float) -> tuple[float, float]:
    return (span[0] * pace, span[1] * pace)


async def run_scenario(name: str, args: argparse.Namespace, work: Path) -> ChaosResult:
    broker = MosquittoBroker(work / "broker")
    proxy: TcpProxy | None = None
    gateway: GatewayProcess | None = None
    platform: Subscriber | None = None
    try:
        await asyncio.to_thread(broker.start)
        port = broker.port
        if name == "link":
            proxy = TcpProxy(broker.host, broker.port).start()
            port = proxy.port
        platform = Subscriber(
            broker.host, broker.port, f"eldergate/{GATEWAY_ID}/event/#", client_id="platform"
        )
        await asyncio.to_thread(platform.start)
        await asyncio.to_thread(broker.wait_for_save, 10)
        gateway = GatewayProcess(work / "gateway", uplink_port=port, gateway_id=GATEWAY_ID)
        await asyncio.to_thread(gateway.start)
        inject: FaultInjector
        pace = args.pace
        if name == "gateway-kill":
            inject = gateway_kill(gateway)
        elif name == "broker-restart":
            inject = broker_bounce(broker, platform, hard=False, down_s=_paced((0.2, 1.5), pace))
        elif name == "broker-kill":
            inject = broker_bounce(broker, platform, hard=True, down_s=_paced((0.0, 0.3), pace))
        else:
            assert proxy is not None
            inject = link_fault(proxy, blackhole_share=0.5, blackhole_s=_paced((0.5, 4.0), pace))
        between = _paced(_PACING[name][0], pace)
        return await run_chaos(
            name,
            gateway,
            platform,
            inject,
            faults=args.faults,
            seed=args.seed,
            rate=args.rate,
            between_s=between,
            time_limit_s=args.duration,
            drain_timeout_s=args.drain_timeout,
        )
    except BaseException:
        if gateway is not None:  # what the daemon said last is the first thing to read
            _print_tail(gateway.log_path)
        raise
    finally:
        cleanups: list[Callable[[], object]] = []
        if gateway is not None:
            cleanups.append(gateway.close)
        if platform is not None:
            cleanups.append(platform.close)
        if proxy is not None:
            cleanups.append(proxy.close)
        cleanups.append(broker.stop)
        for cleanup in cleanups:
            try:
                await asyncio.to_thread(cleanup)
            except Exception as exc:  # keep cleaning up
                print(f"cleanup {cleanup!r} failed: {exc!r}", file=sys.stderr)


def _print_tail(path: Path, lines: int = 60) -> None:
    try:
        tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError as exc:
        print(f"no daemon log at {path}: {exc}", file=sys.stderr)
        return
    print(f"--- the last {len(tail)} lines of {path} ---", file=sys.stderr)
    for line in tail:
        print(line, file=sys.stderr)


def failed(result: ChaosResult) -> bool:
    lanes = result.missing_by_lane
    lost = lanes[0] if result.scenario == "broker-kill" else sum(lanes.values())
    return bool(lost or result.order_violations or result.gateway_exits)


async def main_async(args: argparse.Namespace) -> int:
    names = SCENARIOS if args.scenarios == ["all"] else tuple(args.scenarios)
    results: list[ChaosResult] = []
    with tempfile.TemporaryDirectory(prefix="chaos-soak-") as tmp:
        for name in names:
            started = time.monotonic()
            print(f"running {name}: up to {args.faults} faults / {args.duration:.0f} s ...")
            result = await run_scenario(name, args, Path(tmp) / name)
            results.append(result)
            print(f"  {result.summary()} ({time.monotonic() - started:.0f} s)")
            if result.missing:
                print(f"  missing (first 10): {[(a.kind, a.seq) for a in result.missing[:10]]}")
            if result.order_violations:
                print(f"  order errors (first 10): {result.order_violations[:10]}")
    print()
    print(f"seed {args.seed}, {args.rate:g} events/s per device, 4 devices (lanes 0-3)")
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(
            json.dumps({r.scenario: r.properties() for r in results}, indent=2) + "\n"
        )
    return 1 if any(failed(r) for r in results) else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        default=["all"],
        choices=[*SCENARIOS, "all"],
        help="which scenarios to run (default: all)",
    )
    parser.add_argument("--faults", type=int, default=100, help="faults per scenario")
    parser.add_argument(
        "--duration", type=float, default=300.0, help="seconds per scenario at most"
    )
    parser.add_argument("--rate", type=float, default=40.0, help="events/s per device")
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for every acked event after the last fault",
    )
    parser.add_argument("--json", default="", help="also write the figures to this file")
    parser.add_argument(
        "--pace",
        type=float,
        default=1.0,
        help="scale of the pauses between faults and of the outages (default 1)",
    )
    args = parser.parse_args()
    # The test subscriber's paho logs every broker restart or cut at ERROR; that is the point.
    logging.getLogger("tests.support.subscriber.paho").setLevel(logging.CRITICAL)
    if args.faults < 1 or args.duration <= 0 or args.rate <= 0 or args.pace <= 0:
        parser.error("--faults, --duration, --rate and --pace must be positive")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
