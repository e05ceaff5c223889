"""Face access control as one feature of the daemon: everything `[access]` configures, wired.

    camera -> AccessService (gate, worker processes, decision) -> DoorController -> lock relay
    card reader -> CardAccess ---------------------------------^       ^ contact, exit request
    decisions -> AuditLog (append-only, then the outbox)   door.* events -> outbox
    face.enroll / face.remove -> FaceEnrolment -> FaceStore (AES-GCM templates) -> AuditLog

The shape of every feature (gateway/feature.py): `build()` makes the objects (no device is
opened), `load()` reads the keys, `start()` loads the models and the gallery and starts the
camera, `run()` runs the door, the card reader, the frame loop and the store watch until
cancelled, `close()` releases the camera, the relay and the inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from common.errors import ConfigError, StorageError
from drivers.door import DoorActuator, DoorSpec, build_door
from drivers.door_contact import ContactInput, GpioContact, SimulatedContact
from drivers.outputs import Output, build_output, output_spec
from drivers.serial_port import SerialSettings
from gateway import event_payloads as payloads
from gateway.access.card_admin import CardAdmin
from gateway.access.cards import CardAccess, CardKey, CardRegister
from gateway.access.config import AccessSection
from gateway.access.desk import DoorDesk
from gateway.access.door import DoorController
from gateway.access.second_factor import FaceChecks
from gateway.access.service import AccessService
from gateway.config_base import InputSection
from gateway.events import DeviceRef, Event, Kind
from gateway.faces.crypto import TemplateCipher
from gateway.faces.enrolment import FaceEnrolment, max_templates
from gateway.faces.store import FaceStore, RefreshLimits
from gateway.feature import Core, run_all
from gateway.sealing import PayloadCipher
from gateway.vision.models_check import ensure_face_models
from gateway.vision.workers import FaceWorkerPool

if TYPE_CHECKING:
    from drivers.camera import Camera

_LOGGER = logging.getLogger(__name__)

_STORE_POLL_S = 2.0  # how soon the CLI's enrolments reach the door and the platform
_SNAPSHOT_EXPIRY_EVERY_S = 600.0
_AUDIT_BATCH = 1000  # forward_pending's default limit
CAMERA_ID = "door-camera"
DOOR_STALL_S = 10.0  # the door ticks every 0.1 s
FRAMES_STALL_S = 10.0  # the frame loop wakes at least every second


def _input(section: InputSection, what: str) -> ContactInput | None:
    if section.kind == "none":
        return None
    if section.kind == "simulated":
        return SimulatedContact()
    try:
        return GpioContact.create(section.pin, section.pull_up, section.active_is_open)
    except ConfigError as exc:
        raise ConfigError(f"access.door.{what}: {exc}") from exc


def _hex(text: str) -> bytes:
    return bytes.fromhex(text)


class AccessFeature:
    name = "access"
    loads = "the door's keys"
    starts = "face models, gallery, camera"

    def __init__(self, section: AccessSection, core: Core) -> None:
        self.cfg = core.cfg
        self.section = section
        self._core = core
        db, outbox, events = core.db, core.outbox, core.events
        self._outbox = outbox
        self._events = events
        a = section
        self.door_ref = DeviceRef(id=a.door.id, type="door", location=a.door.location or None)
        rec = a.recognition
        self.workers = FaceWorkerPool(rec, rec.workers)
        self.audit = core.audit
        self._db = db
        self.store: FaceStore | None = None  # needs the key: made in start()
        self.enrolment: FaceEnrolment | None = None
        door = a.door
        self.actuator: DoorActuator = build_door(
            DoorSpec(
                kind=door.kind,
                pin=door.pin,
                active_high=door.active_high,
                url=door.url,
                baudrate=door.baudrate,
                **(
                    {"on_bytes": _hex(door.on_bytes), "off_bytes": _hex(door.off_bytes)}
                    if door.kind == "serial_relay"
                    else {}
                ),
            )
        )
        pre = door.prealert
        self.prealert: Output = build_output(output_spec(pre))
        self.contact = _input(door.contact, "contact")
        self.exit_request = _input(door.exit_request, "exit_request")
        self.door = DoorController(
            events,
            self._record_door_event,
            self.actuator,
            self.prealert,
            self.door_ref,
            door,
            contact=self.contact,
            exit_request=self.exit_request,
        )
        self.desk = DoorDesk(
            db,
            core.audit,
            events,
            self.door,
            self.door_ref,
            retention_s=a.snapshots.retention_s,
            cipher=lambda: self.snapshot_cipher,
        )
        self.card_register = CardRegister()  # filled in start(), once the card key is read
        self.snapshot_cipher: PayloadCipher | None = None  # read in load()
        self._template_cipher: TemplateCipher | None = None
        self.card_admin = CardAdmin(db, self.card_register, self.audit, events, self.door_ref)
        self.face_checks = (
            FaceChecks(door.face_after_card_s) if door.credentials == "card_and_face" else None
        )
        self.cards: CardAccess | None = None
        if a.card_reader.url:
            self.cards = CardAccess(
                SerialSettings(url=a.card_reader.url, baudrate=a.card_reader.baudrate),
                a.card_reader.format,
                self.card_register,
                self.door,
                self._recorder("card-reader"),
                events,
                self.door_ref,
                a.card_reader.repeat_suppress_s,
                face_checks=self.face_checks,
            )
        self.camera: Camera | None = None
        self.service: AccessService | None = None
        self._camera_events: set[asyncio.Task[None]] = set()
        self._store_version = -1
        self._store_changed = asyncio.Event()

    # -- recording ---------------------------------------------------------------------------

    async def _record_door_event(self, event: Event) -> None:
        """door.* events go to the outbox; access decisions the door controller records (a
        remote `door.open`, a card grant retried after a storage failure) to the audit log."""
        if event.kind == Kind.ACCESS_GRANTED:
            await self._recorder("door")(event)
        else:
            await self._outbox.append(event)

    def _recorder(self, actor: str) -> Any:
        async def record(event: Event) -> None:
            data = event.data
            subject = str(data.get("person") or "unknown")
            await self.audit.record(event, action=event.kind, subject=subject, actor=actor)
            self.desk.decided(event, actor)

        return record

    # -- start-up ----------------------------------------------------------------------------

    async def load(self) -> None:
        """The three keys (milliseconds): in the daemon's build, so the forwarder can open
        the snapshots queued by an earlier run from its first publish. Raises ConfigError for
        a bad key file."""
        a = self.section
        self._template_cipher = await asyncio.to_thread(
            TemplateCipher.load_or_create, self.cfg.faces_key_path
        )
        card_key = await asyncio.to_thread(CardKey.load_or_create, self.cfg.cards_key_path)
        self.card_register.reset(card_key, ((c.card_hash or c.card, c.person) for c in a.cards))
        self.snapshot_cipher = await asyncio.to_thread(
            PayloadCipher.load_or_create, self.cfg.snapshots_key_path
        )
        self._core.sealed.add(self.snapshot_cipher)

    async def start(self) -> None:
        """Store, enrolment commands, models and gallery; then the camera (seconds: the
        daemon runs it after the buttons answer). `load()` first. Raises ConfigError for
        a missing face stack (the daemon exits non-zero)."""
        a = self.section
        commands = self._core.commands
        cipher = self._template_cipher
        if cipher is None:
            raise RuntimeError("AccessFeature.load() must run before start()")
        # Enrolment needs the models even without a camera: a broken install fails here, loudly.
        await asyncio.to_thread(ensure_face_models)
        self.store = FaceStore(self._db, cipher, self.audit, max_templates=max_templates(self.cfg))
        ref = a.template_refresh
        self.enrolment = FaceEnrolment(
            self.store,
            self._events,
            self.door_ref,
            a,  # its enrol_* keys (EnrolmentParams)
            self.workers,
            RefreshLimits(ref.max_distance, ref.min_interval_s, ref.max_refreshed)
            if ref.enabled
            else None,
        )
        self.enrolment.register_commands(commands)
        await self.desk.load()  # a lockdown of the last run holds before any credential is read
        self.door.register_commands(commands)
        await self.card_admin.load()
        self.card_admin.register_commands(commands)
        # The audit rows the CLI wrote while the daemon was away are forwarded by
        # `_watch_store` once the daemon runs: appending here would wait for the outbox
        # writer, which starts only after the build (issue 8, item 9).
        self._store_version = await self.store.version()
        self.store.add_listener(self._store_changed.set)
        if not a.camera.source:
            _LOGGER.info("access: no camera configured; cards and exit requests only")
            return
        from drivers.camera import Camera  # opencv: only with a camera
        from drivers.motion import MotionGate

        self.camera = Camera(a.camera, self._camera_state, name=CAMERA_ID)
        gate: Any = MotionGate(a.motion) if a.motion.enabled else _OpenGate()
        self.service = AccessService(
            a.decision,
            a.snapshots,
            cipher=self.snapshot_cipher,
            camera_name=CAMERA_ID,
            camera=self.camera,
            gate=gate,
            workers=self.workers,
            faces=self.store.for_door(self.door_ref.id),  # a door searches only its people
            door=self.door,
            record=self._recorder(CAMERA_ID),
            outbox=self._outbox,
            events=self._events,
            door_ref=self.door_ref,
            face_checks=self.face_checks,
            refresh=self.enrolment.refresh if ref.enabled else None,
            keep_snapshot=self.desk.keep,
        )
        await self.service.load()
        self.camera.start(asyncio.get_running_loop())

    def _camera_state(self, online: bool, reason: str) -> None:
        """Camera driver callback (on the loop): report the change as an event."""
        kind = Kind.CAMERA_ONLINE if online else Kind.CAMERA_OFFLINE
        log = _LOGGER.info if online else _LOGGER.error
        log("door camera %s: %s", "online" if online else "offline", reason)
        ref = DeviceRef(id=CAMERA_ID, type="camera", location=self.door_ref.location)
        event = self._events.make(
            kind, payloads.CameraState(reason=reason, door=self.door_ref.id), device=ref
        )
        task = asyncio.get_running_loop().create_task(self._append_quietly(event))
        self._camera_events.add(task)
        task.add_done_callback(self._camera_events.discard)

    async def _append_quietly(self, event: Event) -> None:
        try:
            await self._outbox.append(event)
        except StorageError as exc:
            _LOGGER.error("cannot record %s: %s", event.kind, exc)

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        await run_all(self._tasks())

    def _tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        found: dict[str, Coroutine[Any, Any, None]] = {
            "door": self.door.run(),
            "face-store-watch": self._watch_store(),
        }
        if self.cards is not None:
            found["card-reader"] = self.cards.run()
        if self.service is not None:
            found["face-access"] = self.service.run()
            found["snapshot-retention"] = self._expire_snapshots()
        return found

    async def _watch_store(self) -> None:
        """First forward the audit rows written while the daemon was away (the CLI's
        enrolments before the first start). Then, whenever the store changed: at once for a
        change made in this process (its listener), within `_STORE_POLL_S` for one the CLI
        made (it never touches the outbox itself). Reload the gallery and forward the audit
        rows not yet forwarded."""
        assert self.store is not None
        try:
            forwarded = batch = await self.audit.forward_pending()
            while batch >= _AUDIT_BATCH:
                batch = await self.audit.forward_pending(_AUDIT_BATCH)
                forwarded += batch
        except StorageError as exc:
            _LOGGER.error("cannot forward the audit records written while away: %s", exc)
        else:
            if forwarded:
                _LOGGER.info(
                    "forwarded %d audit records written while the daemon was away", forwarded
                )
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_STORE_POLL_S):
                    await self._store_changed.wait()
            self._store_changed.clear()
            try:
                version = await self.store.version()
                if version != self._store_version:
                    self._store_version = version
                    if self.service is not None:
                        self.service.gallery_changed()
                    await self.audit.forward_pending()
            except StorageError as exc:
                _LOGGER.error("cannot follow the face store: %s", exc)

    async def _expire_snapshots(self) -> None:
        assert self.service is not None
        while True:
            with contextlib.suppress(StorageError):
                await self.service.expire_snapshots()
            with contextlib.suppress(StorageError):
                await self.desk.expire()
            await asyncio.sleep(_SNAPSHOT_EXPIRY_EVERY_S)

    async def close(self) -> None:
        if self.camera is not None:
            await self.camera.stop()
        with contextlib.suppress(Exception):
            await self.door.close()
        with contextlib.suppress(Exception):
            await self.prealert.close()
        for task in list(self._camera_events):
            with contextlib.suppress(Exception):
                await task
        await asyncio.to_thread(self.workers.shutdown, True, cancel_futures=True)

    # -- health and the watchdog -------------------------------------------------------------

    def healthy(self, now: float) -> tuple[bool, str]:
        if now - self.door.last_progress > DOOR_STALL_S:
            return (
                False,
                f"door {self.door_ref.id} stalled for {now - self.door.last_progress:.0f} s",
            )
        if self.service is not None and now - self.service.last_progress > FRAMES_STALL_S:
            stalled = now - self.service.last_progress
            return False, f"face access frame loop stalled for {stalled:.0f} s"
        return True, "ok"

    def health(self) -> dict[str, Any]:
        report: dict[str, Any] = {"door": {**self.door.health(), **self.desk.health()}}
        if self.camera is not None:
            stats = self.camera.stats()
            report["camera"] = {
                "online": stats.online,
                "fps": round(stats.fps, 1),
                "frames_read": stats.frames_read,
                "frames_dropped": stats.frames_dropped,
                "reopens": stats.reopens,
            }
        if self.service is not None:
            report["faces"] = {**self.service.health(), "worker_restarts": self.workers.restarts}
            if self.enrolment is not None and self.enrolment.refresh_limits is not None:
                report["faces"]["template_refresh"] = dict(self.enrolment.refreshes)
        if self.cards is not None:
            report["card_reader"] = self.cards.health()
        return report


def build(section: AccessSection, core: Core) -> AccessFeature:
    """The feature `[access]` describes (imports the face stack: only when configured)."""
    return AccessFeature(section, core)


class _OpenGate:
    """`[access.motion] enabled = false`: every frame is analysed."""

    def update(self, image: Any, now: float) -> bool:
        return True
