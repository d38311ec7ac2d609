"""The sandbox worker process: ``python -m keepflow.sandbox.worker --in-fd N --out-fd M``.

A long-lived process with one JS thread. It reads framed requests from the pool (see
:mod:`.protocol`), runs each invocation in a fresh context (:class:`.engine.Session`) and writes
framed replies. It hardens itself first: resource limits as a backstop behind the engine's own
limits, death with its parent, no core dumps, no child processes; it exits when its input closes.

Requests: ``invoke`` (parts: source, args JSON), ``describe`` (part: source); during an
invocation ``replies`` (part: ``[[seq, value], ...]``), ``terminate`` or ``abort``.
Replies: ``ready``, ``calls``, ``result``, ``error``, ``manifest``, ``idle``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import resource
import signal
import sys
import threading
import time
from typing import Any

from keepflow.sandbox import failures
from keepflow.sandbox.engine import EngineFailure, Poll, Session, prepare
from keepflow.sandbox.native import EngineHooks
from keepflow.sandbox.protocol import ProtocolClosed, read_frame, split_parts, write_frame

_JS_THREAD_STACK = 64 * 1024 * 1024
_PR_SET_PDEATHSIG = 1
#: Cumulative CPU after which the worker asks to be replaced (RLIMIT_CPU is set above it).
RETIRE_CPU_SECONDS = 600.0
_RLIMIT_CPU_SECONDS = 1800
#: Address space allowed beyond the current size and twice the JS heap limit.
_AS_HEADROOM = 512 * 1024 * 1024
#: CPU beyond an invocation's budget after which the watchdog gives up on the engine's
#: interrupt (see :meth:`Worker.watch`).
_WATCHDOG_GRACE = 0.5
_WATCHDOG_PERIOD = 0.05
_WATCHDOG_EXIT = 70


def _die_with_parent(parent: int) -> None:
    """SPEC §13 workers must not outlive the host: ask the kernel to kill us with our parent."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent and os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def _harden(parent: int) -> None:
    os.dup2(2, 1)  # a stray print must never reach anything but stderr
    _die_with_parent(parent)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CPU, (_RLIMIT_CPU_SECONDS, _RLIMIT_CPU_SECONDS + 10))


