"""What every benchmark shares: summaries of samples, the store backends, the loopback sink in
its own process, and process CPU / memory readings from ``/proc``."""

from __future__ import annotations

import itertools
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from tests.support.postgres import Cluster, start_cluster

BACKENDS = ("sqlite", "postgresql")


def summary(samples: Sequence[float], unit: str = "ms", digits: int = 3) -> dict[str, Any]:
    """median, p95, min, max of samples (already in ``unit``)."""
    s = sorted(samples)
    if not s:
        return {"n": 0}
    return {
        "n": len(s), "unit": unit,
        "median": round(statistics.median(s), digits),
        "p95": round(s[max(0, min(len(s) - 1, int(len(s) * 0.95 + 0.5) - 1))], digits),
        "min": round(s[0], digits), "max": round(s[-1], digits),
    }


def ratio(a: float, b: float, digits: int = 2) -> float | None:
    return round(a / b, digits) if b else None


# ----------------------------------------------------------------------------- backends


@dataclass
class Backends:
    """SQLite lives in each benchmark's temporary home; PostgreSQL is one durable throwaway
    cluster (fsync and synchronous commit on) with a fresh database per benchmark."""

    cluster: Cluster | None = None
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def start(self, names: Sequence[str]) -> Backends:
        if "postgresql" in names and self.cluster is None:
            self.cluster = start_cluster(durable=True)
        return self

    def url(self, backend: str) -> str | None:
        """A store URL for ``backend``: ``None`` means SQLite under the benchmark's home."""
        if backend == "sqlite":
            return None
        assert self.cluster is not None, "PostgreSQL was not started"
        name = f"bench_{next(self._names)}"
        engine = sa.create_engine(self.cluster.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.cluster.url(name)

    @property
    def data_dir(self) -> Path:
        """Where PostgreSQL keeps its files (for the fsync floor on the same filesystem)."""
        assert self.cluster is not None
        return self.cluster.base_dir

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None


@contextmanager
def backends(names: Sequence[str]) -> Iterator[Backends]:
    b = Backends().start(names)
    try:
        yield b
    finally:
        b.stop()


def store_label(backend: str) -> str:
    return ("sqlite (WAL, synchronous=FULL)" if backend == "sqlite"
            else "postgresql (fsync on, synchronous_commit on)")


# ----------------------------------------------------------------------------- the sink


class RemoteSink:
    """The loopback HTTP sink (``tests/support/sink.py``) in its own process, so its work does
    not share the measured process's CPU (or GIL)."""

    def __init__(self) -> None:
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.sink"], cwd=root,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()

    def applied(self) -> int:
        return int(httpx.get(self.url + "/stats").json()["applied"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()

    def __enter__(self) -> RemoteSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------- /proc


def children(pid: int) -> list[int]:
    """Live child processes of ``pid``, whichever of its threads started them."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live children (sandbox workers)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in [pid, *children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def rss_mib(pid: int) -> float:
    """Resident set size of one process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def temp_home() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="keepflow-bench-")
