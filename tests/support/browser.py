"""A real browser for the console's tests: Debian's headless chromium driven by selenium.

Only /usr/bin/chromium and /usr/bin/chromedriver are used (scripts/setup.sh installs them):
the driver's path is given to the Service, so Selenium Manager is never run, and SE_OFFLINE
keeps it from downloading anything should a selenium version run it anyway. Each `Browser` has
a fresh temporary profile; `close()` quits the driver and then kills whatever chromedriver or
chromium process of its own is still there, so a test leaves no orphan behind.

Waits are conditions polled by WebDriverWait with a deadline, never sleeps. On a timeout the
page is saved as a screenshot and the assertion names it.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver import Chrome, ChromeOptions, ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from tests.support.paths import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PROFILE_PREFIX = "eldergate-browser-"
WIDTH, HEIGHT = 1280, 900
DEFAULT_TIMEOUT = 15.0
_EXIT_TIMEOUT = 10.0

_T = TypeVar("_T")
Condition = str | Callable[["Browser"], _T]


class BrowserFactory(Protocol):
    """The `browsers` fixture (tests/console/conftest.py): another browser, closed after the
    test."""

    def __call__(self, *, lang: str = "zh-CN", timeout: float = DEFAULT_TIMEOUT) -> Browser: ...


def browser_missing() -> str:
    """Why no browser can be started here ("" if one can)."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        return (
            f"{' and '.join(missing)} missing: install Debian's chromium and chromium-driver "
            "(bash scripts/setup.sh)"
        )
    return ""


def screenshot_dir() -> Path:
    """Where screenshots go: $ELDERGATE_SCREENSHOTS, or build/screenshots in the checkout."""
    configured = os.environ.get("ELDERGATE_SCREENSHOTS")
    return Path(configured) if configured else REPO / "build" / "screenshots"


