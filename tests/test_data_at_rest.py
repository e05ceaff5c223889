"""Data at rest on a stolen SD card (issue 8 item 11): card numbers are never stored or
configured in clear (keyed hashes), snapshots wait in the outbox sealed and reach the platform
as plain JPEG, and the keys come from systemd's credentials directory, not the state directory.

Real parts: the daemon in-process, a real mosquitto, real SQLite files searched byte by byte
(database and WAL, as the face-store tests search for embeddings), a pty card reader.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sqlite3
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from common.errors import ConfigError
from drivers.card_reader import encode_em4100
from gateway import cli
from gateway.access.card_admin import CardAdmin
from gateway.access.cards import CardKey, CardRegister
from gateway.access.cards_cli import run as cards_hash
from gateway.access.snapshots import Snapshot
from gateway.audit import AuditLog
from gateway.clock import ClockSync
from gateway.config import Config, OutboxSection, config_from_mapping, credential_path, parse_config
from gateway.events import DeviceRef, EventFactory, Lane
from gateway.outbox import Outbox
from gateway.sealing import SEALED_CONTENT_TYPE, PayloadCipher, SealedPayloads
from gateway.store import MIGRATIONS, Database
from tests.buttons.test_buttons import GW, PREFIX, WAIT_S, call, start, wait_events
from tests.conftest import SubscriberFactory
from tests.support.broker import MosquittoBroker
from tests.support.configs import daemon_config
from tests.support.paths import REPO
from tests.test_systemd_unit import UNIT, parse_unit

KEY_NAMES = ("command.key", "faces.key", "cards.key", "snapshots.key")
# What a JPEG from OpenCV starts with: SOI, APP0 and the JFIF tag (11 bytes: random ciphertext
# never matches by chance).
JFIF_HEADER = b"\xff\xd8\xff\xe0\x00\x10JFIF"
DOOR = DeviceRef(id="door-main", type="door", location="Bldg 3")


def state_bytes(directory: Path) -> bytes:
    """Every byte of every file under the state directory (database, WAL, shm, anything)."""
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def assert_absent(data: bytes, *texts: str) -> None:
    for text in texts:
        for form in {text.lower(), text.upper()}:
            assert form.encode() not in data, f"{form!r} found at rest"


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A credentials directory as systemd makes it for LoadCredential=: the four keys, 0400."""
    directory = tmp_path / "credentials"
    directory.mkdir(mode=0o700)
    for name in KEY_NAMES:
        path = directory / name
        path.write_bytes(os.urandom(32).hex().encode() if name == "command.key" else os.urandom(32))
        path.chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    yield directory


def credential_cfg(tmp_path: Path, broker: MosquittoBroker, **access: Any) -> Config:
    """The example config's key paths (which do not exist on this machine): only the
    credentials directory can supply them."""
    return daemon_config(
        tmp_path / "state",
        broker.host,
        broker.port,
        gateway_id=GW,
        commands={"hmac_key_file": "/etc/eldergate/credentials/command.key"},
        access={
            "key_file": "/etc/eldergate/credentials/faces.key",
            "cards_key_file": "/etc/eldergate/credentials/cards.key",
            "snapshots_key_file": "/etc/eldergate/credentials/snapshots.key",
            "door": {"id": "door-main", "location": "Bldg 3"},
            **access,
        },
    )


# -- cards ------------------------------------------------------------------------------------


