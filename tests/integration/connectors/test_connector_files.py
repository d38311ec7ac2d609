"""The ``files`` connector on a real filesystem under ``tmp_path`` (SPEC §9): every tool, the
reconcile of each mutation after an uncertain outcome (SPEC §6), bad params, and attacks on
the root's confinement — symbolic links at every level, ``..``, absolute paths, special files,
NUL, lone surrogates, over-long paths — each refused with nothing outside the root touched.
The last tests run a workflow that writes one file per event through ``keepflow.service`` on
SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import re
import socket
import stat
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from keepflow import service
from keepflow.clock import FakeClock
from keepflow.connectors import files as files_module
from keepflow.connectors.base import ConnectionConfig, ReconcileOutcome, ToolCall
from keepflow.connectors.config import parse_connections
from keepflow.connectors.files import TEMP_PREFIX, FilesConnector
from keepflow.connectors.registry import get_connector_class
from keepflow.errors import (
    ConfigError,
    PermanentError,
    PermissionDenied,
    PreconditionError,
    TransientError,
    UncertainOutcome,
)
from keepflow.model import RunStatus
from keepflow.policies import PolicyBook
from keepflow.runtime.host import Host
from keepflow.sandbox.pool import SandboxPool
from keepflow.settings import Settings
from tests.support.workflows import (
    consumer_js,
    deploy_source,
    quick_policy,
    run_detail,
    seed_producer,
    workflow_js,
)

pytestmark = pytest.mark.integration

SECRET = b"outside the root: never read, never written\n"


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the root, holding a file nothing may read or change."""
    o = tmp_path / "outside"
    o.mkdir()
    (o / "secret.txt").write_bytes(SECRET)
    return o


@pytest.fixture
def fs(root: Path) -> Iterator[FilesConnector]:
    c = FilesConnector(ConnectionConfig("files", "files", {"root": str(root)}))
    yield c
    c.close()


def tc(tool: str, **params: Any) -> ToolCall:
    return ToolCall(tool, params, timeout=5.0,
                    idempotency_key="kf-wf-run-1" if tool in ("write", "delete") else None)


def call(c: FilesConnector, tool: str, **params: Any) -> Any:
    return c.call(tc(tool, **params))