def _address_space_backstop(memory_bytes: int) -> None:
    """RLIMIT_AS above the JS heap limit: a runaway allocation outside the engine's accounting
    fails instead of exhausting the machine."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[0])
        current = pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = current + 2 * memory_bytes + _AS_HEADROOM
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class Worker:
    def __init__(self, in_fd: int, out_fd: int) -> None:
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.hooks = EngineHooks()
        self.broken = False
        #: ``time.process_time()`` by which the current invocation must be done (None: idle).
        self.cpu_deadline: float | None = None
        self._write_lock = threading.Lock()

    def send(self, header: dict[str, Any], *parts: str | bytes, final: bool = False) -> None:
        """Write a frame; ``final`` ends the invocation (the watchdog stands down first, so it
        can never add a second answer)."""
        with self._write_lock:
            if final:
                self.cpu_deadline = None
            write_frame(self.out_fd, header, *parts)

    def _session(self, source: str, limits: dict[str, Any]) -> Session:
        self.cpu_deadline = time.process_time() + float(limits["cpu_seconds"])
        return Session(source, limits, self.hooks)

    def watch(self, thread: threading.Thread) -> None:
        """The CPU watchdog, on the main thread while the JS thread serves.

        The engine's CPU interrupt is uncatchable, but it must allocate its error object: a
        script that exhausts the heap and swallows every out-of-memory error turns the interrupt
        into one more catchable out-of-memory error and keeps running. If an invocation's CPU
        time passes its budget by a margin, the watchdog reports the CPU limit itself and ends
        the process (the pool replaces it).
        """
        while thread.is_alive():
            thread.join(_WATCHDOG_PERIOD)
            deadline = self.cpu_deadline
            if deadline is None or time.process_time() < deadline + _WATCHDOG_GRACE:
                continue
            if self._write_lock.acquire(timeout=1.0):
                if self.cpu_deadline != deadline:  # answered meanwhile
                    self._write_lock.release()
                    continue
                with contextlib.suppress(ProtocolClosed, OSError):
                    write_frame(
                        self.out_fd,
                        {"type": "error", "retire": True, "cpu": 0.0, "jobs": 0,
                         "error": failures.limit("cpu", "the script used up its CPU time")},
                        '{"logs":[]}',
                    )
            os._exit(_WATCHDOG_EXIT)

    def serve(self) -> None:
        prepare(self.hooks)
        self.send({"type": "ready", "pid": os.getpid(),
                   "engine_hooks": self.hooks.problem or "on"})
        while True:
            try:
                header, payload = read_frame(self.in_fd)
            except ProtocolClosed:
                return
            op = header.get("op")
            if op == "invoke":
                self.invoke(header, split_parts(header, payload))
            elif op == "describe":
                self.describe(header, payload.decode())
            elif op in ("terminate", "abort"):
                self.send({"type": "idle"})  # nothing is running: acknowledge and go on

    def _stats(self, session: Session | None) -> dict[str, Any]:
        return {
            "cpu": session.cpu_used() if session else 0.0,
            "jobs": session.jobs if session else 0,
            "retire": self.broken or time.process_time() > RETIRE_CPU_SECONDS,
        }

    def _fail(self, error: dict[str, Any], session: Session | None, logs: str) -> None:
        self.send({"type": "error", "error": error, **self._stats(session)}, logs, final=True)

    def invoke(self, header: dict[str, Any], parts: list[bytes]) -> None:
        limits = header["limits"]
        _address_space_backstop(int(limits["memory_bytes"]))
        source, args_json = parts[0].decode(), parts[1].decode()
        session: Session | None = None
        try:
            session = self._session(source, limits)
            self._run(session, header["spec"], args_json)
        except EngineFailure as failure:
            rescued = session.rescue() if session else None
            error = failure.error
            if rescued is not None and rescued.state in ("threw", "fatal"):
                error = session.failure_of(rescued) if session else error  # it came first
            self._fail(error, session, rescued.payload if rescued else '{"logs":[]}')
        except ProtocolClosed:
            raise
        except Exception as exc:  # a bug of ours: report it, then let the pool replace us
            self.broken = True
            self._fail(failures.wire("LogicError", f"internal sandbox error: {exc!r}"), session,
                       '{"logs":[]}')
        finally:
            self.cpu_deadline = None
            if session is not None:
                session.close()

    def _run(self, session: Session, spec: dict[str, Any], args_json: str) -> None:
        poll: Poll = session.start(spec, args_json)
        while True:
            if poll.state in ("threw", "fatal"):
                self._fail(session.failure_of(poll), session, poll.payload)
                return
            if poll.calls:
                # SPEC §5.2: the batch goes to the host, which answers every call or stops here.
                self.send({"type": "calls", **self._stats(session)}, poll.payload)
                reply, payload = read_frame(self.in_fd)
                if reply.get("op") != "replies":
                    self.send({"type": "idle"}, final=True)  # terminate/abort: drop the context
                    return
                poll = session.settle(payload.decode())
                continue
            if poll.state == "returned":
                unhandled = poll.header.get("unhandled")
                if unhandled:
                    self._fail(_unhandled(unhandled, session.user_lines), session, poll.payload)
                    return
                self.send({"type": "result", **self._stats(session)}, poll.payload, final=True)
                return
            self._fail(
                failures.wire(
                    "NeverSettled",
                    "the handler awaited a promise that can never settle "
                    "(no host call is pending and no microtask is left)",
                ),
                session,
                poll.payload,
            )
            return

    def describe(self, header: dict[str, Any], source: str) -> None:
        limits = header["limits"]
        _address_space_backstop(int(limits["memory_bytes"]))
        session: Session | None = None
        try:
            session = self._session(source, limits)
            poll = session.manifest()
            if poll.state != "returned":
                self._fail(session.failure_of(poll), session, poll.payload)
                return
            self.send({"type": "manifest", **self._stats(session)}, poll.payload, final=True)
        except EngineFailure as failure:
            self._fail(failure.error, session, '{"logs":[]}')
        except Exception as exc:
            self.broken = True
            self._fail(failures.wire("LogicError", f"internal sandbox error: {exc!r}"), session,
                       '{"logs":[]}')
        finally:
            self.cpu_deadline = None
            if session is not None:
                session.close()


def _unhandled(info: dict[str, Any], user_lines: int) -> dict[str, Any]:
    reason = info.get("reason") or {}
    described = failures.thrown(
        str(reason.get("name", "Error")), str(reason.get("message", "")),
        str(reason.get("stack", "")), user_lines,
    )
    count = int(info.get("count", 1))
    more = f" ({count} unhandled rejections)" if count > 1 else ""
    return failures.wire(
        "UnhandledRejection",
        f"a promise was rejected and nothing handled it: {described['message']}{more}",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keepflow.sandbox.worker")
    parser.add_argument("--in-fd", type=int, required=True)
    parser.add_argument("--out-fd", type=int, required=True)
    parser.add_argument("--parent", type=int, default=0)
    args = parser.parse_args(argv)
    _harden(args.parent)
    worker = Worker(args.in_fd, args.out_fd)
    # One JS thread with a stack far larger than the engine's own stack limit, so deep
    # recursion ends in the engine's catchable RangeError, never in a segfault.
    threading.stack_size(_JS_THREAD_STACK)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            worker.serve()
        except BaseException as exc:
            failed.append(exc)
            raise

    thread = threading.Thread(target=run, name="keepflow-js")
    thread.start()
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no fork/exec from here on
    worker.watch(thread)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
