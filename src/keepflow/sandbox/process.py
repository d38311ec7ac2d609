"""One sandbox worker process, seen from the host: start it, talk to it, end it.

Workers are started from one long-lived spawner thread owned by the pool: the kernel's
"die with your parent" signal (PR_SET_PDEATHSIG) fires when the *thread* that forked the child
exits, so forking from short-lived host threads would kill healthy workers at random.
The worker gets a minimal environment: no credential of the host's environment reaches it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import keepflow
from keepflow.errors import SandboxCrashed
from keepflow.sandbox.protocol import ProtocolClosed, ProtocolTimeout, read_frame, write_frame

log = logging.getLogger(__name__)
_PACKAGE_ROOT = str(Path(keepflow.__file__).resolve().parent.parent)
_EXIT_WAIT = 2.0


def _environment() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": _PACKAGE_ROOT + (os.pathsep + path if path else ""),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


class WorkerProcess:
    """A started worker and the two pipes to it."""

    def __init__(self, python: str | None = None) -> None:
        to_read, to_write = os.pipe()
        from_read, from_write = os.pipe()
        try:
            self.popen = subprocess.Popen(
                [
                    python or sys.executable, "-m", "keepflow.sandbox.worker",
                    "--in-fd", str(to_read), "--out-fd", str(from_write),
                    "--parent", str(os.getpid()),
                ],
                pass_fds=(to_read, from_write),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=_environment(),
                start_new_session=True,  # the terminal's Ctrl-C is the host's to handle
            )
        except BaseException:
            for fd in (to_read, to_write, from_read, from_write):
                os.close(fd)
            raise
        os.close(to_read)
        os.close(from_write)
        self.to_worker = to_write
        self.from_worker = from_read
        self.ready = False
        #: True while the worker waits for a new request (no invocation half-way).
        self.in_sync = True
        self.retire = False
        self.invocations = 0
        self.engine_hooks = "unknown"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, timeout: float) -> None:
        if self.ready:
            return
        try:
            header, _ = read_frame(self.from_worker, time.monotonic() + timeout)
        except (ProtocolClosed, ProtocolTimeout) as exc:
            self.kill()
            raise SandboxCrashed(f"the sandbox worker did not start: {exc}; "
                                 f"{self.death_message()}") from None
        if header.get("type") != "ready":
            self.kill()
            raise SandboxCrashed(f"the sandbox worker sent {header!r} instead of ready")
        self.engine_hooks = str(header.get("engine_hooks", "unknown"))
        if self.engine_hooks != "on":
            log.warning("sandbox engine hooks are off (%s): unhandled rejections are not "
                        "reported and the prelude is compiled per invocation", self.engine_hooks)
        self.ready = True

    def send(self, header: dict[str, Any], *parts: str | bytes) -> None:
        self.in_sync = False
        try:
            write_frame(self.to_worker, header, *parts)
        except ProtocolClosed:
            raise SandboxCrashed(self.death_message()) from None

    def recv(self, deadline: float | None) -> tuple[dict[str, Any], bytes]:
        """Next frame; raises ProtocolTimeout, or SandboxCrashed if the worker is gone."""
        try:
            return read_frame(self.from_worker, deadline)
        except ProtocolClosed:
            self.kill()
            raise SandboxCrashed(self.death_message()) from None

    def death_message(self) -> str:
        try:
            code = self.popen.wait(timeout=_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            return f"the sandbox worker (pid {self.pid}) stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = "unknown"
            return f"the sandbox worker (pid {self.pid}) was killed by signal {-code} ({name})"
        return f"the sandbox worker (pid {self.pid}) exited with code {code}"

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=_EXIT_WAIT)
        self._close_fds()

    def close(self) -> None:
        """Closing its input makes the worker exit; kill it if it does not."""
        with contextlib.suppress(OSError):
            os.close(self.to_worker)
        self.to_worker = -1
        try:
            self.popen.wait(timeout=_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_fds()

    def _close_fds(self) -> None:
        for name in ("to_worker", "from_worker"):
            fd = getattr(self, name)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1)
