"""The console tests' real browser: `browser` (zh-CN, the console's first language) and
`browsers` (a factory, e.g. `browsers(lang="en")` or a second staff screen), each closed at the
end of the test with its chromium processes. A failing test leaves a screenshot of every browser
it opened (build/screenshots/FAILED-<test>-<n>.png, or in $ELDERGATE_SCREENSHOTS).

Without /usr/bin/chromium and /usr/bin/chromedriver the fixtures fail (CI must not pass
without the browser tests); ELDERGATE_ALLOW_NO_BROWSER=1 makes them skip instead."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest

from drivers.sim.buttons import SimulatedReceiver
from tests.buttons.test_buttons import PREFIX, Rig
from tests.conftest import SubscriberFactory
from tests.support.broker import MosquittoBroker
from tests.support.browser import DEFAULT_TIMEOUT, Browser, BrowserFactory, browser_missing

_CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_CALL_REPORT] = report
    return report


def _require_browser() -> None:
    problem = browser_missing()
    if not problem:
        return
    if os.environ.get("ELDERGATE_ALLOW_NO_BROWSER") == "1":
        pytest.skip(f"no browser: {problem} (ELDERGATE_ALLOW_NO_BROWSER=1)")
    pytest.fail(
        f"the console's browser tests need a browser: {problem}; or set "
        "ELDERGATE_ALLOW_NO_BROWSER=1 to skip them",
        pytrace=False,
    )


@pytest.fixture
def browsers(request: pytest.FixtureRequest) -> Iterator[BrowserFactory]:
    """`browsers(lang="zh-CN", timeout=15.0)` starts another browser, closed after the test."""
    _require_browser()
    made: list[Browser] = []

    def make(*, lang: str = "zh-CN", timeout: float = DEFAULT_TIMEOUT) -> Browser:
        browser = Browser(lang=lang, timeout=timeout)
        made.append(browser)
        return browser

    yield make
    report = request.node.stash.get(_CALL_REPORT, None)
    failures: list[str] = []
    for number, browser in enumerate(made, 1):
        if report is not None and report.failed:
            try:
                print(f"screenshot: {browser.screenshot(f'FAILED-{request.node.name}-{number}')}")
            except Exception as exc:  # the browser may be gone: still close the others
                print(f"no screenshot of browser {number}: {exc!r}")
        try:
            browser.close()
        except Exception as exc:
            failures.append(repr(exc))
    if failures:
        pytest.fail(f"closing the browsers failed: {failures}", pytrace=False)


@pytest.fixture
def browser(browsers: BrowserFactory) -> Browser:
    """A headless chromium asking for zh-CN pages, accepting the console's self-signed
    certificate."""
    return browsers(lang="zh-CN")


@pytest.fixture
async def rig(
    tmp_path: Path, broker: MosquittoBroker, subscriber: SubscriberFactory
) -> AsyncIterator[Rig]:
    async with SimulatedReceiver(link_path=tmp_path / "rx1") as receiver:
        yield Rig(tmp_path, broker, subscriber(f"{PREFIX}/#"), receiver)