async def test_card_numbers_never_reach_the_disk_and_cards_still_open_the_door(
    tmp_path: Path,
    broker: MosquittoBroker,
    subscriber: SubscriberFactory,
    credentials: Path,
) -> None:
    configured, added = "0012345678", "0100a1b2c3"
    master, slave = os.openpty()
    reader = {"url": os.ttyname(slave), "format": "em4100", "repeat_suppress_s": 0.0}
    probe = credential_cfg(tmp_path, broker)
    assert probe.cards_key_path == credentials / "cards.key"
    out = io.StringIO()
    toml = tmp_path / "probe.toml"
    toml.write_text(
        f'[gateway]\nid = "gw-probe"\nstate_dir = "{tmp_path / "state"}"\n'
        '[access]\ncards_key_file = "/etc/eldergate/credentials/cards.key"\n'
    )
    args = argparse.Namespace(config=toml, card=None)
    assert cards_hash(args, stdin=io.StringIO(configured + "\n"), out=out) == 0
    line = out.getvalue().strip()  # card_hash = "hmac-sha256:…", to paste into the config
    card_hash = tomllib.loads(line)["card_hash"]
    cfg = credential_cfg(
        tmp_path,
        broker,
        card_reader=reader,
        cards=[{"card_hash": card_hash, "person": "p-1"}],
    )
    sub = subscriber(f"{PREFIX}/#", client_id="platform")
    key = credentials / "command.key"
    try:
        running = await start(cfg)
        try:
            await wait_events(sub, "gateway.started")
            result = await call(sub, "card.add", {"card": added, "person": "p-7"}, key)
            assert result["ok"], result
            os.write(master, encode_em4100(configured))
            os.write(master, encode_em4100(added))
            granted = await wait_events(sub, "access.granted", 2)
            assert [g["data"]["person"] for g in granted] == ["p-1", "p-7"]
            running_bytes = state_bytes(cfg.state_dir)  # database and WAL while running
        finally:
            assert await running.finish() == 0
    finally:
        os.close(master)
        os.close(slave)
    assert_absent(running_bytes, configured, added)
    assert_absent(state_bytes(cfg.state_dir), configured, added)
    # The keys came from the credentials directory; none was made beside the database.
    assert not [p.name for p in cfg.state_dir.rglob("*.key")]
    conn = sqlite3.connect(cfg.outbox_path)
    try:
        stored = conn.execute("SELECT card_hash, person FROM access_cards").fetchall()
    finally:
        conn.close()
    register = CardRegister(key=CardKey((credentials / "cards.key").read_bytes()))
    assert stored == [(register.hash(added), "p-7")]


async def test_clear_card_rows_of_an_earlier_release_are_hashed_and_scrubbed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.db"
    numbers = [f"00{i:08d}" for i in range(40)]  # enough rows to fill several pages
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    for script in MIGRATIONS[:6]:  # the schema of the release before card hashes
        conn.executescript(script)
    conn.execute("PRAGMA user_version = 6")
    conn.executemany(
        "INSERT INTO access_cards (card, person, removed, changed_ms) VALUES (?, ?, ?, ?)",
        [(n, f"p-{i}", int(i == 3), 1000 + i) for i, n in enumerate(numbers)],
    )
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    assert numbers[0].encode() in path.read_bytes()  # the old release's clear numbers

    key = CardKey(os.urandom(32))
    db = await Database.open(path)
    try:
        outbox = Outbox(db, OutboxSection())
        await outbox.load()
        register = CardRegister([("00deadbeef", "p-config")], key=key)
        admin = CardAdmin(db, register, AuditLog(db, outbox), EventFactory("gw", ClockSync()), DOOR)
        await admin.load()
        assert register.get(numbers[0]) == "p-0" and register.get("00deadbeef") == "p-config"
        assert register.get(numbers[3]) is None  # a withdrawn card stays withdrawn
        assert len(register) == len(numbers)  # 39 stored + 1 configured
        await admin.load()  # a second start: nothing left to convert, same register
        assert len(register) == len(numbers)
    finally:
        await db.close()
    assert_absent(state_bytes(tmp_path), *numbers)
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        hashes = [r[0] for r in conn.execute("SELECT card_hash FROM access_cards")]
    finally:
        conn.close()
    assert "access_cards_clear" not in tables
    assert sorted(hashes) == sorted(key.hash(n) for n in numbers)


