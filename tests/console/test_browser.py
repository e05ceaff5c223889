"""The console tests' browser itself (tests/support/browser.py): Debian's headless chromium
loads a page over HTTPS with a self-signed certificate from the console's own TLS module, runs
its external script, reads zh-CN text, asks in the configured language, sees the cookies, saves
a screenshot, and leaves no process behind when closed.

The page is served on the test's event loop, so every blocking browser call goes through
`asyncio.to_thread` (the way a test drives the in-process daemon's console)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from gateway.console import tls
from gateway.console.config import ConsoleSection
from tests.support import browser as browser_module
from tests.support.browser import HEIGHT, WIDTH, Browser, BrowserFactory, browser_missing

PAGE = """<!doctype html>
<html lang="zh-CN">
<head><meta charset="utf-8"><title>值班台</title><script src="/app.js" defer></script></head>
<body>
<h1 id="title">值班台：报警</h1>
<p id="status">等待脚本</p>
<p id="lang"></p>
<input id="name" value="">
<button id="claim" type="button">我去处理</button>
<p id="claimed"></p>
</body>
</html>
"""

SCRIPT = """
document.getElementById("status").textContent = "脚本已运行";
document.getElementById("claim").addEventListener("click", () => {
  document.getElementById("claimed").textContent =
    "已认领：" + document.getElementById("name").value;
});
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _page(request: web.Request) -> web.Response:
    language = request.headers.get("Accept-Language", "")
    body = PAGE.replace('<p id="lang"></p>', f'<p id="lang">{language}</p>')
    response = web.Response(text=body, content_type="text/html", charset="utf-8")
    response.headers["Content-Security-Policy"] = "default-src 'self'; script-src 'self'"
    response.set_cookie("probe", "1", secure=True, httponly=True, samesite="Strict")
    return response


async def _script(request: web.Request) -> web.Response:
    return web.Response(text=SCRIPT, content_type="text/javascript", charset="utf-8")


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[str]:
    """The page on https://127.0.0.1:<free port>/ with a certificate tls.py made."""
    section = ConsoleSection(listen="127.0.0.1", port=_free_port())
    context = await asyncio.to_thread(tls.ssl_context, section, tmp_path / "state")
    app = web.Application()
    app.router.add_get("/", _page)
    app.router.add_get("/app.js", _script)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", section.port, ssl_context=context).start()
        yield tls.url(section)
    finally:
        await runner.cleanup()


def _processes_naming(profile: Path) -> list[int]:
    """Processes whose command line names `profile`: /proc, and `pgrep -f` where it exists."""
    marker = str(profile).encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    pgrep = shutil.which("pgrep")
    if pgrep:
        done = subprocess.run(
            [pgrep, "-f", str(profile)], capture_output=True, text=True, check=False, timeout=30
        )
        found |= {int(pid) for pid in done.stdout.split()}
    return sorted(found)


async def test_a_page_over_https_with_its_script(
    site: str, browser: Browser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELDERGATE_SCREENSHOTS", str(tmp_path / "shots"))
    await asyncio.to_thread(browser.open, site)

    def script_ran(b: Browser) -> bool:
        return b.text("#status") == "脚本已运行"

    assert await asyncio.to_thread(browser.wait_for, script_ran, 10)
    assert await asyncio.to_thread(browser.text, "#title") == "值班台：报警"
    language = await asyncio.to_thread(browser.text, "#lang")
    assert language.startswith("zh-CN"), language

    await asyncio.to_thread(browser.fill, "#name", "李娜")
    await asyncio.to_thread(browser.click, "#claim")
    assert await asyncio.to_thread(browser.wait_for, lambda b: b.text("#claimed") == "已认领：李娜")

    cookies = {c["name"]: c for c in await asyncio.to_thread(browser.cookies)}
    assert cookies["probe"]["secure"] is True
    assert cookies["probe"]["httpOnly"] is True
    assert cookies["probe"]["sameSite"] == "Strict"

    shot = await asyncio.to_thread(browser.screenshot, "browser self-test zh-CN")
    assert shot == tmp_path / "shots" / "browser-self-test-zh-CN.png"
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (WIDTH, HEIGHT)  # the IHDR chunk's size


async def test_english_and_no_process_left_after_close(site: str, browsers: BrowserFactory) -> None:
    english = await asyncio.to_thread(browsers, lang="en")
    await asyncio.to_thread(english.open, site)
    assert (await asyncio.to_thread(english.text, "#lang")).startswith("en")
    running = english.pids()
    assert len(running) >= 2  # chromedriver and chromium at least
    assert _processes_naming(english.profile)

    await asyncio.to_thread(english.close)
    assert english.pids() == []
    assert _processes_naming(english.profile) == []
    assert not english.profile.exists()
    await asyncio.to_thread(english.close)  # twice is harmless


async def test_a_timeout_names_the_condition_and_saves_the_page(
    site: str, browser: Browser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELDERGATE_SCREENSHOTS", str(tmp_path / "shots"))
    await asyncio.to_thread(browser.open, site)
    with pytest.raises(AssertionError, match=r"#never.*the page is in .*\.png"):
        await asyncio.to_thread(browser.wait_for, "#never", 0.5)
    assert list((tmp_path / "shots").glob("timeout-*.png"))


def test_a_missing_browser_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(browser_module, "CHROMIUM", tmp_path / "chromium")
    problem = browser_missing()
    assert str(tmp_path / "chromium") in problem
    assert "scripts/setup.sh" in problem
    with pytest.raises(RuntimeError, match="chromium"):
        Browser()