class Browser:
    """One headless chromium with its own profile, `lang` ("zh-CN", "en") as the language it
    asks pages for. Self-signed certificates are accepted (the console makes its own)."""

    def __init__(self, *, lang: str = "zh-CN", timeout: float = DEFAULT_TIMEOUT) -> None:
        problem = browser_missing()
        if problem:
            raise RuntimeError(problem)
        self.lang = lang
        self.timeout = timeout
        self.profile = Path(tempfile.mkdtemp(prefix=PROFILE_PREFIX))
        self._closed = False
        self._family: dict[int, int] = {}  # pid -> start time, of chromedriver and chromium
        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager, were it run: no downloads
        service = ChromeService(
            executable_path=str(CHROMEDRIVER),
            log_output=str(self.profile / "chromedriver.log"),
            env={**os.environ, "SE_OFFLINE": "true"},
        )
        try:
            self.driver = Chrome(options=self._options(), service=service)
        except BaseException:
            self._remember_family(service)
            self._kill_family()
            log = self._driver_log()
            shutil.rmtree(self.profile, ignore_errors=True)
            if log:
                print(f"chromedriver log (last lines):\n{log}")
            raise
        self._service = service
        self._remember_family(service)
        self.driver.set_page_load_timeout(timeout)
        self.driver.set_script_timeout(timeout)
        self._fit_viewport()

    def _fit_viewport(self) -> None:
        """Make the page's viewport (what a screenshot shows) WIDTH x HEIGHT: headless
        chromium counts its hidden toolbars in --window-size."""
        inner = self.driver.execute_script("return [window.innerWidth, window.innerHeight]")
        width, height = int(inner[0]), int(inner[1])
        if (width, height) != (WIDTH, HEIGHT):
            self.driver.set_window_size(2 * WIDTH - width, 2 * HEIGHT - height)

    def _options(self) -> ChromeOptions:
        options = ChromeOptions()
        options.binary_location = str(CHROMIUM)
        options.accept_insecure_certs = True
        for argument in (
            "--headless=new",
            f"--user-data-dir={self.profile}",
            f"--window-size={WIDTH},{HEIGHT}",
            f"--lang={self.lang}",
            "--disable-dev-shm-usage",  # a container's /dev/shm is small
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-sync",
            # Nothing but the page under test goes on the network.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--no-pings",
        ):
            options.add_argument(argument)
        if os.geteuid() == 0:
            options.add_argument("--no-sandbox")  # chromium refuses to run as root otherwise
        options.add_experimental_option(
            "prefs", {"intl.accept_languages": self.lang, "credentials_enable_service": False}
        )
        return options

    # -- pages ------------------------------------------------------------------------------------

    def open(self, url: str) -> None:
        self.driver.get(url)

    def wait_for(self, condition: Condition[_T], timeout: float | None = None) -> _T | WebElement:
        """Until `condition` holds, at most `timeout` seconds (the browser's default): a CSS
        selector (returns the first visible element it matches) or a predicate called with this
        browser (returns its first truthy result; a missing or stale element counts as false).
        AssertionError naming the condition and a screenshot of the page on a timeout."""
        limit = self.timeout if timeout is None else timeout
        wait = WebDriverWait(
            self.driver,
            limit,
            poll_frequency=0.05,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        )
        try:
            if isinstance(condition, str):
                located = expected_conditions.visibility_of_element_located(
                    (By.CSS_SELECTOR, condition)
                )
                element: WebElement = wait.until(located)
                return element
            predicate = condition
            return wait.until(lambda _driver: predicate(self))
        except TimeoutException:
            what = condition if isinstance(condition, str) else getattr(condition, "__name__", "")
            shot = self._try_screenshot("timeout")
            raise AssertionError(
                f"the browser waited {limit:g} s for {what or condition!r} on "
                f"{self.driver.current_url}; the page is in {shot}"
            ) from None

    def find(self, css: str) -> WebElement:
        """The first element `css` matches, waiting until it is visible."""
        found = self.wait_for(css)
        assert isinstance(found, WebElement)
        return found

    def text(self, css: str) -> str:
        """The visible text of the first element `css` matches (waiting until it is shown)."""
        return self.find(css).text

    def click(self, css: str) -> None:
        """Click the first element `css` matches, once it is visible and enabled."""
        wait = WebDriverWait(
            self.driver,
            self.timeout,
            poll_frequency=0.05,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        )
        try:
            element = wait.until(
                expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, css))
            )
        except TimeoutException:
            shot = self._try_screenshot("timeout")
            raise AssertionError(
                f"{css} was not clickable within {self.timeout:g} s on "
                f"{self.driver.current_url}; the page is in {shot}"
            ) from None
        element.click()

    def fill(self, css: str, text: str) -> None:
        """Replace the value of the input `css` matches with `text`, typed as keys."""
        element = self.find(css)
        element.clear()
        element.send_keys(text)

    def cookies(self) -> list[dict[str, Any]]:
        """The cookies of the current page's site, as WebDriver gives them (name, value,
        secure, httpOnly, sameSite, expiry...)."""
        return list(self.driver.get_cookies())

    def screenshot(self, name: str) -> Path:
        """Save the viewport as `<screenshot_dir()>/<name>.png` and return its path."""
        directory = screenshot_dir()
        directory.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "screenshot"
        path = directory / f"{safe}.png"
        if not self.driver.save_screenshot(str(path)):
            raise AssertionError(f"the browser could not save a screenshot to {path}")
        return path

    def _try_screenshot(self, name: str) -> str:
        try:
            return str(self.screenshot(f"{name}-{os.getpid()}-{id(self):x}"))
        except (WebDriverException, OSError, AssertionError) as exc:
            return f"(no screenshot: {exc})"

    # -- the end ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Quit the driver, kill any chromedriver or chromium process of this browser still
        running and wait (bounded) until they are gone, remove the profile. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._remember_family(self._service)
        try:
            self.driver.quit()
        except Exception as exc:  # the browser may have crashed: kill what is left
            print(f"quitting the browser failed: {exc!r}")
        finally:
            left = self._kill_family()
            shutil.rmtree(self.profile, ignore_errors=True)
        if left:
            raise AssertionError(f"browser processes still running after close: {left}")

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def pids(self) -> list[int]:
        """The processes of this browser still running: chromedriver, and every process whose
        command line names its profile directory or that descends from those."""
        return sorted(pid for pid, start in self._alive_family().items())

    def _driver_log(self) -> str:
        try:
            lines = (self.profile / "chromedriver.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-20:])

    def _remember_family(self, service: ChromeService) -> None:
        process = getattr(service, "process", None)
        roots = {process.pid} if process is not None and process.poll() is None else set()
        table = _processes()
        marker = str(self.profile).encode()
        roots |= {pid for pid, info in table.items() if marker in info.cmdline}
        family = set(roots)
        grew = True
        while grew:  # add the descendants
            more = {pid for pid, info in table.items() if info.ppid in family} - family
            family |= more
            grew = bool(more)
        for pid in family:
            self._family.setdefault(pid, table[pid].start)

    def _alive_family(self) -> dict[int, int]:
        table = _processes()
        return {
            pid: start
            for pid, start in self._family.items()
            if pid in table and table[pid].start == start and table[pid].state != "Z"
        }

    def _kill_family(self) -> list[int]:
        """SIGKILL the family still alive, wait for each to exit (at most _EXIT_TIMEOUT in
        all); the pids that did not."""
        self._remember_new_descendants()
        alive = self._alive_family()
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process = getattr(getattr(self, "_service", None), "process", None)
        if process is not None:  # our own child: reap it
            try:
                process.wait(timeout=_EXIT_TIMEOUT)
            except Exception as exc:
                print(f"chromedriver did not exit: {exc!r}")
        for pid in alive:
            _wait_exit(pid, _EXIT_TIMEOUT)
        return sorted(self._alive_family())

    def _remember_new_descendants(self) -> None:
        table = _processes()
        known = set(self._alive_family())
        grew = True
        while grew:
            more = {pid for pid, info in table.items() if info.ppid in known} - known
            for pid in more:
                self._family.setdefault(pid, table[pid].start)
            known |= more
            grew = bool(more)


class _Proc:
    __slots__ = ("cmdline", "ppid", "start", "state")

    def __init__(self, state: str, ppid: int, start: int, cmdline: bytes) -> None:
        self.state = state
        self.ppid = ppid
        self.start = start
        self.cmdline = cmdline


def _processes() -> dict[int, _Proc]:
    """Every process this user can see, from /proc (psutil is not installed)."""
    table: dict[int, _Proc] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_bytes()
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        table[int(entry.name)] = _Proc(
            fields[0].decode(), int(fields[1]), int(fields[19]), cmdline.replace(b"\0", b" ")
        )
    return table


def _wait_exit(pid: int, timeout: float) -> None:
    """Until `pid` has exited (a zombie counts), at most `timeout` seconds: a pidfd becomes
    readable when its process ends, so this is a wait on the kernel, not a polling loop."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll(timeout * 1000)
    finally:
        os.close(fd)
