"""What the test helpers that own a resource share: `with` support, and ending a child
process (SIGTERM, then SIGKILL when it does not stop in time)."""

from __future__ import annotations

import logging
import subprocess
from types import TracebackType
from typing import Any, Self

_LOGGER = logging.getLogger(__name__)
KILL_WAIT_S = 15.0


class Closing:
    """`with helper:` starts it (`start()`) and closes it (`close()`) whatever happens."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def end_process(proc: subprocess.Popen[Any], timeout: float | None, what: str) -> int:
    """Stop `proc` and reap it: SIGTERM and up to `timeout` seconds for an orderly exit, then
    SIGKILL (`timeout` None: SIGKILL at once). Returns its exit code."""
    if proc.poll() is None:
        if timeout is None:
            proc.kill()
        else:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _LOGGER.warning("%s pid %d ignored SIGTERM for %.0f s", what, proc.pid, timeout)
                proc.kill()
    return proc.wait(KILL_WAIT_S)