def test_config_takes_card_hashes_and_warns_about_clear_cards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = "hmac-sha256:" + "ab" * 32
    base = '[gateway]\nid = "gw-1"\n[access]\n'
    cfg = parse_config(base + f'[[access.cards]]\ncard_hash = "{good}"\nperson = "p-1"\n')
    assert cfg.access is not None and cfg.access.cards[0].card_hash == good
    for entry, needle in (
        (f'card_hash = "{good}"\ncard = "0012345678"\n', "not both"),
        ("", "not both nor neither"),
        ('card_hash = "sha256:abcd"\n', "hmac-sha256: and 64 hex digits"),
    ):
        with pytest.raises(ConfigError, match=needle):
            parse_config(base + f'[[access.cards]]\n{entry}person = "p-1"\n')
    clear = tmp_path / "clear.toml"
    clear.write_text(base + '[[access.cards]]\ncard = "0012345678"\nperson = "p-1"\n')
    assert cli.main(["check-config", str(clear)]) == 0
    err = capsys.readouterr().err
    assert "1 card number(s) are written in clear" in err and "eldergate cards hash" in err
    assert "0012345678" not in err  # the warning does not repeat the number


def test_the_cli_hash_is_the_registers_hash_and_refuses_a_bad_number(tmp_path: Path) -> None:
    toml = tmp_path / "g.toml"
    toml.write_text(f'[gateway]\nid = "gw-1"\nstate_dir = "{tmp_path}"\n[access]\n')
    out = io.StringIO()
    assert cards_hash(argparse.Namespace(config=toml, card=" 0A1B2C3D4E "), out=out) == 0
    key = CardKey((tmp_path / "cards.key").read_bytes())
    assert (tmp_path / "cards.key").stat().st_mode & 0o077 == 0
    register = CardRegister([(tomllib.loads(out.getvalue())["card_hash"], "p-1")], key=key)
    assert register.get("0a1b2c3d4e") == "p-1"
    with pytest.raises(ConfigError, match="4-20 hex"):
        cards_hash(argparse.Namespace(config=toml, card="12; DROP"), out=io.StringIO())


# -- snapshots --------------------------------------------------------------------------------


def a_jpeg() -> bytes:
    image = np.random.default_rng(7).integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    jpeg = buffer.tobytes()
    assert jpeg.startswith(JFIF_HEADER)
    return jpeg


def test_a_sealed_snapshot_opens_only_with_its_key_on_its_topic() -> None:
    jpeg = a_jpeg()
    cipher = PayloadCipher(os.urandom(32))
    sealed = Snapshot("ev-1", jpeg, cipher).render(0)
    assert sealed.topic == "snapshot/ev-1" and JFIF_HEADER not in sealed.payload
    assert sealed.content_type is not None
    assert sealed.content_type.startswith(SEALED_CONTENT_TYPE)
    keys = SealedPayloads()
    assert keys.open(sealed) is None  # no key yet: never published
    keys.add(cipher)
    opened = keys.open(sealed)
    assert opened is not None and opened.payload == jpeg and opened.content_type == "image/jpeg"
    moved = type(sealed)(
        topic="snapshot/ev-2", payload=sealed.payload, content_type=sealed.content_type
    )
    assert keys.open(moved) is None  # a row copied onto another event's topic
    flipped = bytearray(sealed.payload)
    flipped[-1] ^= 1
    damaged = type(sealed)(
        topic=sealed.topic, payload=bytes(flipped), content_type=sealed.content_type
    )
    assert keys.open(damaged) is None
    plain = Snapshot("ev-3", jpeg).render(0)
    assert keys.open(plain) is plain  # other rows pass through untouched


