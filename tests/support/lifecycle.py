"""What the test helpers that own a resource share: `with` support, the state of the child
process they run, and ending it (SIGTERM, then SIGKILL when it does not stop in time)."""

from __future__ import annotations

import logging
import subprocess
from types import TracebackType
from typing import Any, Self

_LOGGER = logging.getLogger(__name__)
KILL_WAIT_S = 15.0


class Closing:
    """`with helper:` starts it (`start()`) and closes it (`close()`) whatever happens."""

    def start(self) -> object:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ChildProcess(Closing):
    """A helper that runs one child process at a time (``_proc``, None while there is none)."""

    _proc: subprocess.Popen[bytes] | None

    @property
    def running(self) -> bool:
        """True while the process is alive (it may be paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None


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
