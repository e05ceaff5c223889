"""Camera reader: one thread, one latest-frame slot, offline/online reports, reopen with back-off.

A :class:`Camera` owns one OpenCV ``VideoCapture``. A single named reader thread opens it, reads
frames and keeps only the newest one in a slot guarded by a lock (habit 12: frames are dropped
and counted, never queued). The event loop takes frames with :meth:`Camera.wait_frame` (the
newest frame newer than the one it already has) or :meth:`Camera.latest`. A frame that is
replaced in the slot before anybody took it counts as dropped.

Sources (``CameraParams.source``):

* ``"0"``, ``"1"``...: a USB camera by index, V4L2 on Linux (``/dev/video<N>`` must exist);
* ``/dev/...``: a device path (``/dev/video0``, ``/dev/v4l/by-id/...``), V4L2;
* ``rtsp://``, ``rtsps://``, ``http://``, ``https://``: a network stream through FFmpeg, with
  open and read time-outs and RTSP over TCP (unless ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` already
  says otherwise);
* anything else: a video file (demos, tests), paced at ``min(file fps, settings.fps)`` and never
  read faster. A file that ends is "offline, end of file" and is opened again only once it was
  replaced or changed (or at once, silently, with ``loop_file``).

``on_state(online, reason)`` runs on the event loop (``call_soon_threadsafe``), exactly once per
transition, alternating: the first call is ``False`` if the first open fails or ``True`` when the
first frame has been read; then ``False`` once when the camera is lost (open or read failure, end
of file, no frame for ``stall_s`` while open) and ``True`` once when frames flow again. Failed
reopen attempts in between are not reported (logged at debug). :meth:`Camera.stop` is not a
transition, and no callback runs after it was called. While offline :meth:`Camera.latest`
returns ``None`` (the frame left in the slot is dropped).

``stall_s`` is watched twice: the reader thread turns a failed read that comes ``stall_s`` or
more after the last frame into "no frame for ..." (stream reads time out after ``stall_s``), and
a timer on the event loop reports the same when a read blocks for longer (a V4L2 device that
stops delivering): the thread cannot report while it is stuck in OpenCV.

Credentials in a URL (``rtsp://user:password@host/...``, and ``password=``/``token=``-like query
parameters) never reach a log line, a reason or the stats: :func:`redact_source` replaces them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import cv2
import numpy as np
import numpy.typing as npt

from common.backoff import Backoff

__all__ = [
    "Camera",
    "CameraParams",
    "CameraSettings",
    "CameraStats",
    "Frame",
    "OnState",
    "SourceKind",
    "redact_source",
    "source_kind",
]

_LOGGER = logging.getLogger(__name__)

OnState = Callable[[bool, str], None]

#: Schemes opened as network streams through FFmpeg.
_URL_SCHEMES: Final = frozenset({"rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp"})
#: Query parameters whose values are secrets (cameras often take ``?user=..&password=..``).
_SECRET_QUERY_KEYS: Final = frozenset(
    {"password", "passwd", "pass", "pwd", "token", "auth", "key", "secret", "api_key", "apikey"}
)
#: How long :meth:`Camera.stop` waits for the reader thread.
_STOP_LIMIT_S: Final = 5.0
#: The measured frame rate is taken over the frames of the last few seconds.
_FPS_WINDOW_S: Final = 5.0
#: A run of frames this long resets the reopen back-off (a source that opens and fails at
#: once is not hammered).
_STABLE_AFTER_S: Final = 10.0
#: A file's own frame rate is believed between these bounds; otherwise ``settings.fps``.
_MAX_FILE_FPS: Final = 240.0


class SourceKind(StrEnum):
    INDEX = "index"
    DEVICE = "device"
    URL = "url"
    FILE = "file"


def source_kind(source: str) -> SourceKind:
    """How ``source`` is opened: a USB index, a V4L2 device path, a stream URL or a file."""
    if source.isdigit():
        return SourceKind.INDEX
    if source.startswith("/dev/"):
        return SourceKind.DEVICE
    if "://" in source and source.split("://", 1)[0].lower() in _URL_SCHEMES:
        return SourceKind.URL
    return SourceKind.FILE


def redact_source(source: str) -> str:
    """``source`` fit for logs: a URL's ``user:password@`` becomes ``***@``, secret query values
    become ``***``. Anything that is not a URL is returned unchanged."""
    if "://" not in source:
        return source
    try:
        parts = urlsplit(source)
    except ValueError:
        return source.split("://", 1)[0] + "://***"  # unparseable: keep the scheme only
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_QUERY_KEYS for k, _ in pairs):
            query = urlencode(
                [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs],
                safe="*",
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class CameraParams(Protocol):
    """What a :class:`Camera` reads: a :class:`CameraSettings`, or a configuration section with
    these fields (the gateway's ``[access.camera]``, whose ranges are checked when the file is
    loaded). See :class:`CameraSettings` for what each means."""

    @property
    def source(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def fps(self) -> float: ...
    @property
    def loop_file(self) -> bool: ...
    @property
    def reopen_min_s(self) -> float: ...
    @property
    def reopen_max_s(self) -> float: ...
    @property
    def stall_s(self) -> float: ...
    @property
    def open_timeout_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class CameraSettings:
    """Where the camera is and how to read it (for standalone use: benchmarks, tests).

    ``source``: see :func:`source_kind`. ``width``/``height``/``fps``: requested from devices;
    files are paced at ``min(file fps, fps)``. ``loop_file``: a file that ends starts again
    without an offline report (demos). ``reopen_min_s``/``reopen_max_s``: capped, jittered
    back-off between open attempts. ``stall_s``: no frame for this long while open means the
    camera is lost (a frozen stream). ``open_timeout_s``: how long opening a stream URL may take.
    """

    source: str
    width: int = 640
    height: int = 480
    fps: float = 10.0
    loop_file: bool = False
    reopen_min_s: float = 0.5
    reopen_max_s: float = 30.0
    stall_s: float = 5.0
    open_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError("source must be a camera index, a device path, a URL or a file")
        if self.source != self.source.strip():
            raise ValueError(f"source {redact_source(self.source)!r} has surrounding blanks")
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("fps", "stall_s", "open_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not 0 < self.reopen_min_s <= self.reopen_max_s:
            raise ValueError("reopen back-off needs 0 < reopen_min_s <= reopen_max_s")

    @property
    def kind(self) -> SourceKind:
        return source_kind(self.source)

    @property
    def redacted_source(self) -> str:
        return redact_source(self.source)


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: BGR ``HxWx3`` uint8, read-only; ``index`` counts from 1 over the Camera's
    life (across reopens); ``timestamp`` is ``time.monotonic()`` when it was read."""

    image: npt.NDArray[np.uint8]
    index: int
    timestamp: float


