"""Alarm outputs: the serial relay siren on a real pseudo-terminal standing in for the USB relay
board (unplugged and replugged), building outputs from their spec, and the config checks.
Every wait is bounded; no timed assertions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from common.errors import ConfigError
from drivers.outputs import (
    LoggingOutput,
    OutputSpec,
    SerialRelayOutput,
    build_output,
)
from drivers.relay_board import SerialRelayBoard
from gateway.config import parse_config
from tests.support.pty_board import PtyBoard

ON = bytes.fromhex("A00101A2")
OFF = bytes.fromhex("A00100A1")
LIMIT_S = 5.0


@pytest.fixture
def board(tmp_path: Path) -> Iterator[PtyBoard]:
    fake = PtyBoard(tmp_path / "usb-relay")
    yield fake
    if fake.master >= 0:
        fake.unplug()


def relay(board: PtyBoard) -> SerialRelayOutput:
    output = build_output(
        OutputSpec("serial_relay", url=str(board.link), on_bytes=ON, off_bytes=OFF)
    )
    assert isinstance(output, SerialRelayOutput)
    return output


async def test_activate_writes_on_at_every_repeat_and_deactivate_writes_off(
    board: PtyBoard,
) -> None:
    output = relay(board)
    assert not output.board.is_open  # building opened nothing
    await output.activate("alarm a1 not acknowledged")
    assert await board.read(4) == ON
    assert output.active
    await output.activate("alarm a1 still open")  # a replugged board needs it again
    assert await board.read(4) == ON
    await output.deactivate()
    assert await board.read(4) == OFF
    assert not output.active
    await output.deactivate()  # idempotent: nothing more on the wire
    await output.activate("alarm a2 not acknowledged")
    await output.close()  # switches off, closes the port
    assert await board.read(8) == ON + OFF
    assert not output.board.is_open
    assert (output.activations, output.deactivations, output.failures) == (3, 2, 0)


async def test_state_is_unknown_until_switched_off_once(board: PtyBoard) -> None:
    """A crash may have left a latching relay on: `active` until off_bytes went out once."""
    output = relay(board)
    assert output.active
    await output.deactivate()  # what the alarm timers do at their first tick
    assert await board.read(4) == OFF
    assert not output.active
    await output.close()
    assert board.pending() == b""  # off already: close writes nothing more


async def test_unplugged_board_counts_failures_never_raises_and_works_when_replugged(
    board: PtyBoard,
) -> None:
    # A long retry back-off, so that the skipped retry below does not depend on timing.
    board_port = SerialRelayBoard(str(board.link))
    output = SerialRelayOutput(board_port, ON, OFF, off_retry_min_s=600, off_retry_max_s=600)
    await output.open()
    assert output.board.is_open and output.failures == 0
    board.unplug()
    await output.activate("alarm a1 not acknowledged")  # write fails: logged and counted
    assert output.failures == 1
    assert output.active  # still wanted on: the next repeat tries again
    await output.activate("alarm a1 still open")  # cannot even open now
    assert output.failures == 2
    await output.deactivate()
    assert output.failures == 3 and output.active  # may still be on: retried later
    await output.deactivate()  # within the retry back-off: no attempt
    assert output.failures == 3
    board.plug()
    await output.activate("alarm a1 still open")  # reopened on this call
    assert await board.read(4) == ON
    await output.deactivate()
    assert await board.read(4) == OFF
    assert not output.active and output.failures == 3
    await output.close()


async def test_open_reports_a_missing_board_without_raising(tmp_path: Path) -> None:
    output = SerialRelayOutput(SerialRelayBoard(str(tmp_path / "no-such-board")), ON, OFF)
    await output.open()
    assert output.failures == 1 and not output.board.is_open
    await output.activate("alarm a1 not acknowledged")
    assert output.failures == 2
    await output.close()  # a forced switch-off attempt, failing quietly
    assert output.failures == 3


def test_build_output_checks_the_spec_without_io(tmp_path: Path) -> None:
    assert isinstance(build_output(OutputSpec()), LoggingOutput)
    absent = str(tmp_path / "not-plugged-yet")
    built = build_output(OutputSpec("serial_relay", url=absent, on_bytes=ON, off_bytes=OFF))
    assert isinstance(built, SerialRelayOutput) and not built.board.is_open
    with pytest.raises(ConfigError, match="url"):
        build_output(OutputSpec("serial_relay", on_bytes=ON, off_bytes=OFF))
    with pytest.raises(ConfigError, match="two different"):
        build_output(OutputSpec("serial_relay", url=absent, on_bytes=ON))
    with pytest.raises(ConfigError, match="two different"):
        build_output(OutputSpec("serial_relay", url=absent, on_bytes=ON, off_bytes=ON))
    with pytest.raises(ConfigError, match="not supported"):
        build_output(OutputSpec("x10"))


def test_config_accepts_a_serial_relay_and_checks_its_bytes() -> None:
    head = '[gateway]\nid = "g"\n[buttons.output]\nkind = "serial_relay"\nurl = "/dev/x"\n'
    cfg = parse_config(head + 'on_bytes = "A0 01 01 A2"\noff_bytes = "A00100A1"\n')
    assert cfg.buttons is not None and cfg.buttons.output.kind == "serial_relay"
    with pytest.raises(ConfigError, match="buttons.output.off_bytes"):
        parse_config(head + 'on_bytes = "A00101A2"\n')
    with pytest.raises(ConfigError, match="buttons.output.off_bytes"):
        parse_config(head + 'on_bytes = "A00101A2"\noff_bytes = "a0 01 01 a2"\n')
    with pytest.raises(ConfigError, match="hex"):
        parse_config(head + 'on_bytes = "relay on"\noff_bytes = "A00100A1"\n')
    with pytest.raises(ConfigError, match="buttons.output.baudrate"):
        parse_config(head + 'on_bytes = "A00101A2"\noff_bytes = "A00100A1"\nbaudrate = 1234\n')
    with pytest.raises(ConfigError, match="buttons.output.url"):
        parse_config(
            '[gateway]\nid = "g"\n[buttons.output]\nkind = "serial_relay"\n'
            'on_bytes = "A00101A2"\noff_bytes = "A00100A1"\n'
        )