def snapshot(directory: Path) -> dict[str, Any]:
    """Everything under ``directory`` (names, kinds, bytes, link targets), not followed."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(directory))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", p.read_bytes(), st.st_mtime_ns, st.st_ino)
            else:
                out[rel] = (stat.S_IFMT(st.st_mode),)
    return out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def no_temp_files(directory: Path) -> bool:
    return not any(n.startswith(TEMP_PREFIX) for _, ds, fs_ in os.walk(directory)
                   for n in ds + fs_)


# -- settings --------------------------------------------------------------------------------


def test_it_is_a_builtin_connector_type() -> None:
    assert get_connector_class("files") is FilesConnector
    kinds = {n: (s.kind.value, s.capability, s.risk.value, s.scope, s.reconcile)
             for n, s in FilesConnector.tools.items()}
    assert kinds == {
        "list": ("read", "files.read", "low", ("path",), False),
        "read": ("read_by_id", "files.read", "low", ("path",), False),
        "write": ("mutate", "files.write", "medium", ("path",), True),
        "delete": ("mutate", "files.delete", "high", ("path",), True),
    }
    assert all(s.reconcile_doc == "docs/connectors.md#files"
               for s in FilesConnector.tools.values() if s.reconcile)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({}, "root"),
        ({"root": "relative/dir"}, "root"),
        ({"root": "/nonexistent/keepflow-files-test"}, "root"),
        ({"root": "/"}, "root"),
        ({"root": 5}, "root"),
        ({"root": "ROOT", "max_bytes": 0}, "max_bytes"),
        ({"root": "ROOT", "max_bytes": True}, "max_bytes"),
        ({"root": "ROOT", "max_bytes": 10**12}, "max_bytes"),
        ({"root": "ROOT", "max_bytes": "4MiB"}, "max_bytes"),
        ({"root": "ROOT", "create_dirs": "yes"}, "create_dirs"),
        ({"root": "ROOT", "roots": "/tmp"}, "roots"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(root: Path, settings: dict[str, Any],
                                                 key: str) -> None:
    settings = {k: (str(root) if v == "ROOT" else v) for k, v in settings.items()}
    with pytest.raises(ConfigError) as info:
        FilesConnector.validate_settings(settings)
    assert info.value.details["key"] == key


def test_a_root_that_is_a_file_is_refused(root: Path) -> None:
    (root / "f").write_text("x")
    with pytest.raises(ConfigError, match="existing directory"):
        FilesConnector.validate_settings({"root": str(root / "f")})


def test_connections_toml_settings_are_checked_when_loaded(root: Path) -> None:
    doc = {"connections": {"out": {"type": "files", "root": str(root), "max_bytes": 2048,
                                   "create_dirs": False}}}
    [_, cfg] = parse_connections(doc)
    assert (cfg.name, cfg.type) == ("out", "files")
    bad = {"connections": {"out": {"type": "files", "root": "not/absolute"}}}
    with pytest.raises(ConfigError, match="root"):
        parse_connections(bad)


def test_a_root_given_through_a_symbolic_link_is_resolved_once(tmp_path: Path, root: Path
                                                               ) -> None:
    link = tmp_path / "root-link"
    link.symlink_to(root)
    c = FilesConnector(ConnectionConfig("files", "files", {"root": str(link)}))
    call(c, "write", path="x.txt", text="via the link")
    assert (root / "x.txt").read_text() == "via the link"


# -- the tools -------------------------------------------------------------------------------


def test_write_creates_directories_and_read_returns_the_text(fs: FilesConnector, root: Path
                                                             ) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    out = call(fs, "write", path="reports/2024/march.txt", text="Grüße\n")
    data = "Grüße\n".encode()
    assert out == {"path": "reports/2024/march.txt", "size": len(data), "sha256": sha(data),
                   "created": True}
    assert (root / "reports/2024/march.txt").read_bytes() == data
    got = call(fs, "read", path="reports/2024/march.txt")
    assert got["text"] == "Grüße\n"
    assert (got["path"], got["size"], got["sha256"]) == ("reports/2024/march.txt", len(data),
                                                        sha(data))
    modified = datetime.fromisoformat(got["modified"])
    assert modified.utcoffset() is not None
    assert modified.utcoffset().total_seconds() == 0
    assert modified >= before
    assert no_temp_files(root)


def test_write_replaces_a_file_atomically_keeping_its_permissions(fs: FilesConnector,
                                                                  root: Path) -> None:
    target = root / "a.txt"
    target.write_text("old")
    target.chmod(0o640)
    inode = target.stat().st_ino
    out = call(fs, "write", path="a.txt", text="new")
    assert out["created"] is False
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert target.stat().st_ino != inode  # a new file renamed over the old one
    assert no_temp_files(root)


def test_binary_content_round_trips_as_base64(fs: FilesConnector, root: Path) -> None:
    data = bytes(range(256)) * 3
    call(fs, "write", path="bin/blob.dat", base64=base64.b64encode(data).decode())
    assert (root / "bin/blob.dat").read_bytes() == data
    got = call(fs, "read", path="bin/blob.dat", encoding="base64")
    assert base64.b64decode(got["base64"]) == data
    assert "text" not in got
    assert got["sha256"] == sha(data)


def test_text_that_is_not_utf8_or_holds_nul_must_be_read_as_base64(fs: FilesConnector,
                                                                   root: Path) -> None:
    (root / "latin1.txt").write_bytes("café".encode("latin-1"))
    (root / "nul.txt").write_bytes(b"a\x00b")
    for name in ("latin1.txt", "nul.txt"):
        with pytest.raises(PermanentError, match='encoding "base64"') as info:
            call(fs, "read", path=name)
        assert info.value.details["field"] == "encoding"
        assert call(fs, "read", path=name, encoding="base64")["size"] > 0


def test_if_absent_creates_once_and_never_clobbers(fs: FilesConnector, root: Path) -> None:
    assert call(fs, "write", path="once.txt", text="first", if_absent=True)["created"] is True
    again = call(fs, "write", path="once.txt", text="first", if_absent=True)
    assert again == {"path": "once.txt", "size": 5, "sha256": sha(b"first"), "created": False}
    with pytest.raises(PermanentError, match="already exists with other content") as info:
        call(fs, "write", path="once.txt", text="second", if_absent=True)
    assert info.value.details["conflict"] is True
    assert (root / "once.txt").read_text() == "first"
    assert no_temp_files(root)


def test_if_absent_without_hard_links_still_never_clobbers(fs: FilesConnector, root: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    def no_links(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(files_module.os, "link", no_links)
    assert call(fs, "write", path="fat.txt", text="one", if_absent=True)["created"] is True
    assert (root / "fat.txt").read_text() == "one"
    with pytest.raises(PermanentError, match="other content"):
        call(fs, "write", path="fat.txt", text="two", if_absent=True)
    assert (root / "fat.txt").read_text() == "one"
    assert no_temp_files(root)


def test_write_without_create_dirs_needs_the_directory(root: Path) -> None:
    c = FilesConnector(ConnectionConfig("files", "files", {"root": str(root),
                                                            "create_dirs": False}))
    with pytest.raises(PreconditionError, match=re.escape("'missing/x.txt'")):
        call(c, "write", path="missing/x.txt", text="x")
    assert list(root.iterdir()) == []
    (root / "missing").mkdir()
    assert call(c, "write", path="missing/x.txt", text="x")["created"] is True


def test_read_classifies_what_is_not_a_readable_file(fs: FilesConnector, root: Path) -> None:
    (root / "dir").mkdir()
    with pytest.raises(PreconditionError, match=re.escape("no file 'nope.txt'")) as info:
        call(fs, "read", path="nope.txt")
    assert info.value.details["path"] == "nope.txt"
    with pytest.raises(PreconditionError, match=re.escape("no file 'no/such/dir.txt'")):
        call(fs, "read", path="no/such/dir.txt")
    with pytest.raises(PermanentError, match="is a directory"):
        call(fs, "read", path="dir")
    (root / "file").write_text("x")
    with pytest.raises(PreconditionError, match="'file' is not a directory"):
        call(fs, "read", path="file/x")


def test_files_over_max_bytes_are_refused_both_ways(root: Path) -> None:
    c = FilesConnector(ConnectionConfig("files", "files", {"root": str(root),
                                                            "max_bytes": 1024}))
    (root / "big.bin").write_bytes(b"x" * 1025)
    with pytest.raises(PermanentError, match="more than max_bytes") as info:
        call(c, "read", path="big.bin")
    assert info.value.details["limit"] == "max_bytes"
    with pytest.raises(PermanentError, match="max_bytes") as info:
        call(c, "write", path="w.txt", text="y" * 1025)
    assert info.value.details["field"] == "text"
    with pytest.raises(PermanentError, match="max_bytes") as info:
        call(c, "write", path="w.bin", base64=base64.b64encode(b"y" * 5000).decode())
    assert info.value.details["field"] == "base64"
    assert not (root / "w.txt").exists()
    assert call(c, "write", path="w.txt", text="y" * 1024)["size"] == 1024


def test_list_gives_sorted_entries_of_one_directory(fs: FilesConnector, root: Path) -> None:
    (root / "b.txt").write_text("bb")
    (root / "a.csv").write_text("a")
    (root / "sub").mkdir()
    (root / "sub" / "deep.txt").write_text("d")
    out = call(fs, "list")
    assert [(e["path"], e["type"], e["size"]) for e in out["entries"]] == [
        ("a.csv", "file", 1), ("b.txt", "file", 2), ("sub", "dir", 0)]
    assert out["truncated"] is False
    assert "skipped" not in out
    assert all("sha256" not in e for e in out["entries"])
    assert all(datetime.fromisoformat(e["modified"]).utcoffset().total_seconds() == 0
               for e in out["entries"])
    assert [e["path"] for e in call(fs, "list", path="sub")["entries"]] == ["sub/deep.txt"]
    assert call(fs, "list", path=None, glob=None, limit=None, hash=None) == out  # null = unset
    with pytest.raises(PreconditionError, match="no directory 'nope'"):
        call(fs, "list", path="nope")
    with pytest.raises(PreconditionError, match=re.escape("'b.txt' is not a directory")):
        call(fs, "list", path="b.txt")


def test_list_by_glob_limit_and_hash(fs: FilesConnector, root: Path) -> None:
    for rel in ("a.txt", "b.txt", "c.csv", "x/d.txt", "x/y/e.txt", "x/y/f.csv"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    paths = lambda **p: [e["path"] for e in call(fs, "list", **p)["entries"]]  # noqa: E731
    assert paths(glob="*.txt") == ["a.txt", "b.txt"]
    assert paths(glob="**/*.txt") == ["a.txt", "b.txt", "x/d.txt", "x/y/e.txt"]
    assert paths(glob="x/*/*.csv") == ["x/y/f.csv"]
    assert paths(glob="[ab].*") == ["a.txt", "b.txt"]
    assert paths(glob="[!ab]*") == ["c.csv", "x"]
    assert paths(path="x", glob="**") == ["x/d.txt", "x/y", "x/y/e.txt", "x/y/f.csv"]
    limited = call(fs, "list", glob="**/*.txt", limit=2)
    assert [e["path"] for e in limited["entries"]] == ["a.txt", "b.txt"]
    assert limited["truncated"] is True
    hashed = call(fs, "list", glob="x/*", hash=True)["entries"]
    assert hashed == [
        {"path": "x/d.txt", "type": "file", "size": 7, "modified": hashed[0]["modified"],
         "sha256": sha(b"x/d.txt")},
        {"path": "x/y", "type": "dir", "size": 0, "modified": hashed[1]["modified"]},
    ]


def test_a_pathological_glob_stays_fast(fs: FilesConnector, root: Path) -> None:
    for i in range(50):
        (root / ("a" * 200 + str(i))).write_text("x")
    t0 = time.perf_counter()
    out = call(fs, "list", glob="*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b")
    assert out["entries"] == []
    assert time.perf_counter() - t0 < 2.0


def test_list_skips_links_special_files_unusable_names_and_temp_files(
        fs: FilesConnector, root: Path, outside: Path) -> None:
    (root / "ok.txt").write_text("x")
    (root / "link").symlink_to(outside)
    (root / "file-link").symlink_to(outside / "secret.txt")
    os.mkfifo(root / "fifo")
    os.mkdir(os.fsencode(root) + b"/bad-\xff-name")
    (root / f"{TEMP_PREFIX}0123").write_text("half a write")
    out = call(fs, "list", glob="**", hash=True)
    assert [e["path"] for e in out["entries"]] == ["ok.txt"]
    assert out["skipped"] == 4


def test_delete_removes_one_file(fs: FilesConnector, root: Path) -> None:
    (root / "d").mkdir()
    (root / "d" / "x.txt").write_text("x")
    assert call(fs, "delete", path="d/x.txt") == {"path": "d/x.txt", "deleted": True}
    assert not (root / "d" / "x.txt").exists()
    assert (root / "d").is_dir()  # directories stay
    with pytest.raises(PreconditionError, match=re.escape("no file 'd/x.txt'")):
        call(fs, "delete", path="d/x.txt")
    with pytest.raises(PermanentError, match="is a directory"):
        call(fs, "delete", path="d")
    assert (root / "d").is_dir()


def test_describe_names_the_connection_and_path(fs: FilesConnector) -> None:
    assert fs.describe(tc("write", path="a/b.txt", text="x")) == "write files:a/b.txt"
    assert fs.describe(tc("list")) == "list files:."
    assert fs.describe(tc("delete", path="../etc")) == "delete files: (invalid path)"


# -- reconcile after an uncertain outcome ----------------------------------------------------


def test_write_that_happened_before_the_call_dropped_reconciles_applied(
        fs: FilesConnector, root: Path) -> None:
    mutation = tc("write", path="out/a.json", text='{"id": "a"}')
    result = fs.call(mutation)  # ... and then the answer is lost
    verdict = fs.reconcile(mutation)
    assert verdict.outcome is ReconcileOutcome.APPLIED
    assert verdict.result == result | {"created": None}


def test_write_that_never_happened_reconciles_failed(fs: FilesConnector, root: Path) -> None:
    mutation = tc("write", path="out/a.json", text='{"id": "a"}')
    assert fs.reconcile(mutation).outcome is ReconcileOutcome.FAILED  # no directory even
    (root / "out").mkdir()
    assert fs.reconcile(mutation).outcome is ReconcileOutcome.FAILED  # no file
    (root / "out" / "a.json").write_text('{"id": "b"}')
    verdict = fs.reconcile(mutation)
    assert verdict.outcome is ReconcileOutcome.FAILED  # other content: the write runs again
    assert "other content" in verdict.detail
    fs.call(mutation)  # re-executed: same bytes, so nothing is duplicated
    assert fs.reconcile(mutation).outcome is ReconcileOutcome.APPLIED


def test_delete_reconciles_by_absence(fs: FilesConnector, root: Path) -> None:
    (root / "x.txt").write_text("x")
    mutation = tc("delete", path="x.txt")
    assert fs.reconcile(mutation).outcome is ReconcileOutcome.FAILED  # still there
    fs.call(mutation)
    verdict = fs.reconcile(mutation)
    assert verdict.outcome is ReconcileOutcome.APPLIED
    assert verdict.result == {"path": "x.txt", "deleted": True}
    assert fs.reconcile(tc("delete", path="never/was.txt")).outcome is ReconcileOutcome.APPLIED


def test_reconcile_answers_retry_when_it_cannot_look(fs: FilesConnector, root: Path) -> None:
    (root / "link").symlink_to(root)
    assert fs.reconcile(tc("write", path="link/x", text="x")).outcome is ReconcileOutcome.RETRY
    root.rename(root.with_name("gone"))
    verdict = fs.reconcile(tc("write", path="x", text="x"))
    assert verdict.outcome is ReconcileOutcome.RETRY
    assert "root directory" in verdict.detail
    assert fs.reconcile(tc("delete", path="x")).outcome is ReconcileOutcome.RETRY


def test_a_write_that_provably_did_not_happen_is_definite(fs: FilesConnector, root: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Disk full while the temporary file is written: TransientError, the target unchanged,
    no temporary file left — never "uncertain"."""
    (root / "a.txt").write_text("old")

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files_module.os, "write", full)
    with pytest.raises(TransientError, match="No space left") as info:
        call(fs, "write", path="a.txt", text="new")
    assert not isinstance(info.value, UncertainOutcome)
    assert info.value.details["written"] is False
    monkeypatch.undo()
    assert (root / "a.txt").read_text() == "old"
    assert no_temp_files(root)
    assert fs.reconcile(tc("write", path="a.txt", text="new")).outcome is \
        ReconcileOutcome.FAILED