@dataclass(frozen=True, slots=True)
class CameraStats:
    """Counters since :meth:`Camera.start`.

    ``frames_dropped``: frames replaced (or cleared when the camera went offline) before
    anybody took them. ``reopens``: successful opens after the first. ``failures``: failed open
    attempts plus losses (read failure, end of file, stall). ``fps``: measured over the frames of
    the last few seconds (0 when none). ``source``: redacted.
    """

    frames_read: int
    frames_dropped: int
    reopens: int
    failures: int
    fps: float
    online: bool
    source: str


class _OpenFailed(Exception):
    """An open attempt failed; the message is the (redacted) reason."""


_FileId = tuple[int, int, int, int]


def _file_id(path: str) -> _FileId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _v4l2_api() -> int:
    """V4L2 where this OpenCV has it (Linux), else whatever backend OpenCV picks."""
    if sys.platform.startswith("linux") and cv2.videoio_registry.hasBackend(cv2.CAP_V4L2):
        return int(cv2.CAP_V4L2)
    return int(cv2.CAP_ANY)


def _ffmpeg_api() -> int:
    return int(cv2.CAP_FFMPEG) if cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG) else 0


def _prefer_rtsp_over_tcp() -> None:
    """Make OpenCV's FFmpeg backend use RTSP over TCP (UDP loses packets: smeared frames).

    OpenCV takes FFmpeg options only from this process-wide variable, read at each open. An
    operator's own setting wins; only ``rtsp_transport`` is added if it names none.
    """
    name = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
    current = os.environ.get(name, "")
    if "rtsp_transport" in current:
        return
    os.environ[name] = f"{current}|rtsp_transport;tcp" if current else "rtsp_transport;tcp"