async def test_snapshots_wait_sealed_and_reach_the_platform_as_jpeg(
    tmp_path: Path,
    broker: MosquittoBroker,
    subscriber: SubscriberFactory,
    credentials: Path,
) -> None:
    jpeg = a_jpeg()
    cfg = credential_cfg(tmp_path, broker)
    offline = config_from_mapping(
        {**_as_mapping(cfg), "uplink": {"host": "127.0.0.1", "port": _closed_port()}}
    )
    running = await start(offline)  # the uplink is down: the snapshot waits in the outbox
    try:
        access = running.gateway.access
        assert access is not None and access.snapshot_cipher is not None
        await running.gateway.outbox.append(Snapshot("ev-queued", jpeg, access.snapshot_cipher))
        stranger = PayloadCipher(os.urandom(32))  # a key this gateway does not have
        await running.gateway.outbox.append(Snapshot("ev-foreign", jpeg, stranger))
        waiting = state_bytes(cfg.state_dir)
    finally:
        assert await running.finish() == 0
    assert JFIF_HEADER not in waiting
    assert JFIF_HEADER not in state_bytes(cfg.state_dir)

    sub = subscriber(f"{PREFIX}/#", client_id="platform")
    running = await start(cfg)  # a restart, connected: the backlog is replayed
    try:
        topic = f"{PREFIX}/snapshot/ev-queued"
        msgs = await sub.wait_for_async(lambda m: any(x.topic == topic for x in m), WAIT_S)
        received = next(m for m in msgs if m.topic == topic)
        assert received.payload == jpeg and received.content_type == "image/jpeg"
        image = cv2.imdecode(np.frombuffer(received.payload, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (120, 160, 3)
        forwarder = running.gateway.forwarder
        async with asyncio.timeout(WAIT_S):
            while forwarder.stats.dead_lettered < 1:  # the row no key opens: set aside
                await asyncio.sleep(0.02)
        await running.gateway.outbox.append(Snapshot("ev-live", jpeg, access_cipher(running)))
        live = f"{PREFIX}/snapshot/ev-live"
        await sub.wait_for_async(lambda m: any(x.topic == live for x in m), WAIT_S)
    finally:
        assert await running.finish() == 0
    assert not [m for m in sub.messages if m.topic.endswith("/snapshot/ev-foreign")]
    assert JFIF_HEADER not in state_bytes(cfg.state_dir)
    conn = sqlite3.connect(cfg.outbox_path)
    try:
        dead = conn.execute("SELECT topic, lane FROM dead_letter").fetchall()
    finally:
        conn.close()
    assert dead == [("snapshot/ev-foreign", int(Lane.DEVICE_STATUS))]


def access_cipher(running: Any) -> PayloadCipher:
    access = running.gateway.access
    assert access is not None and access.snapshot_cipher is not None
    cipher: PayloadCipher = access.snapshot_cipher
    return cipher


def _as_mapping(cfg: Config) -> dict[str, Any]:
    import msgspec

    data: dict[str, Any] = msgspec.to_builtins(cfg)
    return data


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there once the socket is closed


# -- keys outside the state directory ---------------------------------------------------------


def test_key_paths_resolve_to_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configured = Path("/etc/eldergate/credentials/faces.key")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert credential_path(configured) == configured
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert credential_path(configured) == configured  # the unit passes no such credential
    (tmp_path / "faces.key").write_bytes(os.urandom(32))
    assert credential_path(configured) == tmp_path / "faces.key"
    cfg = parse_config('[gateway]\nid = "gw-1"\nstate_dir = "/var/lib/x"\n[access]\n')
    assert cfg.faces_key_path == tmp_path / "faces.key"  # the default, too
    assert cfg.cards_key_path == Path("/var/lib/x/cards.key")  # no credential: the default


def test_the_unit_passes_every_key_the_example_config_names() -> None:
    unit = parse_unit(UNIT.read_text(encoding="utf-8"))
    passed = dict(v.split(":", 1) for v in unit["Service"].get("LoadCredential", []))
    example = tomllib.loads((REPO / "config" / "gateway.toml").read_text(encoding="utf-8"))
    named = [
        example["commands"]["hmac_key_file"],
        example["access"]["key_file"],
        example["access"]["cards_key_file"],
        example["access"]["snapshots_key_file"],
    ]
    for path in named:
        name = Path(path).name
        assert passed.get(name) == path, f"LoadCredential={name}:{path} missing from the unit"
        assert not path.startswith("/var/lib/eldergate")  # never beside the database
    assert sorted(passed) == sorted(KEY_NAMES)