def test_a_rename_whose_directory_sync_fails_is_uncertain_and_reconciles(
        fs: FilesConnector, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(files_module.os, "fsync", fsync)
    with pytest.raises(UncertainOutcome, match="was written"):
        call(fs, "write", path="a.txt", text="new")
    monkeypatch.undo()
    assert fs.reconcile(tc("write", path="a.txt", text="new")).outcome is \
        ReconcileOutcome.APPLIED


@pytest.mark.parametrize(
    ("code", "error"),
    [(errno.EACCES, PermissionDenied), (errno.EROFS, PermissionDenied),
     (errno.ENOSPC, TransientError), (errno.EIO, TransientError),
     (errno.EDQUOT, TransientError)],
)
def test_filesystem_errors_have_their_class(fs: FilesConnector, root: Path,
                                            monkeypatch: pytest.MonkeyPatch, code: int,
                                            error: type[Exception]) -> None:
    """Opening the temporary file fails (tests run as root, so chmod cannot make EACCES)."""
    real_open = os.open

    def fails(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if isinstance(path, str) and path.startswith(TEMP_PREFIX):
            raise OSError(code, os.strerror(code))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(files_module.os, "open", fails)
    with pytest.raises(error) as info:
        call(fs, "write", path="a.txt", text="x")
    assert type(info.value) is error
    assert str(root) not in info.value.message  # the root is never shown to the script
    assert "'a.txt'" in info.value.message
    assert not (root / "a.txt").exists()


# -- bad params ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "params", "field"),
    [
        ("read", {}, "path"),
        ("read", {"path": 5}, "path"),
        ("read", {"path": "a", "encoding": "latin-1"}, "encoding"),
        ("read", {"path": "a", "offset": 3}, "offset"),
        ("write", {"path": "a"}, "text"),
        ("write", {"path": "a", "text": "x", "base64": "eA=="}, "text"),
        ("write", {"path": "a", "text": 5}, "text"),
        ("write", {"path": "a", "text": "lone \ud800 surrogate"}, "text"),
        ("write", {"path": "a", "base64": "not base64!"}, "base64"),
        ("write", {"path": "a", "base64": "eA==\n"}, "base64"),
        ("write", {"path": "a", "base64": 7}, "base64"),
        ("write", {"path": "a", "text": "x", "if_absent": "yes"}, "if_absent"),
        ("write", {"text": "x"}, "path"),
        ("delete", {"path": ""}, "path"),
        ("delete", {"path": "a", "recursive": True}, "recursive"),
        ("list", {"limit": 0}, "limit"),
        ("list", {"limit": 10_001}, "limit"),
        ("list", {"limit": True}, "limit"),
        ("list", {"limit": "10"}, "limit"),
        ("list", {"hash": "yes"}, "hash"),
        ("list", {"glob": ""}, "glob"),
        ("list", {"glob": "../*"}, "glob"),
        ("list", {"glob": "/etc/*"}, "glob"),
        ("list", {"glob": "a//b"}, "glob"),
        ("list", {"glob": "x" * 300}, "glob"),
        ("list", {"glob": "a\\*"}, "glob"),
        ("list", {"path": 3}, "path"),
    ],
)
def test_bad_params_are_a_permanent_error_naming_the_field(
        fs: FilesConnector, root: Path, tool: str, params: dict[str, Any], field: str) -> None:
    for check in (fs.validate, fs.call):
        with pytest.raises(PermanentError) as info:
            check(tc(tool, **params))
        assert info.value.details["field"] == field, info.value.message
        assert f"params.{field}" in info.value.message
    assert list(root.iterdir()) == []


# -- confinement -----------------------------------------------------------------------------

ESCAPES = [
    "../outside/secret.txt",
    "a/../../outside/secret.txt",
    "..",
    "a/..",
    "/etc/passwd",
    "OUTSIDE/secret.txt",  # the absolute path of the file outside
    "a\x00b",
    "secret.txt\x00.png",
    "..\\outside\\secret.txt",
    "a\\..\\..\\outside",
    "\\\\server\\share",
    "./secret.txt",
    "a//b",
    "a/",
    "a/./b",
    "\ud800",
    "x/\udcff.txt",
    "line\nbreak",
    "a" * 256,
    "a/" * 600 + "x",
    "é" * 600,
    f"{TEMP_PREFIX}deadbeef",
]


@pytest.mark.parametrize("path", ESCAPES, ids=lambda p: ascii(p)[:40])
@pytest.mark.parametrize("tool", ["read", "write", "delete", "list"])
def test_paths_that_would_leave_the_root_or_are_malformed_are_refused(
        fs: FilesConnector, root: Path, outside: Path, tool: str, path: str) -> None:
    path = path.replace("OUTSIDE", str(outside))
    (root / "a").mkdir()
    before, before_root = snapshot(outside), snapshot(root)
    params: dict[str, Any] = {"path": path}
    if tool == "write":
        params["text"] = "pwned"
    with pytest.raises(PermanentError) as info:  # PermissionDenied is one, too
        fs.validate(tc(tool, **params))
    assert info.value.details["field"] == "path"
    with pytest.raises(PermanentError):
        fs.call(tc(tool, **params))
    assert snapshot(outside) == before
    assert snapshot(root) == before_root


def test_leaving_the_root_is_a_permission_failure(fs: FilesConnector) -> None:
    for path in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(PermissionDenied):
            fs.validate(tc("read", path=path))


def _links(root: Path, outside: Path) -> list[tuple[str, str]]:
    """Symbolic links at every level of the root: (link path, what a script would ask for)."""
    (root / "a" / "b").mkdir(parents=True)
    (root / "child").symlink_to(outside)  # a child of the root
    (root / "a" / "b" / "deep").symlink_to(outside)  # a deeper directory
    (root / "a" / "rel").symlink_to("../../outside")  # relative, escaping
    (root / "a" / "b" / "file").symlink_to(outside / "secret.txt")  # the file itself
    (root / "dangling").symlink_to(outside / "new.txt")  # would create outside
    (root / "inside").symlink_to(root / "a")  # even one that stays inside
    return [("child/secret.txt", "child"), ("a/b/deep/secret.txt", "a/b/deep"),
            ("a/rel/secret.txt", "a/rel"), ("a/b/file", "a/b/file"),
            ("dangling", "dangling"), ("inside/b/x", "inside")]


@pytest.mark.parametrize("tool", ["read", "write", "delete", "list"])
def test_symbolic_links_at_every_level_are_refused(fs: FilesConnector, root: Path,
                                                   outside: Path, tool: str) -> None:
    cases = _links(root, outside)
    before, before_root = snapshot(outside), snapshot(root)
    for path, link in cases:
        params: dict[str, Any] = {"path": path}
        if tool == "write":
            params["text"] = "pwned"
        if tool == "list":
            params = {"path": link}
            if link in ("a/b/file", "dangling"):
                continue  # not directories: refused as links by read/write/delete
        with pytest.raises(PermissionDenied, match=f"'{link}' is a symbolic link"):
            fs.call(tc(tool, **params))
    for path, _ in cases:  # writing *below* a link never creates anything either
        with pytest.raises(PermissionDenied):
            fs.call(tc("write", path=f"{path}/new/deeper.txt", text="pwned"))
    assert snapshot(outside) == before
    assert snapshot(root) == before_root
    assert not (outside / "new.txt").exists()


def test_list_never_descends_into_a_linked_directory(fs: FilesConnector, root: Path,
                                                     outside: Path) -> None:
    _links(root, outside)
    out = call(fs, "list", glob="**", hash=True)
    assert [e["path"] for e in out["entries"]] == ["a", "a/b"]
    assert out["skipped"] == 6


def test_a_directory_swapped_for_a_link_during_the_walk_gains_nothing(
        fs: FilesConnector, root: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TOCTOU: right after the walk opened ``a``, ``a`` is renamed and a link to the outside
    is put in its place. The rest of the walk continues from the descriptor it holds."""
    (root / "a" / "b").mkdir(parents=True)
    real_open = os.open
    swapped: list[bool] = []

    def racing_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, flags, *args, **kwargs)
        if path == "a" and not swapped:
            swapped.append(True)
            (root / "a").rename(root / "a-real")
            (root / "a").symlink_to(outside)
        return fd

    monkeypatch.setattr(files_module.os, "open", racing_open)
    call(fs, "write", path="a/b/secret.txt", text="pwned")
    monkeypatch.undo()
    assert swapped
    assert (outside / "secret.txt").read_bytes() == SECRET
    assert not (outside / "b").exists()
    assert (root / "a-real" / "b" / "secret.txt").read_text() == "pwned"


def test_a_file_swapped_after_its_check_is_not_read(fs: FilesConnector, root: Path,
                                                    outside: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """TOCTOU on the last component: replaced by a link between lstat and open."""
    (root / "x.txt").write_text("harmless")
    real_open = os.open

    def racing_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == "x.txt":
            (root / "x.txt").unlink()
            (root / "x.txt").symlink_to(outside / "secret.txt")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(files_module.os, "open", racing_open)
    with pytest.raises(PermissionDenied, match="symbolic link"):
        call(fs, "read", path="x.txt")


def _special_files(root: Path) -> list[str]:
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(root / "sock"))
    sock.close()
    names = ["fifo", "sock"]
    try:
        os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        names.append("null")
    except (PermissionError, OSError):
        pass  # no CAP_MKNOD here: FIFOs and sockets stand for every special file
    return names


@pytest.mark.parametrize("tool", ["read", "write", "delete"])
def test_special_files_are_refused(fs: FilesConnector, root: Path, tool: str) -> None:
    names = _special_files(root)
    before = snapshot(root)
    for name in names:
        params: dict[str, Any] = {"path": name}
        if tool == "write":
            params["text"] = "x"
        t0 = time.perf_counter()
        with pytest.raises(PermissionDenied, match="not a regular file"):
            fs.call(tc(tool, **params))
        assert time.perf_counter() - t0 < 2.0  # a FIFO never blocks the call
    assert snapshot(root) == before
    with pytest.raises(PreconditionError, match="'fifo' is not a directory"):
        call(fs, "write", path="fifo/x", text="x")


def test_hard_links_are_written_around_never_through(fs: FilesConnector, root: Path,
                                                     outside: Path) -> None:
    """A hard link into the root (made by someone with access to both): write replaces the
    name, never the outside file's bytes; delete removes the name only."""
    os.link(outside / "secret.txt", root / "hard.txt")
    call(fs, "write", path="hard.txt", text="replaced")
    assert (outside / "secret.txt").read_bytes() == SECRET
    os.link(outside / "secret.txt", root / "hard2.txt")
    call(fs, "delete", path="hard2.txt")
    assert (outside / "secret.txt").read_bytes() == SECRET


# -- end to end: a workflow writes one file per event --------------------------------------

FILE_PER_EVENT = """await ctx.files.write({
      path: "events/" + prepared.data.event.messageId + ".json",
      text: JSON.stringify(prepared.data.event.payload),
      if_absent: true });"""
NEXT = "return { last: mutation.result.path, created: mutation.result.created };"


@pytest.fixture
def files_host(store_url: str, tmp_path: Path, pool: SandboxPool, clock: FakeClock
               ) -> Iterator[tuple[Host, Path]]:
    """A host whose connections come from its connections.toml, with a files connection."""
    out = tmp_path / "out"
    out.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    (home / "connections.toml").write_text(textwrap.dedent(f"""
        [connections.files]
        type = "files"
        root = "{out}"
        max_bytes = 65536
        """), encoding="utf-8")
    h = Host(Settings(home=home, database_url=store_url), clock=clock, pool=pool,
             policies=PolicyBook(quick_policy()))
    yield h, out
    h.close()


def _deploy(host: Host, tmp_path: Path, ids: list[str]) -> None:
    deploy_source(host, tmp_path, workflow_js(
        producers=seed_producer(ids), consumers=consumer_js(mutate=FILE_PER_EVENT, next_=NEXT)))
    service.trigger(host, "wf", "seed")


def test_a_workflow_writes_one_file_per_event_exactly_once(
        files_host: tuple[Host, Path], tmp_path: Path) -> None:
    host, out = files_host
    _deploy(host, tmp_path, ["a", "b", "c"])
    report = service.drain(host)
    assert [r.status for r in report.runs] == [RunStatus.COMMITTED] * 3
    assert sorted(p.name for p in (out / "events").iterdir()) == ["a.json", "b.json",
                                                                  "c.json"]
    for i in "abc":
        assert (out / "events" / f"{i}.json").read_text() == f'{{"id":"{i}"}}'
    written = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
               for p in (out / "events").iterdir()}
    ledger = service.ledger(host, "wf")["mutations"]
    assert sorted((m["status"], m["description"]) for m in ledger) == [
        ("applied", f"write files:events/{i}.json") for i in "abc"]
    assert all(m["resolvedBy"] == "host" for m in ledger)

    again = service.drain(host)  # nothing is pending: nothing is written twice
    assert again.runs == []
    assert again.blocked == {}
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in (out / "events").iterdir()} == written
    assert len(service.ledger(host, "wf")["mutations"]) == 3
    assert no_temp_files(out)


