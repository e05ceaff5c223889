"""`eldergate faces enroll|doors|list|remove|audit`: manage the face gallery on the gateway itself.

Works while the daemon runs (SQLite WAL; writes wait for the daemon's, briefly). The CLI
writes templates and audit rows but never appends to the outbox (the daemon keeps the outbox
counters in memory): the daemon notices the change of `face_state.version`, reloads its
gallery and forwards the pending audit records. Refusals print the reason and exit 65.
Nothing printed here is an embedding. The photo is decoded and encoded in a face worker
process with the daemon's decoder and memory limits (`gateway.vision.workers`), never in the
CLI's own process: a decompression bomb is refused as `too_large`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from common.cli_help import cli_actor
from gateway.audit import AuditLog
from gateway.clock import ClockSync
from gateway.config import Config
from gateway.events import EventFactory
from gateway.faces.crypto import TemplateCipher
from gateway.faces.enrolment import (
    EnrolmentRefused,
    FaceEnrolment,
    enrolment_params,
    max_templates,
)
from gateway.faces.store import FaceStore
from gateway.store import Database
from gateway.vision.engine import EngineSettings
from gateway.vision.models_check import FaceStackError, ensure_face_models
from gateway.vision.workers import FaceWorkerPool

EX_DATAERR = 65  # sysexits.h: the input data was incorrect (a refused enrolment)
EX_NOINPUT = 66  # sysexits.h: the photo file cannot be read
EX_UNAVAILABLE = 69  # sysexits.h: the face-recognition stack is not installed


def run(args: argparse.Namespace, cfg: Config, key_file: Path, out: TextIO | None = None) -> int:
    """Run one `faces` sub-command; ConfigError and StorageError propagate to the caller."""
    return asyncio.run(_run(args, cfg, key_file, out or sys.stdout))


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


async def _run(args: argparse.Namespace, cfg: Config, key_file: Path, out: TextIO) -> int:
    command = args.faces_command
    photos: list[bytes] = []
    if command == "enroll":
        for path in args.photo:
            try:
                photos.append(path.read_bytes())
            except OSError as exc:
                print(f"eldergate: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
                return EX_NOINPUT
    db = await Database.open(
        cfg.outbox_path,
        cfg.outbox,
    )
    try:
        cipher = TemplateCipher.load_or_create(key_file)
        audit = AuditLog(db, outbox=None)  # the daemon forwards what the CLI records
        store = FaceStore(db, cipher, audit, max_templates=max_templates(cfg))
        events = EventFactory(cfg.gateway.id, ClockSync())
        if command == "enroll":
            try:
                await asyncio.to_thread(ensure_face_models)
            except FaceStackError as exc:
                print(f"eldergate: {exc}", file=sys.stderr)
                return EX_UNAVAILABLE
            workers = FaceWorkerPool(EngineSettings(), workers=1)  # started by the first photo
            try:
                enrolment = FaceEnrolment(store, events, None, enrolment_params(cfg), workers)
                return await _enroll(enrolment, args, photos, out)
            finally:
                await asyncio.to_thread(workers.shutdown)
        enrolment = FaceEnrolment(store, events, None, enrolment_params(cfg), None)
        if command == "remove":
            return await _remove(enrolment, args, out)
        if command == "doors":
            return await _doors(enrolment, args, out)
        if command == "list":
            return await _list(store, out)
        if command == "audit":
            return await _audit(audit, args.n, out)
        raise ValueError(f"unknown faces command {command!r}")
    finally:
        await db.close()


async def _enroll(
    enrolment: FaceEnrolment, args: argparse.Namespace, photos: list[bytes], out: TextIO
) -> int:
    try:
        result = await enrolment.enroll(
            args.person, photos, args.consent, actor=cli_actor(), source="cli", doors=args.door
        )
    except EnrolmentRefused as exc:
        print(f"eldergate: enrolment refused: {exc}", file=sys.stderr)
        return EX_DATAERR
    except FaceStackError as exc:
        print(f"eldergate: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    print(
        f"enrolled {result['person']}: {result['templates_added']} template(s) added, "
        f"{result['templates_total']} in total; the photos were not kept "
        f"(audit event {result['event_id']})",
        file=out,
    )
    return 0


async def _doors(enrolment: FaceEnrolment, args: argparse.Namespace, out: TextIO) -> int:
    try:
        result = await enrolment.set_doors(args.person, args.door, cli_actor())
    except EnrolmentRefused as exc:
        print(f"eldergate: refused: {exc}", file=sys.stderr)
        return EX_DATAERR
    doors = result["doors"]
    shown = "every door" if doors == "all" else ", ".join(doors)
    print(f"{result['person']} may pass {shown} (audit event {result['event_id']})", file=out)
    return 0


async def _remove(enrolment: FaceEnrolment, args: argparse.Namespace, out: TextIO) -> int:
    try:
        result = await enrolment.remove(args.person, cli_actor(), args.reason)
    except EnrolmentRefused as exc:
        print(f"eldergate: removal refused: {exc}", file=sys.stderr)
        return EX_DATAERR
    print(
        f"removed {result['person']}: {result['templates_removed']} template(s) deleted "
        f"(audit event {result['event_id']})",
        file=out,
    )
    return 0


async def _list(store: FaceStore, out: TextIO) -> int:
    persons = await store.persons()
    if not persons:
        print("no faces enrolled", file=out)
        return 0
    print(
        f"{'PERSON':<24} {'TEMPLATES':>9}  {'CONSENT':<24} FIRST ENROLLED        LAST"
        "                  DOORS",
        file=out,
    )
    for p in persons:
        print(
            f"{p.person_id:<24} {p.templates:>9}  {p.consent_ref:<24} "
            f"{_when(p.first_enrolled_ms)}  {_when(p.last_enrolled_ms)}  "
            f"{','.join(p.doors) or 'all'}",
            file=out,
        )
    print(f"{len(persons)} person(s), {sum(p.templates for p in persons)} template(s)", file=out)
    return 0


async def _audit(audit: AuditLog, n: int, out: TextIO) -> int:
    entries = await audit.tail(n)
    if not entries:
        print("the audit log is empty", file=out)
    for e in entries:
        mark = "" if e.forwarded else "  (not yet forwarded)"
        print(
            f"{_when(e.at_ms)}  {e.action:<16} {e.subject:<24} by {e.actor}  "
            f"event {e.event_id}{mark}",
            file=out,
        )
    return 0