def _as_bgr(image: Any) -> npt.NDArray[np.uint8] | None:
    """The frame as BGR HxWx3 uint8, or None if it is not an image."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.size == 0:
        return None
    if image.ndim == 2:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 4:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGRA2BGR), dtype=np.uint8)
    return None


class Camera:
    """Owns one camera: a reader thread, the latest-frame slot, state reports; see module doc.

    No I/O happens before :meth:`start`. Call :meth:`stop` (awaited) to end it.
    """

    def __init__(self, settings: CameraParams, on_state: OnState, *, name: str = "camera") -> None:
        self._settings = settings
        self._on_state = on_state
        self._name = name
        self._kind = source_kind(settings.source)
        self._redacted = redact_source(settings.source)
        # At a very low frame rate the gap between two frames is not a stall: the limit is at
        # least two frame periods (of the file's own rate too, set at each open).
        self._stall_s = max(settings.stall_s, 2.0 / settings.fps)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stopped = False  # set on the loop by stop(): no more callbacks
        self._watchdog: asyncio.TimerHandle | None = None
        # Everything below is shared with the reader thread: guarded by _lock.
        self._lock = threading.Lock()
        self._slot: Frame | None = None
        self._taken = 0  # highest index handed out by wait_frame/latest
        self._next_index = 1
        self._state: bool | None = None  # what was last reported (None: nothing yet)
        self._capture_open = False
        self._last_frame_at = 0.0  # monotonic time of the last frame (or of the open)
        self._waiters: list[asyncio.Future[None]] = []
        self._recent: collections.deque[float] = collections.deque(maxlen=256)
        self._frames_read = 0
        self._frames_dropped = 0
        self._reopens = 0
        self._failures = 0

    @property
    def settings(self) -> CameraParams:
        return self._settings

    @property
    def online(self) -> bool:
        """True while frames flow (the last report was online) and the camera is not stopped."""
        with self._lock:
            return self._state is True and not self._stop.is_set()

    def stats(self) -> CameraStats:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._recent if t >= now - _FPS_WINDOW_S]
            span = recent[-1] - recent[0] if len(recent) >= 2 else 0.0
            fps = (len(recent) - 1) / span if span > 0 else 0.0
            return CameraStats(
                frames_read=self._frames_read,
                frames_dropped=self._frames_dropped,
                reopens=self._reopens,
                failures=self._failures,
                fps=fps,
                online=self._state is True and not self._stop.is_set(),
                source=self._redacted,
            )

    # -- the event loop's side --------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the reader thread; ``on_state`` and frame wake-ups go to ``loop``."""
        if self._thread is not None:
            raise RuntimeError(f"{self._name}: already started")
        self._loop = loop
        if self._kind is SourceKind.URL and self._settings.source.lower().startswith("rtsp"):
            _prefer_rtsp_over_tcp()
        self._thread = threading.Thread(target=self._run, name=f"{self._name}-reader", daemon=True)
        self._thread.start()
        loop.call_soon_threadsafe(self._arm_watchdog)

    async def stop(self) -> None:
        """Stop reading: set the stop flag, wake waiters, wait (bounded) for the thread.

        The reader thread releases the capture itself on its way out: a ``VideoCapture`` must
        not be released while another thread is inside ``read()``. A read blocked in OpenCV
        longer than the stop limit is left to finish on its own (the thread is a daemon).
        """
        self._stop.set()
        self._stopped = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        with self._lock:
            waiters, self._waiters = self._waiters, []
        _wake(waiters)
        thread = self._thread
        if thread is None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, thread.join, _STOP_LIMIT_S)
        if thread.is_alive():
            _LOGGER.warning(
                "%s: reader thread still blocked in a read after %s s; left to finish",
                self._name,
                _STOP_LIMIT_S,
            )

    async def wait_frame(self, after_index: int, limit_s: float) -> Frame | None:
        """The newest frame with ``index > after_index``, waiting up to ``limit_s`` for one;
        ``None`` on time-out or once the camera is stopped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, limit_s)
        while not self._stopped:
            with self._lock:
                frame = self._slot
                if frame is not None and frame.index > after_index:
                    self._taken = max(self._taken, frame.index)
                    return frame
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                return None
            finally:
                with self._lock:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
        return None

    def latest(self) -> Frame | None:
        """The newest frame (``None`` before the first one and while offline)."""
        with self._lock:
            frame = self._slot
            if frame is not None:
                self._taken = max(self._taken, frame.index)
            return frame

    def _arm_watchdog(self) -> None:
        if self._stopped or self._loop is None:
            return
        period = min(1.0, self._stall_s / 4)
        self._watchdog = self._loop.call_later(period, self._check_stall)

    def _check_stall(self) -> None:
        """On the loop: report a read that has blocked for ``stall_s`` (the thread cannot)."""
        with self._lock:
            stall_s = self._stall_s
            if (
                self._capture_open
                and self._state is True
                and time.monotonic() - self._last_frame_at >= stall_s
            ):
                self._transition_locked(False, f"no frame for {stall_s:g} s")
        self._arm_watchdog()

    def _deliver(self, online: bool, reason: str) -> None:
        if self._stopped:
            return
        try:
            self._on_state(online, reason)
        except Exception:
            _LOGGER.exception("%s: on_state(%s) raised", self._name, online)

    # -- state, shared by both sides (call with _lock held) ---------------------------------

    def _transition_locked(self, online: bool, reason: str) -> None:
        if self._state is online:
            _LOGGER.debug("%s still %s: %s", self._name, "online" if online else "offline", reason)
            return
        self._state = online
        if online:
            _LOGGER.info("%s online (%s): %s", self._name, self._redacted, reason)
        else:
            _LOGGER.warning("%s offline (%s): %s", self._name, self._redacted, reason)
            if self._slot is not None:
                if self._slot.index > self._taken:
                    self._frames_dropped += 1
                self._slot = None
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._deliver, online, reason)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                self._stop.set()

    # -- the reader thread --------------------------------------------------------------------

    def _run(self) -> None:
        settings = self._settings
        backoff = Backoff(settings.reopen_min_s, settings.reopen_max_s)
        opened_before = False
        replaying = False  # loop_file: this open starts the file again (not a reopen)
        ended: _FileId | None = None  # a file that ended: reopen only once it changes
        try:
            while not self._stop.is_set():
                if ended is not None and _file_id(settings.source) == ended:
                    if self._stop.wait(backoff.next()):
                        break
                    continue
                try:
                    capture, rate = self._open()
                except _OpenFailed as exc:
                    with self._lock:
                        self._failures += 1
                        self._transition_locked(False, str(exc))
                    if self._stop.wait(backoff.next()):
                        break
                    continue
                if opened_before and not replaying:
                    with self._lock:
                        self._reopens += 1
                opened_before = True
                replaying = False
                ended = None
                opened_at = time.monotonic()
                try:
                    reason, read_any = self._read(capture, rate)
                finally:
                    capture.release()
                    with self._lock:
                        self._capture_open = False
                if reason is None:  # stopped
                    break
                if reason == _END_OF_FILE and settings.loop_file and read_any:
                    _LOGGER.debug("%s: %s ended, starting again", self._name, self._redacted)
                    replaying = True
                    continue
                if reason == _END_OF_FILE:
                    ended = _file_id(settings.source)
                    _LOGGER.debug("%s: reopening once the file changes", self._name)
                with self._lock:
                    self._failures += 1
                    self._transition_locked(False, reason)
                if time.monotonic() - opened_at >= _STABLE_AFTER_S:
                    backoff.reset()
                if self._stop.wait(backoff.next()):
                    break
        except Exception:  # a bug: say so loudly rather than let the camera die silently
            _LOGGER.exception("%s: reader thread failed", self._name)
            with self._lock:
                self._transition_locked(False, "reader thread failed (see log)")

    def _open(self) -> tuple[Any, float | None]:
        """Open the source; returns the capture and the pacing rate (files only)."""
        settings = self._settings
        source = settings.source
        kind = self._kind
        try:
            if kind is SourceKind.INDEX:
                index = int(source)
                api = _v4l2_api()
                if api == cv2.CAP_V4L2 and not os.path.exists(f"/dev/video{index}"):
                    raise _OpenFailed(f"cannot open camera {index}: /dev/video{index} is absent")
                capture = cv2.VideoCapture(index, api)
            elif kind is SourceKind.DEVICE:
                if not os.path.exists(source):
                    raise _OpenFailed(f"cannot open {source}: no such device")
                capture = cv2.VideoCapture(source, _v4l2_api())
            elif kind is SourceKind.URL:
                open_ms = round(settings.open_timeout_s * 1000)
                read_ms = round(self._stall_s * 1000)
                capture = cv2.VideoCapture(
                    source,
                    _ffmpeg_api(),
                    [
                        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                        open_ms,
                        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                        read_ms,
                    ],
                )
            else:
                if not os.path.exists(source):
                    raise _OpenFailed(f"cannot open {source}: no such file")
                if os.path.isdir(source):
                    raise _OpenFailed(f"cannot open {source}: it is a directory")
                if not os.access(source, os.R_OK):
                    raise _OpenFailed(f"cannot open {source}: permission denied")
                capture = cv2.VideoCapture(source, _ffmpeg_api())
        except cv2.error as exc:
            raise _OpenFailed(f"cannot open {self._redacted}: {exc.msg}") from None
        if not capture.isOpened():
            capture.release()
            raise _OpenFailed(f"cannot open {self._redacted}: {_HINTS[kind]}")
        rate: float | None = None
        if kind in (SourceKind.INDEX, SourceKind.DEVICE):
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, settings.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, settings.height)
            capture.set(cv2.CAP_PROP_FPS, settings.fps)
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        elif kind is SourceKind.FILE:
            file_fps = float(capture.get(cv2.CAP_PROP_FPS))
            if not (math.isfinite(file_fps) and 0 < file_fps <= _MAX_FILE_FPS):
                file_fps = settings.fps
            rate = min(file_fps, settings.fps)
        with self._lock:
            self._stall_s = max(settings.stall_s, 2.0 / (rate or settings.fps))
            self._capture_open = True
            self._last_frame_at = time.monotonic()  # a stall counts from the open
        _LOGGER.debug("%s: opened %s", self._name, self._redacted)
        return capture, rate

    def _read(self, capture: Any, rate: float | None) -> tuple[str | None, bool]:
        """Read until the camera is lost or stopped: (why it was lost or None, any frame?)."""
        with self._lock:
            stall_s = self._stall_s
        period = 1.0 / rate if rate else 0.0
        due = time.monotonic()
        read_any = False
        while not self._stop.is_set():
            if period:
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return None, read_any
            try:
                ok, raw = capture.read()
            except cv2.error as exc:
                ok, raw = False, None
                _LOGGER.debug("%s: read raised %s", self._name, exc.msg)
            now = time.monotonic()
            if self._stop.is_set():
                return None, read_any
            image = _as_bgr(raw) if ok else None
            if image is None:
                with self._lock:
                    silent_s = now - self._last_frame_at
                if self._kind is SourceKind.FILE and not ok:
                    return _END_OF_FILE, read_any
                if silent_s >= stall_s:
                    return f"no frame for {stall_s:g} s", read_any
                return f"read failed on {self._redacted}", read_any
            if period:
                due = max(due + period, now)
            read_any = True
            self._publish(image, now)
        return None, read_any

    def _publish(self, image: npt.NDArray[np.uint8], now: float) -> None:
        image.flags.writeable = False
        with self._lock:
            frame = Frame(image=image, index=self._next_index, timestamp=now)
            self._next_index += 1
            previous = self._slot
            if previous is not None and previous.index > self._taken:
                self._frames_dropped += 1
            self._slot = frame
            self._frames_read += 1
            self._last_frame_at = now
            self._recent.append(now)
            waiters, self._waiters = self._waiters, []
            if self._state is not True:
                first = self._state is None
                self._transition_locked(
                    True, f"reading {self._redacted}" if first else "frames flow again"
                )
        if waiters and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(_wake, waiters)
            except RuntimeError:
                self._stop.set()


_END_OF_FILE: Final = "end of file"

_HINTS: Final = {
    SourceKind.INDEX: "no such camera, busy, or not a capture device",
    SourceKind.DEVICE: "busy, permission denied, or not a capture device",
    SourceKind.URL: "unreachable, refused, timed out or not a video stream",
    SourceKind.FILE: "not a video file OpenCV can read",
}


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
