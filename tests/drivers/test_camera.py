"""The camera reader on real OpenCV: MJPG videos written in tmp_path, an MJPEG stream on loopback.

Frames are 640x480: a real photo from shared/data/faces pasted on a grey background, plus two
flat blocks that survive JPEG: one numbers the frame inside its file, one tags the file. Every
wait is bounded; nothing asserts that something was fast.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.camera import (
    Camera,
    CameraSettings,
    Frame,
    SourceKind,
    redact_source,
    source_kind,
)
from tests.support.paths import FACES

WAIT_S = 10.0
FAST = {"reopen_min_s": 0.05, "reopen_max_s": 0.2}

# -- test videos -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    paths = sorted(FACES.glob("*/*.jpg"))[:8]
    if not paths:
        pytest.fail(f"no face photos under {FACES} (set ELDERGATE_FACES_DIR)")
    images = [cv2.imread(str(p)) for p in paths]
    assert all(img is not None for img in images)
    return images


def scene(photo: np.ndarray | None, number: int, tag: int) -> np.ndarray:
    """A 640x480 BGR frame: grey background, the photo at 200x200, marker blocks."""
    frame = np.full((480, 640, 3), 110, np.uint8)
    cv2.rectangle(frame, (400, 60), (560, 460), (80, 80, 80), 4)  # a door frame
    if photo is not None:
        frame[140:340, 220:420] = cv2.resize(photo, (200, 200))
    frame[0:64, 0:64] = 10 + 5 * number  # frame number within the file (0..48)
    frame[0:64, 576:640] = tag
    return frame


def number_of(frame: Frame) -> int:
    return round((float(frame.image[16:48, 16:48].mean()) - 10) / 5)


def tag_of(frame: Frame) -> int:
    return round(float(frame.image[16:48, 592:624].mean()) / 10) * 10  # JPEG: +-3


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    """An MJPG .avi, written beside `path` then renamed over it (readers never see half)."""
    partial = path.with_name(path.name + ".part.avi")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    os.replace(partial, path)
    return path


def video(path: Path, photos: list[np.ndarray], count: int, fps: float, tag: int = 50) -> Path:
    frames = [scene(photos[i % len(photos)], i, tag) for i in range(count)]
    return write_video(path, frames, fps)


# -- the camera under test ---------------------------------------------------------------------


@dataclass
class States:
    """Records on_state calls with the thread each ran on."""

    calls: list[tuple[bool, str]] = field(default_factory=list)
    threads: set[int] = field(default_factory=set)

    def __call__(self, online: bool, reason: str) -> None:
        self.calls.append((online, reason))
        self.threads.add(threading.get_ident())

    @property
    def flags(self) -> list[bool]:
        return [online for online, _ in self.calls]


async def until(predicate: Callable[[], bool], limit_s: float = WAIT_S) -> None:
    """Poll `predicate` every 10 ms; fail after `limit_s`."""
    for _ in range(int(limit_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not met within {limit_s} s")


CameraFactory = Callable[..., tuple[Camera, States]]


@pytest.fixture
async def make_camera() -> AsyncIterator[CameraFactory]:
    cameras: list[Camera] = []

    def make(source: str | Path, **settings: Any) -> tuple[Camera, States]:
        states = States()
        camera = Camera(CameraSettings(str(source), **settings), states)
        camera.start(asyncio.get_running_loop())
        cameras.append(camera)
        return camera, states

    yield make
    for camera in cameras:
        await camera.stop()


async def read_all(camera: Camera, limit: int = 200) -> list[Frame]:
    """Take frames until the camera went offline after at least one (bounded: `limit` waits)."""
    frames: list[Frame] = []
    last = 0
    for _ in range(limit):
        frame = await camera.wait_frame(last, 0.2)
        if frame is None:
            if frames and not camera.online:
                break
            continue
        frames.append(frame)
        last = frame.index
    return frames


# -- files -------------------------------------------------------------------------------------


async def test_frames_flow_from_a_file_paced_and_bounded_by_its_length(
    tmp_path: Path, photos: list[np.ndarray], make_camera: CameraFactory
) -> None:
    path = video(tmp_path / "door.avi", photos, count=24, fps=12.0)
    camera, states = make_camera(path, fps=100.0, **FAST)  # paced at min(12, 100)

    frames = await read_all(camera)
    await until(lambda: states.flags == [True, False])

    assert states.calls[1] == (False, "end of file")
    stats = camera.stats()
    assert stats.frames_read == 24  # the whole file, once: never more than its length
    # This consumer keeps up with 12 fps unless the machine is very busy; either way each
    # frame was handed out or counted as dropped, in file order.
    assert len(frames) + stats.frames_dropped == 24
    assert len(frames) >= 12
    assert all(number_of(f) == f.index - 1 for f in frames)
    assert [f.index for f in frames] == sorted({f.index for f in frames})
    for frame in frames:
        assert frame.image.shape == (480, 640, 3) and frame.image.dtype == np.uint8
        assert not frame.image.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            frame.image[0, 0, 0] = 1
    stamps = [f.timestamp for f in frames]
    assert stamps == sorted(stamps)
    # Pacing, as a lower bound only (a loaded machine can only make it slower): the reader
    # waits one period of 1/12 s between reads: frames n reads apart are n periods apart.
    assert stamps[-1] - stamps[0] >= (frames[-1].index - frames[0].index) / 12 * 0.95
    assert not stats.online and camera.latest() is None  # offline: no stale frame
    assert stats.fps > 0
    assert stats.source == str(path)


async def test_latest_frame_only_and_dropped_frames_are_counted(
    tmp_path: Path, photos: list[np.ndarray], make_camera: CameraFactory
) -> None:
    path = video(tmp_path / "door.avi", photos, count=40, fps=40.0)
    camera, states = make_camera(path, fps=40.0, **FAST)

    taken: set[int] = set()
    last = 0
    for _ in range(200):  # a consumer four times slower than the camera
        frame = await camera.wait_frame(last, 0.5)
        if frame is None:
            if taken and not camera.online:
                break
            continue
        assert frame.index > last
        taken.add(frame.index)
        newest = camera.latest()
        if newest is not None:
            assert newest.index >= frame.index
            taken.add(newest.index)
        last = max(taken)
        await asyncio.sleep(0.1)
    await until(lambda: states.flags == [True, False])

    stats = camera.stats()
    assert stats.frames_read == 40
    assert stats.frames_dropped > 0
    # Every frame read was either handed out or dropped (replaced, or cleared when the
    # file ended), never both and never queued.
    assert len(taken) + stats.frames_dropped == 40
    assert max(taken) <= 40
    # Nothing newer than the last frame: waiting returns None after the limit.
    assert await camera.wait_frame(40, 0.2) is None


async def test_a_file_that_ends_goes_offline_once_and_a_replaced_file_comes_back(
    tmp_path: Path, photos: list[np.ndarray], make_camera: CameraFactory
) -> None:
    path = video(tmp_path / "door.avi", photos, count=6, fps=30.0, tag=50)
    camera, states = make_camera(path, fps=30.0, **FAST)

    first = await read_all(camera)
    await until(lambda: states.flags == [True, False])
    assert states.calls[1] == (False, "end of file")
    await asyncio.sleep(0.8)  # several back-off rounds: the unchanged file is not replayed
    assert states.flags == [True, False]
    assert camera.stats().frames_read == 6

    video(path, photos, count=6, fps=30.0, tag=200)  # a new file at the same path
    await until(lambda: states.flags == [True, False, True])
    second = await read_all(camera)
    await until(lambda: states.flags == [True, False, True, False])

    assert {tag_of(f) for f in first} == {50}
    assert second and {tag_of(f) for f in second} == {200}
    assert second[0].index > first[-1].index  # indices go on across reopens
    stats = camera.stats()
    assert stats.reopens == 1
    assert stats.frames_read == 12


async def test_a_missing_file_is_offline_once_until_it_appears(
    tmp_path: Path, photos: list[np.ndarray], make_camera: CameraFactory
) -> None:
    path = tmp_path / "video7"
    camera, states = make_camera(path, **FAST)

    await until(lambda: states.flags == [False])
    assert states.calls[0] == (False, f"cannot open {path}: no such file")
    await asyncio.sleep(0.6)  # several failed attempts, reported once
    assert states.flags == [False]
    assert camera.stats().failures >= 2

    video(path, photos, count=5, fps=30.0)
    await until(lambda: states.flags == [False, True])
    frames = await read_all(camera)
    assert [number_of(f) for f in frames] == list(range(5))
    assert camera.stats().reopens == 0  # the first successful open


async def test_absent_devices_are_offline_once_with_a_clear_reason(
    make_camera: CameraFactory,
) -> None:
    device, device_states = make_camera("/dev/video-eldergate-absent", **FAST)
    index, index_states = make_camera("97", **FAST)

    await until(lambda: device_states.flags == [False] and index_states.flags == [False])
    await asyncio.sleep(0.5)
    assert device_states.calls == [
        (False, "cannot open /dev/video-eldergate-absent: no such device")
    ]
    assert index_states.calls == [(False, "cannot open camera 97: /dev/video97 is absent")]
    assert not device.online and device.latest() is None


async def test_not_a_video_is_offline_with_a_reason(
    tmp_path: Path, make_camera: CameraFactory
) -> None:
    path = tmp_path / "notes.avi"
    path.write_bytes(b"this is not a video" * 100)
    _, states = make_camera(path, **FAST)

    await until(lambda: states.flags == [False])
    assert states.calls[0][1].startswith(f"cannot open {path}: ")


async def test_loop_file_replays_without_going_offline(
    tmp_path: Path, photos: list[np.ndarray], make_camera: CameraFactory
) -> None:
    path = video(tmp_path / "demo.avi", photos, count=5, fps=60.0)
    camera, states = make_camera(path, fps=60.0, loop_file=True, **FAST)

    frames: list[Frame] = []
    last = 0
    for _ in range(200):
        frame = await camera.wait_frame(last, 2.0)
        assert frame is not None
        frames.append(frame)
        last = frame.index
        if camera.stats().frames_read >= 17:
            break

    assert states.flags == [True]
    stats = camera.stats()
    assert stats.failures == 0 and stats.reopens == 0 and stats.online
    numbers = [number_of(f) for f in frames]
    assert numbers.count(0) >= 3  # the file started again at least twice
    assert set(numbers) <= set(range(5))


# -- stopping and threads ----------------------------------------------------------------------


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith("-reader")]


async def test_stop_is_prompt_while_reading_and_while_backing_off(
    tmp_path: Path, photos: list[np.ndarray]
) -> None:
    loop = asyncio.get_running_loop()
    path = video(tmp_path / "demo.avi", photos, count=5, fps=30.0)
    reading = Camera(CameraSettings(str(path), loop_file=True, fps=30.0), States())
    # A back-off of 30 s: stop() must not wait for it.
    waiting = Camera(
        CameraSettings(str(tmp_path / "absent.avi"), reopen_min_s=30.0, reopen_max_s=30.0),
        States(),
        name="absent",
    )
    before = set(reader_threads())
    reading.start(loop)
    waiting.start(loop)
    assert {t.name for t in set(reader_threads()) - before} == {"camera-reader", "absent-reader"}
    assert await reading.wait_frame(0, WAIT_S) is not None
    await until(lambda: waiting.stats().failures >= 1)

    pending = asyncio.create_task(reading.wait_frame(10**9, 60.0))  # would wait 60 s
    async with asyncio.timeout(10):  # a guard for a hang, far above a normal stop
        await asyncio.gather(reading.stop(), waiting.stop())
        assert await pending is None
    assert set(reader_threads()) == before
    assert not reading.online and not waiting.online
    with pytest.raises(RuntimeError, match="already started"):
        reading.start(loop)


async def test_on_state_runs_on_the_event_loop_thread(
    tmp_path: Path, photos: list[np.ndarray], make_camera: CameraFactory
) -> None:
    path = video(tmp_path / "door.avi", photos, count=3, fps=30.0)
    _, states = make_camera(path, **FAST)
    await until(lambda: states.flags == [True, False])
    assert states.threads == {threading.get_ident()}


async def test_no_callback_after_stop(
    tmp_path: Path, photos: list[np.ndarray], make_camera: CameraFactory
) -> None:
    path = video(tmp_path / "door.avi", photos, count=3, fps=30.0)
    camera, states = make_camera(path, **FAST)
    await until(lambda: states.flags == [True])
    await camera.stop()
    count = len(states.calls)
    await asyncio.sleep(0.3)  # the file ended meanwhile: not reported after stop()
    assert len(states.calls) == count


# -- sources and credentials -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("0", SourceKind.INDEX),
        ("12", SourceKind.INDEX),
        ("/dev/video0", SourceKind.DEVICE),
        ("/dev/v4l/by-id/usb-cam-video-index0", SourceKind.DEVICE),
        ("rtsp://cam.local/stream1", SourceKind.URL),
        ("RTSP://cam.local/stream1", SourceKind.URL),
        ("http://10.0.0.5/video.mjpg", SourceKind.URL),
        ("/var/lib/eldergate/demo.mp4", SourceKind.FILE),
        ("demo.avi", SourceKind.FILE),
        ("file://weird", SourceKind.FILE),
    ],
)
def test_source_kinds(source: str, kind: SourceKind) -> None:
    assert source_kind(source) is kind


@pytest.mark.parametrize(
    ("source", "redacted"),
    [
        ("rtsp://admin:s3cret@10.0.0.5:554/Streaming/101", "rtsp://***@10.0.0.5:554/Streaming/101"),
        ("rtsp://admin@10.0.0.5/live", "rtsp://***@10.0.0.5/live"),
        ("rtsp://a:p@ss@word@cam/x", "rtsp://***@cam/x"),
        (
            "http://cam/video.cgi?user=admin&password=s3cret&res=hd",
            "http://cam/video.cgi?user=admin&password=***&res=hd",
        ),
        ("http://cam/video.mjpg", "http://cam/video.mjpg"),
        ("/dev/video0", "/dev/video0"),
        ("0", "0"),
    ],
)
def test_redact_source(source: str, redacted: str) -> None:
    assert redact_source(source) == redacted


secret_text = st.text(
    alphabet=st.characters(whitelist_categories=("L", "N"), whitelist_characters="-_.~!$"),
    min_size=4,
    max_size=20,
)


@given(user=secret_text, password=secret_text, scheme=st.sampled_from(["rtsp", "http", "https"]))
def test_redaction_never_keeps_the_password(user: str, password: str, scheme: str) -> None:
    url = f"{scheme}://{user}:{password}@camera-7.local:8554/ch01?pwd={password}"
    redacted = redact_source(url)
    assert redacted == f"{scheme}://***@camera-7.local:8554/ch01?pwd=***"
    assert CameraSettings(url).redacted_source == redacted


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_credentials_never_reach_reasons_stats_or_logs(
    make_camera: CameraFactory,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG, logger="drivers.camera")
    secret = "Zq7-s3cret-pw"
    url = f"rtsp://admin:{secret}@127.0.0.1:{closed_port()}/stream1"
    camera, states = make_camera(url, open_timeout_s=2.0, **FAST)

    await until(lambda: camera.stats().failures >= 2)
    assert states.flags == [False]
    reason = states.calls[0][1]
    assert reason.startswith("cannot open rtsp://***@127.0.0.1:")
    assert camera.stats().source.startswith("rtsp://***@127.0.0.1:")
    await camera.stop()
    out, err = capfd.readouterr()
    for text in (reason, caplog.text, out, err, repr(camera.stats())):
        assert secret not in text
    assert "rtsp://***@" in caplog.text


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="source"):
        CameraSettings("")
    with pytest.raises(ValueError, match="fps"):
        CameraSettings("0", fps=0)
    with pytest.raises(ValueError, match="width"):
        CameraSettings("0", width=-1)
    with pytest.raises(ValueError, match="back-off"):
        CameraSettings("0", reopen_min_s=2.0, reopen_max_s=1.0)
    with pytest.raises(ValueError, match=r"\*\*\*"):
        CameraSettings(" rtsp://u:pw@cam/x")  # the message is redacted too


# -- a network stream that freezes -------------------------------------------------------------


class MjpegServer:
    """An MJPEG-over-HTTP camera on 127.0.0.1 (multipart/x-mixed-replace), ~25 fps.

    `paused` freezes every stream (the connection stays open, nothing is sent), like an IP
    camera whose encoder hangs.
    """

    def __init__(self, frames: Sequence[np.ndarray]) -> None:
        self.jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]
        self.paused = threading.Event()
        self.closing = threading.Event()
        self.connections = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.connections += 1
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=fr")
                    self.end_headers()
                    for n in range(3000):  # bounded: 2 minutes at 25 fps
                        while server.paused.is_set() and not server.closing.is_set():
                            server.closing.wait(0.02)
                        if server.closing.is_set():
                            return
                        jpeg = server.jpegs[n % len(server.jpegs)]
                        self.wfile.write(
                            b"--fr\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                            % len(jpeg)
                            + jpeg
                            + b"\r\n"
                        )
                        self.wfile.flush()
                        server.closing.wait(0.04)
                except OSError:  # the camera hung up
                    return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="mjpeg-server")

    def __enter__(self) -> MjpegServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def mjpeg(photos: list[np.ndarray]) -> Iterator[MjpegServer]:
    with MjpegServer([scene(photos[i % len(photos)], i, 90) for i in range(10)]) as server:
        yield server


async def test_a_frozen_stream_goes_offline_after_stall_s_and_comes_back(
    mjpeg: MjpegServer, make_camera: CameraFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="drivers.camera")
    url = f"http://viewer:Pw-9x7@127.0.0.1:{mjpeg.port}/video.mjpg"
    camera, states = make_camera(url, stall_s=1.0, open_timeout_s=2.0, **FAST)

    frame = await camera.wait_frame(0, WAIT_S)
    assert frame is not None and tag_of(frame) == 90
    assert states.flags == [True]

    mjpeg.paused.set()
    await until(lambda: states.flags == [True, False])
    assert states.calls[1] == (False, "no frame for 1 s")
    assert camera.latest() is None

    mjpeg.paused.clear()
    await until(lambda: states.flags == [True, False, True])
    after = await camera.wait_frame(frame.index, WAIT_S)
    assert after is not None and after.index > frame.index
    assert camera.stats().reopens >= 1  # the stalled connection was dropped and reopened
    assert mjpeg.connections >= 2
    assert "Pw-9x7" not in caplog.text
    assert camera.stats().source == f"http://***@127.0.0.1:{mjpeg.port}/video.mjpg"