def test_a_dropped_write_is_reconciled_by_the_host(
        files_host: tuple[Host, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first write happens and its answer is lost (applied → reconcile says APPLIED);
    the second is lost before it happens (reconcile says FAILED → mutate runs again)."""
    host, out = files_host
    _deploy(host, tmp_path, ["a", "b"])
    real_call = FilesConnector.call
    plan: list[Callable[[FilesConnector, ToolCall], Any]] = []

    def apply_then_drop(self: FilesConnector, c: ToolCall) -> Any:
        real_call(self, c)
        raise UncertainOutcome("the answer was lost")

    def drop_before(self: FilesConnector, c: ToolCall) -> Any:
        raise UncertainOutcome("lost before it was performed")

    plan.extend([apply_then_drop, drop_before])

    def flaky(self: FilesConnector, c: ToolCall) -> Any:
        return plan.pop(0)(self, c) if plan else real_call(self, c)

    monkeypatch.setattr(FilesConnector, "call", flaky)
    first = service.trigger(host, "wf", "work")
    assert first.status is RunStatus.COMMITTED
    [m] = run_detail(host, first.run_id)["mutations"]
    assert (m["status"], m["resolvedBy"], m["reconcileAttempts"]) == ("applied",
                                                                      "reconcile", 1)
    second = service.trigger(host, "wf", "work")
    assert second.status is RunStatus.COMMITTED
    muts = run_detail(host, second.run_id)["mutations"]
    assert [(x["status"], x["resolvedBy"]) for x in muts] == [("failed", "reconcile"),
                                                             ("applied", "host")]
    assert sorted(p.name for p in (out / "events").iterdir()) == ["a.json", "b.json"]
    assert (out / "events" / "b.json").read_text() == '{"id":"b"}'
    assert service.drain(host).runs == []
