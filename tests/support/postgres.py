"""A throwaway PostgreSQL cluster for the test suite (initdb + pg_ctl, unix socket only).

Used when ``KEEPFLOW_TEST_PG_URL`` is not set. As root, the cluster runs as the ``postgres``
user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Cluster:
    base_dir: Path
    socket_dir: Path
    port: int
    user: str
    bin_dir: Path

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return (f"postgresql+psycopg://{self.user}@/{database}"
                f"?host={self.socket_dir}&port={self.port}")

    def stop(self) -> None:
        _run_as(self.user, [str(self.bin_dir / "pg_ctl"), "-D", str(self.base_dir / "data"),
                            "-m", "immediate", "-w", "stop"], check=False)
        shutil.rmtree(self.base_dir, ignore_errors=True)


def find_bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


def _run_as(user: str, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=120)


def start_cluster(*, durable: bool = False) -> Cluster:
    """Tests run without fsync (speed); benchmarks ask for a ``durable`` cluster (fsync,
    synchronous commit and full page writes on: PostgreSQL's defaults)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found")
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
    base = Path(tempfile.mkdtemp(prefix="keepflow-pg-"))
    sock = base / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, user)
        shutil.chown(sock, user)
        os.chmod(base, 0o700)
    port = _free_port()
    _run_as(user, [str(bin_dir / "initdb"), "-D", str(base / "data"), "-U", user,
                   "-A", "trust", "-E", "UTF8", "--no-sync"])
    opts = f"-k {sock} -p {port} -c listen_addresses='' -c max_connections=200"
    if not durable:
        opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    res = _run_as(user, [str(bin_dir / "pg_ctl"), "-D", str(base / "data"), "-o", opts,
                         "-l", str(base / "server.log"), "-w", "-t", "60", "start"], check=False)
    if res.returncode != 0:
        log = (base / "server.log").read_text() if (base / "server.log").exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {res.stderr}\n{log}")
    return Cluster(base, sock, port, user, bin_dir)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
