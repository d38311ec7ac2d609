"""The ``files`` connector: files in one directory tree of the host (SPEC §9).

Tools: ``list`` (read), ``read`` (read by id), and the mutations ``write`` and ``delete``.
Every path a script gives is relative to the connection's ``root`` and stays inside it:

* lexically: no absolute path, no ``..`` or empty component, no NUL or other control
  character, no backslash, valid Unicode (no lone surrogate), at most 1,024 bytes and 64
  components, each at most 255 bytes;
* on the filesystem: a path is never resolved by the kernel in one go. The root is opened
  once per call and every component below it is opened relative to the directory before it
  (``openat`` with ``O_NOFOLLOW``), so a symbolic link anywhere below the root — a child of
  the root, a deeper directory, the file itself — is refused, and swapping a directory for a
  link while a call runs gains nothing: the call holds the directories it already opened.
  Only regular files are read, written or deleted; FIFOs, sockets and devices are refused
  before they are opened (and checked again on the opened descriptor).

``write`` is atomic: the bytes go to a temporary file in the target's directory, are
fsynced, and the temporary file is renamed over the target (``if_absent``: hard-linked to it,
which fails when the target exists); the directory is fsynced last. A rename replaces a
symbolic link at the target instead of following it; the connector refuses one anyway.

Reconcile (docs/connectors.md#files): a ``write`` took effect when the path holds a regular
file whose SHA-256 is that of the bytes the call writes; a ``delete`` when the path is absent.

Settings: ``root`` (required; an existing absolute directory, resolved once when the
connection is created), ``max_bytes`` (the largest file ``read`` returns and ``write``
accepts, default 4 MiB), ``create_dirs`` (``write`` creates missing parent directories,
default true).
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from keepflow.connectors.base import (
    ConnectionConfig,
    Connector,
    ReconcileOutcome,
    ReconcileResult,
    RiskTier,
    ToolCall,
    ToolKind,
    ToolSpec,
)
from keepflow.connectors.registry import register_connector
from keepflow.connectors.secret import Secret, reveal
from keepflow.connectors.setting_checks import reject_unknown
from keepflow.errors import (
    ConfigError,
    ConnectorError,
    PermanentError,
    PermissionDenied,
    PreconditionError,
    TransientError,
    UncertainOutcome,
)

log = logging.getLogger("keepflow.connectors.files")

MiB = 1024 * 1024
DEFAULT_MAX_BYTES = 4 * MiB
MIN_MAX_BYTES = 1024
MAX_MAX_BYTES = 64 * MiB
MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255
MAX_COMPONENTS = 64
MAX_GLOB_CHARS = 256
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
#: Directory entries one ``list`` looks at, at most (then ``truncated``).
MAX_SCAN = 100_000
#: ``list`` with ``hash`` reads at most this many times ``max_bytes`` (then ``truncated``).
HASH_BUDGET = 8
#: Names of the temporary files of ``write``: reserved, and never listed.
TEMP_PREFIX = ".kf-tmp-"
_CHUNK = 1024 * 1024

_SETTINGS = frozenset({"root", "max_bytes", "create_dirs"})
_PARAMS: Mapping[str, frozenset[str]] = {
    "list": frozenset({"path", "glob", "limit", "hash"}),
    "read": frozenset({"path", "encoding"}),
    "write": frozenset({"path", "text", "base64", "if_absent"}),
    "delete": frozenset({"path"}),
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# POSIX only: on a platform without these the connection is refused when it is configured.
_O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
_O_NOCTTY: int = getattr(os, "O_NOCTTY", 0)
_DIR_FLAGS = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
#: Opening a FIFO that slipped past the lstat check must not block; a tty must not become ours.
_READ_FLAGS = os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_NOCTTY | _O_CLOEXEC
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_NOCTTY | _O_CLOEXEC
_SUPPORTED = bool(_O_NOFOLLOW and _O_DIRECTORY) and os.open in os.supports_dir_fd and \
    os.stat in os.supports_dir_fd and os.scandir in os.supports_fd

#: errno -> the class of a failure (anything else is transient: the filesystem may recover).
_PERMISSION = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_ABSENT = frozenset({errno.ENOENT})
_NOT_DIR = frozenset({errno.ENOTDIR})
_LINK_UNSUPPORTED = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK,
                               errno.EXDEV, errno.ENOSYS})

_LIST_RESULT = ("{entries: [{path, type: \"file\"|\"dir\", size, modified, sha256?}], "
                "truncated, skipped?}")


def _mutation(name: str, capability: str, risk: RiskTier, description: str, params: str,
              result: str, strategy: str) -> ToolSpec:
    return ToolSpec(name, ToolKind.MUTATE, capability, risk, description, ("path",),
                    reconcile=True, reconcile_doc="docs/connectors.md#files",
                    params=params, result=result, reconcile_strategy=strategy)


@dataclass(frozen=True)
class _Params:
    """A call's checked params."""

    tool: str
    path: str
    parts: tuple[str, ...]
    glob: _Glob | None = None
    limit: int = DEFAULT_LIMIT
    hash: bool = False
    encoding: str = "utf-8"
    data: bytes = b""
    data_field: str = "text"
    if_absent: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class _Found:
    """What is at a path (``lstat``, never followed)."""

    st: os.stat_result

    @property
    def kind(self) -> str:
        mode = self.st.st_mode
        if stat.S_ISREG(mode):
            return "file"
        if stat.S_ISDIR(mode):
            return "dir"
        if stat.S_ISLNK(mode):
            return "symlink"
        return "special"


class FilesConnector(Connector):
    """Type ``files``. See the module docstring and ``docs/connectors.md#files``."""

    type_name: ClassVar[str] = "files"
    tools: ClassVar[Mapping[str, ToolSpec]] = {
        "list": ToolSpec(
            "list", ToolKind.READ, "files.read", RiskTier.LOW,
            "List files and directories under a directory, optionally by glob", ("path",),
            params="{path?, glob?, limit?, hash?}", result=_LIST_RESULT),
        "read": ToolSpec(
            "read", ToolKind.READ_BY_ID, "files.read", RiskTier.LOW,
            "Read one file as UTF-8 text or base64", ("path",),
            params="{path, encoding?: \"utf-8\"|\"base64\"}",
            result="{path, text | base64, size, sha256, modified}"),
        "write": _mutation(
            "write", "files.write", RiskTier.MEDIUM,
            "Write one file atomically (temporary file, fsync, rename)",
            "{path, text | base64, if_absent?}", "{path, size, sha256, created}",
            "hash the file at the path: a regular file with the SHA-256 of the bytes this "
            "call writes = applied; absent or other content = failed (the write runs again: "
            "same bytes, idempotent)"),
        "delete": _mutation(
            "delete", "files.delete", RiskTier.HIGH, "Delete one file",
            "{path}", "{path, deleted: true}",
            "look at the path: absent = applied; anything there = failed"),
    }

    def __init__(self, config: ConnectionConfig) -> None:
        super().__init__(config)
        self.validate_settings(config.settings)
        s = config.settings
        self._root = os.path.realpath(str(reveal(s["root"])))
        self._max_bytes = int(s.get("max_bytes", DEFAULT_MAX_BYTES))
        self._create_dirs = bool(s.get("create_dirs", True))

    def __repr__(self) -> str:
        return f"FilesConnector(name={self.name!r})"

    # -- settings ----------------------------------------------------------------------------

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        reject_unknown("files", settings, _SETTINGS)
        if not _SUPPORTED:
            raise ConfigError("the files connector needs a POSIX system (openat, O_NOFOLLOW)",
                              key="root")
        raw = settings.get("root")
        key = "root_env" if isinstance(raw, Secret) else "root"
        root = reveal(raw)
        if not isinstance(root, str) or not root:
            raise ConfigError("is required: an existing absolute directory", key="root")
        if "\x00" in root or not os.path.isabs(root):
            raise ConfigError("must be an absolute directory path", key=key)
        real = os.path.realpath(root)
        if not os.path.isdir(real):
            raise ConfigError("must be an existing directory", key=key)
        if real == os.path.realpath("/"):
            raise ConfigError("must not be the filesystem root: choose the directory "
                              "workflows may use", key=key)
        size = settings.get("max_bytes", DEFAULT_MAX_BYTES)
        if isinstance(size, bool) or not isinstance(size, int) or not (
                MIN_MAX_BYTES <= size <= MAX_MAX_BYTES):
            raise ConfigError(f"must be an integer between {MIN_MAX_BYTES} and {MAX_MAX_BYTES} "
                              "(bytes of one file; see docs/connectors.md#files)",
                              key="max_bytes")
        if not isinstance(settings.get("create_dirs", True), bool):
            raise ConfigError("must be true or false", key="create_dirs")

    # -- declarations ------------------------------------------------------------------------

    def describe(self, call: ToolCall) -> str:
        raw = call.params.get("path", "") if isinstance(call.params, Mapping) else ""
        try:
            self._parse_path(call.tool, raw, allow_empty=call.tool == "list")
        except PermanentError:
            return f"{call.tool} {self.name}: (invalid path)"
        return f"{call.tool} {self.name}:{raw or '.'}"

    def validate(self, call: ToolCall) -> None:
        self._parse(call)

    # -- effects -----------------------------------------------------------------------------

    def call(self, call: ToolCall) -> Any:
        p = self._parse(call)
        if p.tool == "list":
            return self._list(p, time.monotonic() + max(call.timeout, 0.0))
        if p.tool == "read":
            return self._read(p)
        if p.tool == "write":
            return self._write(p)
        return self._delete(p)

    def reconcile(self, call: ToolCall) -> ReconcileResult:
        """Look at the path (strategies: docs/connectors.md#files); never raises for the
        filesystem's failures (they answer ``RETRY``)."""
        try:
            p = self._parse(call)
            if p.tool not in ("write", "delete"):
                raise PermanentError(f"{self.name}.{call.tool} does not mutate")
            found, digest = self._probe(p, hash_it=p.tool == "write")
        except ConnectorError as exc:
            return ReconcileResult(ReconcileOutcome.RETRY, detail=exc.message)
        shown = _shown(p.path)
        if p.tool == "delete":
            if found is None:
                return ReconcileResult(ReconcileOutcome.APPLIED, {"path": p.path,
                                                                  "deleted": True},
                                       f"'{shown}' is absent")
            return ReconcileResult(ReconcileOutcome.FAILED, None,
                                   f"'{shown}' is still there ({found.kind})")
        if found is None:
            return ReconcileResult(ReconcileOutcome.FAILED, None, f"'{shown}' is absent")
        if found.kind != "file":
            return ReconcileResult(ReconcileOutcome.FAILED, None,
                                   f"'{shown}' is a {found.kind}, not a regular file")
        if digest != p.sha256:
            return ReconcileResult(ReconcileOutcome.FAILED, None,
                                   f"'{shown}' holds other content than this write's")
        # ``created`` cannot be known afterwards: null says so.
        return ReconcileResult(ReconcileOutcome.APPLIED,
                               {"path": p.path, "size": len(p.data), "sha256": p.sha256,
                                "created": None},
                               f"'{shown}' holds the bytes this write writes")

    def check(self) -> None:
        fd = self._open_root("check")
        os.close(fd)

    # -- params ------------------------------------------------------------------------------

    def _parse(self, call: ToolCall) -> _Params:
        self.tool(call.tool)
        tool = call.tool
        p = call.params
        if not isinstance(p, Mapping):
            raise PermanentError(f"{self.name}.{tool}: params must be an object")
        known = _PARAMS[tool]
        unknown = sorted(str(k) for k in set(p) - known)
        if unknown:
            raise self._bad(tool, unknown[0], f"unknown parameter; {tool} takes "
                                              f"{sorted(known)}")
        if tool == "list":
            parts = self._parse_path(tool, _given(p, "path", ""), allow_empty=True)
            raw = "/".join(parts)
            glob = _Glob.parse(self, tool, p["glob"]) if p.get("glob") is not None else None
            limit = _given(p, "limit", DEFAULT_LIMIT)
            if isinstance(limit, float) and limit.is_integer():
                limit = int(limit)
            if isinstance(limit, bool) or not isinstance(limit, int) or not (
                    1 <= limit <= MAX_LIMIT):
                raise self._bad(tool, "limit", f"must be an integer from 1 to {MAX_LIMIT}")
            return _Params(tool, raw, parts, glob=glob, limit=limit,
                           hash=self._flag(tool, p, "hash"))
        parts = self._parse_path(tool, p.get("path"))
        raw = "/".join(parts)
        if tool == "read":
            encoding = _given(p, "encoding", "utf-8")
            if encoding not in ("utf-8", "base64"):
                raise self._bad(tool, "encoding", 'must be "utf-8" or "base64"')
            return _Params(tool, raw, parts, encoding=encoding)
        if tool == "delete":
            return _Params(tool, raw, parts)
        data, field = self._content(tool, p)
        return _Params(tool, raw, parts, data=data, data_field=field,
                       if_absent=self._flag(tool, p, "if_absent"))

    def _flag(self, tool: str, p: Mapping[str, Any], name: str) -> bool:
        value = _given(p, name, False)
        if not isinstance(value, bool):
            raise self._bad(tool, name, "must be true or false")
        return value

    def _content(self, tool: str, p: Mapping[str, Any]) -> tuple[bytes, str]:
        has_text, has_b64 = p.get("text") is not None, p.get("base64") is not None
        if has_text == has_b64:
            raise self._bad(tool, "text", "give exactly one of text (a string) or base64")
        if has_text:
            text = p["text"]
            if not isinstance(text, str):
                raise self._bad(tool, "text", "must be a string (use base64 for bytes)")
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError:
                raise self._bad(tool, "text", "is not valid Unicode (it holds a lone UTF-16 "
                                              "surrogate)") from None
            field = "text"
        else:
            encoded = p["base64"]
            if not isinstance(encoded, str):
                raise self._bad(tool, "base64", "must be a base64 string")
            # A cheap bound before decoding: base64 is 4 characters per 3 bytes.
            if len(encoded) > (self._max_bytes + 2) // 3 * 4 + 4:
                raise self._too_large(tool, "base64", None)
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise self._bad(tool, "base64", "is not valid base64 (RFC 4648, with "
                                                "padding, no line breaks)") from None
            field = "base64"
        if len(data) > self._max_bytes:
            raise self._too_large(tool, field, len(data))
        return data, field

    def _parse_path(self, tool: str, raw: Any, *, allow_empty: bool = False
                    ) -> tuple[str, ...]:
        """The path's components, or ``PermanentError`` (``PermissionDenied`` for a path that
        would leave the root) naming ``path``."""
        if not isinstance(raw, str):
            raise self._bad(tool, "path", "is required and must be a string (a path relative "
                                          "to the connection's root)")
        if raw == "":
            if allow_empty:
                return ()
            raise self._bad(tool, "path", "is required (a path relative to the connection's "
                                          "root)")
        try:
            size = len(raw.encode("utf-8"))
        except UnicodeEncodeError:
            raise self._bad(tool, "path", "is not valid Unicode (it holds a lone UTF-16 "
                                          "surrogate)") from None
        if "\x00" in raw:
            raise self._bad(tool, "path", "must not contain NUL")
        if _CONTROL.search(raw):
            raise self._bad(tool, "path", "must not contain control characters")
        if "\\" in raw:
            raise self._bad(tool, "path", "must not contain a backslash; directories are "
                                          "separated by '/'")
        if size > MAX_PATH_BYTES:
            raise self._bad(tool, "path", f"is longer than {MAX_PATH_BYTES} bytes")
        if raw.startswith("/"):
            raise self._refused(tool, "path", "must be relative to the connection's root, "
                                              "not absolute")
        parts = tuple(raw.split("/"))
        if ".." in parts:
            raise self._refused(tool, "path", "must not contain '..': paths stay inside the "
                                              "connection's root")
        if any(part in ("", ".") for part in parts):
            raise self._bad(tool, "path", "has an empty or '.' component: write 'a/b', not "
                                          "'a//b', './a' or 'a/'")
        if len(parts) > MAX_COMPONENTS:
            raise self._bad(tool, "path", f"has more than {MAX_COMPONENTS} components")
        if any(len(part.encode("utf-8")) > MAX_NAME_BYTES for part in parts):
            raise self._bad(tool, "path", f"has a name longer than {MAX_NAME_BYTES} bytes")
        if parts[-1].startswith(TEMP_PREFIX):
            raise self._bad(tool, "path", f"names starting with {TEMP_PREFIX!r} are reserved "
                                          "for the temporary files of write")
        return parts

    # -- tools -------------------------------------------------------------------------------

    def _list(self, p: _Params, deadline: float) -> dict[str, Any]:
        tool, glob = p.tool, p.glob
        shown = _shown(p.path or ".")
        found: list[tuple[tuple[str, ...], str, os.stat_result]] = []
        skipped = 0
        truncated = False
        scanned = 0
        with ExitStack() as stack:
            try:
                base = stack.enter_context(self._directory(tool, p.parts, create=False))
            except _Absent:
                raise PreconditionError(f"{self.name}.{tool}: there is no directory '{shown}'",
                                        path=shown) from None
            pending: list[tuple[str, ...]] = [()]
            while pending:
                rel = pending.pop()
                try:
                    fd = self._descend(tool, base, rel, create=False, prefix=p.parts)
                except (ConnectorError, _Absent):
                    if not rel:
                        raise
                    skipped += 1  # a directory that changed while we looked: not listed
                    continue
                try:
                    with os.scandir(fd) as it:
                        for entry in it:
                            scanned += 1
                            if scanned > MAX_SCAN or time.monotonic() > deadline:
                                truncated = True
                                break
                            name = entry.name
                            if name.startswith(TEMP_PREFIX):
                                continue
                            if not _listable(name):
                                skipped += 1
                                continue
                            try:
                                st = entry.stat(follow_symlinks=False)
                            except OSError:
                                continue  # gone since it was listed
                            path = (*rel, name)
                            kind = _Found(st).kind
                            if kind not in ("file", "dir"):
                                skipped += 1  # symbolic links and special files
                                continue
                            if glob is None or glob.matches(path):
                                found.append((path, kind, st))
                            if kind == "dir" and glob is not None and glob.descend(path):
                                pending.append(path)
                except OSError as exc:
                    raise self._os_error(tool, shown, exc) from None
                finally:
                    os.close(fd)
                if truncated:
                    break
            found.sort(key=lambda f: "/".join(f[0]))
            if len(found) > p.limit:
                found, truncated = found[:p.limit], True
            entries = []
            budget = HASH_BUDGET * self._max_bytes
            for rel, kind, st in found:
                item: dict[str, Any] = {
                    "path": "/".join((*p.parts, *rel)), "type": kind,
                    "size": st.st_size if kind == "file" else 0, "modified": _iso(st.st_mtime),
                }
                if p.hash and kind == "file":
                    if st.st_size > self._max_bytes:
                        item["sha256"] = None
                    else:
                        budget -= st.st_size
                        if budget < 0 or time.monotonic() > deadline:
                            truncated = True
                            break
                        item["sha256"] = self._hash_in(tool, base, p.parts, rel)
                entries.append(item)
        out: dict[str, Any] = {"entries": entries, "truncated": truncated}
        if skipped:
            out["skipped"] = skipped
        return out

    def _hash_in(self, tool: str, base: int, prefix: tuple[str, ...], rel: tuple[str, ...]
                 ) -> str | None:
        """The SHA-256 of a listed file, or None when it changed or cannot be read."""
        try:
            with self._directory_from(tool, base, rel[:-1], prefix=prefix) as dfd:
                data = self._read_file(tool, dfd, rel[-1], _shown("/".join((*prefix, *rel))))
        except (ConnectorError, _Absent):
            return None
        return hashlib.sha256(data[0]).hexdigest()

    def _read(self, p: _Params) -> dict[str, Any]:
        tool, shown = p.tool, _shown(p.path)
        with self._parent(p, create=False) as dfd:
            data, st = self._read_file(tool, dfd, p.parts[-1], shown)
        out: dict[str, Any] = {"path": p.path}
        if p.encoding == "base64":
            out["base64"] = base64.b64encode(data).decode("ascii")
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self._bad(tool, "encoding", f"'{shown}' is not UTF-8 text (byte "
                                                  f"{exc.start}); read it with encoding "
                                                  '"base64"') from None
            if "\x00" in text:
                raise self._bad(tool, "encoding", f"'{shown}' holds NUL characters, which text "
                                                  'cannot carry; read it with encoding '
                                                  '"base64"')
            out["text"] = text
        out.update(size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                   modified=_iso(st.st_mtime))
        return out

    def _read_file(self, tool: str, dfd: int, name: str, shown: str
                   ) -> tuple[bytes, os.stat_result]:
        """The bytes of the regular file ``name`` in ``dfd`` (at most ``max_bytes``)."""
        found = self._lstat(tool, dfd, name, shown)
        if found is None:
            raise PreconditionError(f"{self.name}.{tool}: there is no file '{shown}'",
                                    path=shown)
        self._refuse_kind(tool, found, shown, reading=True)
        if found.st.st_size > self._max_bytes:
            raise self._too_large(tool, "path", found.st.st_size, shown)
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
        except OSError as exc:
            raise self._os_error(tool, shown, exc) from None
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (found.st.st_dev, found.st.st_ino) or \
                    not stat.S_ISREG(st.st_mode):
                raise TransientError(f"{self.name}.{tool}: '{shown}' was replaced while it "
                                     "was opened; try again", path=shown)
            chunks: list[bytes] = []
            total = 0
            while True:
                chunk = os.read(fd, min(_CHUNK, self._max_bytes + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > self._max_bytes:
                    raise self._too_large(tool, "path", None, shown)
        except OSError as exc:
            raise self._os_error(tool, shown, exc) from None
        finally:
            os.close(fd)
        return b"".join(chunks), st

    def _write(self, p: _Params) -> dict[str, Any]:
        tool, shown, name = p.tool, _shown(p.path), p.parts[-1]
        result = {"path": p.path, "size": len(p.data), "sha256": p.sha256}
        with self._parent(p, create=self._create_dirs) as dfd:
            before = self._lstat(tool, dfd, name, shown)
            if before is not None:
                self._refuse_kind(tool, before, shown, reading=False)
                if p.if_absent:
                    return result | self._existing(p, dfd, shown)
            tmp = self._temp(tool, dfd, p.data, before, shown)
            try:
                if p.if_absent:
                    if not self._link(tool, dfd, tmp, name, p.data, shown):
                        return result | self._existing(p, dfd, shown)
                else:
                    try:
                        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                    except OSError as exc:  # a rename happens entirely or not at all
                        raise self._os_error(tool, shown, exc, written=False) from None
                    tmp = ""
            finally:
                if tmp:
                    self._unlink_quietly(dfd, tmp)
            self._sync_dir(tool, dfd, shown, "written")
        return result | {"created": before is None}

    def _existing(self, p: _Params, dfd: int, shown: str) -> dict[str, Any]:
        """``if_absent`` and the file is there: the same bytes are this write having happened
        already (``created: false``); other bytes are a conflict."""
        try:
            data, _ = self._read_file(p.tool, dfd, p.parts[-1], shown)
        except PermanentError:
            data = None  # too large for max_bytes, or not a file: not ours
        if data is not None and hashlib.sha256(data).hexdigest() == p.sha256:
            return {"created": False}
        raise PermanentError(f"{self.name}.{p.tool}: '{shown}' already exists with other "
                             "content (if_absent: nothing was written)", path=shown,
                             conflict=True, written=False)

    def _temp(self, tool: str, dfd: int, data: bytes, before: _Found | None,
              shown: str) -> str:
        """A fsynced temporary file holding ``data`` in ``dfd``; its name."""
        for _ in range(16):
            tmp = TEMP_PREFIX + secrets.token_hex(8)
            try:
                fd = os.open(tmp, _NEW_FLAGS, 0o666, dir_fd=dfd)
            except FileExistsError:
                continue
            except OSError as exc:
                raise self._os_error(tool, shown, exc, written=False) from None
            break
        else:
            raise TransientError(f"{self.name}.{tool}: no free temporary name next to '{shown}'",
                                 path=shown, written=False)
        try:
            try:
                if before is not None:  # keep the permissions of the file it replaces
                    os.fchmod(fd, stat.S_IMODE(before.st.st_mode) & 0o777)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)  # on NFS, close reports write errors too
        except OSError as exc:
            self._unlink_quietly(dfd, tmp)
            raise self._os_error(tool, shown, exc, written=False) from None
        except BaseException:
            self._unlink_quietly(dfd, tmp)
            raise
        return tmp

    def _link(self, tool: str, dfd: int, tmp: str, name: str, data: bytes, shown: str
              ) -> bool:
        """Put ``tmp`` at ``name`` only if nothing is there; False when something is."""
        try:
            os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _LINK_UNSUPPORTED:
                raise self._os_error(tool, shown, exc, written=False) from None
        # No hard links here (FAT, some network filesystems): create the target exclusively
        # and write it in place — never clobbers, but a reader may see it half-written.
        try:
            fd = os.open(name, _NEW_FLAGS, 0o666, dir_fd=dfd)
        except FileExistsError:
            return False
        except OSError as exc:
            raise self._os_error(tool, shown, exc, written=False) from None
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self._unlink_quietly(dfd, name)  # ours, created exclusively above
            raise self._os_error(tool, shown, exc, written=False) from None
        return True

    def _delete(self, p: _Params) -> dict[str, Any]:
        tool, shown, name = p.tool, _shown(p.path), p.parts[-1]
        with self._parent(p, create=False) as dfd:
            found = self._lstat(tool, dfd, name, shown)
            if found is None:
                raise PreconditionError(f"{self.name}.{tool}: there is no file '{shown}'",
                                        path=shown, deleted=False)
            self._refuse_kind(tool, found, shown, reading=False)
            try:  # unlink never follows a link: a swap since lstat removes the swapped name
                os.unlink(name, dir_fd=dfd)
            except OSError as exc:
                raise self._os_error(tool, shown, exc, deleted=False) from None
            self._sync_dir(tool, dfd, shown, "deleted")
        return {"path": p.path, "deleted": True}

    def _probe(self, p: _Params, *, hash_it: bool) -> tuple[_Found | None, str | None]:
        """What is at the path now, and its SHA-256 when it is a file (and ``hash_it``).
        A root that cannot be opened raises (reconcile answers RETRY: the file may be in a
        root that moved); a directory on the way that is absent, or a file, means nothing
        is at the path."""
        shown = _shown(p.path)
        root = self._open_root(p.tool)
        try:
            try:
                dfd = self._descend(p.tool, root, p.parts[:-1], create=False)
            except (_Absent, PreconditionError):
                return None, None
            try:
                found = self._lstat(p.tool, dfd, p.parts[-1], shown)
                if found is None or found.kind != "file" or not hash_it:
                    return found, None
                if found.st.st_size != len(p.data):
                    return found, "(other size)"
                try:
                    data, _ = self._read_file(p.tool, dfd, p.parts[-1], shown)
                except PreconditionError:
                    return None, None  # removed since the lstat
                return found, hashlib.sha256(data).hexdigest()
            finally:
                os.close(dfd)
        finally:
            os.close(root)

    # -- the confined walk -------------------------------------------------------------------

    def _open_root(self, tool: str) -> int:
        try:
            return os.open(self._root, _DIR_FLAGS)
        except OSError as exc:
            what = f"{self.name}.{tool}: the root directory of connection '{self.name}'"
            if exc.errno in _ABSENT:
                raise PreconditionError(f"{what} does not exist (any more)") from None
            if exc.errno in _PERMISSION:
                raise PermissionDenied(f"{what} cannot be opened: {exc.strerror}") from None
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise PermissionDenied(f"{what} is no longer a directory") from None
            raise TransientError(f"{what} cannot be opened: {exc.strerror}") from None

    @contextmanager
    def _parent(self, p: _Params, *, create: bool) -> Iterator[int]:
        """The directory holding ``p``'s file, opened by the confined walk."""
        shown = _shown(p.path)
        with ExitStack() as stack:
            try:
                dfd = stack.enter_context(self._directory(p.tool, p.parts[:-1], create=create))
            except _Absent:
                raise PreconditionError(
                    f"{self.name}.{p.tool}: there is no file '{shown}' (a directory on its "
                    "path does not exist)", path=shown) from None
            yield dfd

    @contextmanager
    def _directory(self, tool: str, parts: tuple[str, ...], *, create: bool
                   ) -> Iterator[int]:
        root = self._open_root(tool)
        try:
            with self._directory_from(tool, root, parts, create=create) as fd:
                yield fd
        finally:
            os.close(root)

    @contextmanager
    def _directory_from(self, tool: str, start: int, parts: tuple[str, ...], *,
                        create: bool = False, prefix: tuple[str, ...] = ()
                        ) -> Iterator[int]:
        fd = self._descend(tool, start, parts, create=create, prefix=prefix)
        try:
            yield fd
        finally:
            os.close(fd)

    def _descend(self, tool: str, start: int, parts: tuple[str, ...], *, create: bool,
                 prefix: tuple[str, ...] = ()) -> int:
        """A new descriptor of ``start/parts…``: one ``openat(O_NOFOLLOW)`` per component,
        so no symbolic link is ever followed. Raises :class:`_Absent` for a missing
        directory when not ``create``. ``prefix``: where ``start`` is, for messages."""
        fd = os.dup(start)
        try:
            for i, name in enumerate(parts):
                nxt = self._child_dir(tool, fd, name, create=create,
                                      shown=_shown("/".join((*prefix, *parts[:i + 1]))))
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _child_dir(self, tool: str, fd: int, name: str, *, create: bool, shown: str) -> int:
        for _ in range(3):
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise _Absent(shown) from None
                try:
                    os.mkdir(name, 0o777, dir_fd=fd)
                except FileExistsError:
                    continue  # made meanwhile (or a link was put there: the open refuses it)
                except OSError as exc:
                    raise self._os_error(tool, shown, exc, written=False) from None
                with suppress(OSError):
                    os.fsync(fd)  # the new directory survives a crash with the file
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    found = self._lstat(tool, fd, name, shown)
                    if found is not None and found.kind == "symlink":
                        raise self._symlink(tool, shown) from None
                    if found is not None and found.kind != "dir":
                        raise PreconditionError(f"{self.name}.{tool}: '{shown}' is not a "
                                                "directory", path=shown) from None
                raise self._os_error(tool, shown, exc) from None
        raise TransientError(f"{self.name}.{tool}: '{shown}' keeps changing; try again",
                             path=shown)

    def _lstat(self, tool: str, dfd: int, name: str, shown: str) -> _Found | None:
        try:
            return _Found(os.stat(name, dir_fd=dfd, follow_symlinks=False))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._os_error(tool, shown, exc) from None

    def _refuse_kind(self, tool: str, found: _Found, shown: str, *, reading: bool) -> None:
        kind = found.kind
        if kind == "file":
            return
        if kind == "symlink":
            raise self._symlink(tool, shown)
        if kind == "dir":
            raise PermanentError(f"{self.name}.{tool}: '{shown}' is a directory"
                                 + ("; use list" if reading else ""), path=shown, field="path")
        raise PermissionDenied(f"{self.name}.{tool}: '{shown}' is not a regular file (a FIFO, "
                               "socket or device); files connections only touch regular "
                               "files", path=shown, field="path")

    def _sync_dir(self, tool: str, dfd: int, shown: str, done: str) -> None:
        """The rename or unlink happened; only its durability is in question now."""
        try:
            os.fsync(dfd)
        except OSError as exc:
            raise UncertainOutcome(f"{self.name}.{tool}: '{shown}' was {done}, but its directory "
                                   f"could not be synced ({exc.strerror}): it may not survive "
                                   "a crash of this machine", path=shown) from None

    @staticmethod
    def _unlink_quietly(dfd: int, name: str) -> None:
        try:
            os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove the temporary file %s: %s", name, exc.strerror)

    # -- errors ------------------------------------------------------------------------------

    def _bad(self, tool: str, field: str, problem: str) -> PermanentError:
        return PermanentError(f"{self.name}.{tool}: params.{field}: {problem}", field=field)

    def _refused(self, tool: str, field: str, problem: str) -> PermissionDenied:
        return PermissionDenied(f"{self.name}.{tool}: params.{field}: {problem}", field=field)

    def _symlink(self, tool: str, shown: str) -> PermissionDenied:
        return PermissionDenied(f"{self.name}.{tool}: '{shown}' is a symbolic link; files "
                                "connections never follow links (see "
                                "docs/connectors.md#files)", path=shown, field="path")

    def _too_large(self, tool: str, field: str, size: int | None, shown: str = ""
                   ) -> PermanentError:
        what = f"'{shown}' is" if shown else "the content is"
        amount = f"{size} bytes, " if size is not None else ""
        return PermanentError(f"{self.name}.{tool}: {what} {amount}more than max_bytes "
                              f"({self._max_bytes}) of connection '{self.name}'",
                              field=field, limit="max_bytes")

    def _os_error(self, tool: str, shown: str, exc: OSError, **details: Any
                  ) -> ConnectorError:
        """A filesystem failure as its class (SPEC §8). Messages name the path relative to
        the root, never the root."""
        code = exc.errno or 0
        message = f"{self.name}.{tool}: '{shown}': {exc.strerror or type(exc).__name__}"
        details = {"path": shown, "errno": errno.errorcode.get(code, str(code)), **details}
        if code in _PERMISSION:
            return PermissionDenied(message, **details)
        if code in _ABSENT or code in _NOT_DIR:
            return PreconditionError(message, **details)
        if code == errno.ELOOP:
            return self._symlink(tool, shown)
        if code in (errno.EISDIR, errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ):
            return PermanentError(message, field="path", **details)
        # ENOSPC, EDQUOT, EIO, EMFILE, EBUSY, ESTALE, ...: may succeed later.
        return TransientError(message, **details)


class _Absent(Exception):  # an internal signal: it never leaves this module
    """A directory on the walk does not exist."""


class _Glob:
    """A glob over paths relative to the listed directory: ``*``, ``?`` and ``[…]`` match
    within one name, ``**`` as a whole component matches any number of directories.
    Matched without regular expressions (linear in the name: no pattern can make a
    listing slow)."""

    def __init__(self, segments: list[list[tuple[str, Any]] | None]) -> None:
        self.segments = segments  # None stands for "**"
        self.deep = any(s is None for s in segments)

    @classmethod
    def parse(cls, connector: FilesConnector, tool: str, raw: Any) -> _Glob:
        def bad(problem: str) -> PermanentError:
            return connector._bad(tool, "glob", problem)

        if not isinstance(raw, str) or not raw:
            raise bad("must be a non-empty string such as '*.txt' or '**/*.csv'")
        if len(raw) > MAX_GLOB_CHARS:
            raise bad(f"is longer than {MAX_GLOB_CHARS} characters")
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            raise bad("is not valid Unicode (it holds a lone UTF-16 surrogate)") from None
        if _CONTROL.search(raw) or "\\" in raw:
            raise bad("must not contain control characters or backslashes")
        if raw.startswith("/"):
            raise bad("is relative to params.path; it must not start with '/'")
        parts = raw.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise bad("has an empty, '.' or '..' component")
        return cls([None if part == "**" else _tokens(part) for part in parts])

    def matches(self, path: tuple[str, ...]) -> bool:
        return _match_seq(self.segments, path, lambda seg, name: seg is not None and
                          _match_tokens(seg, name))

    def descend(self, path: tuple[str, ...]) -> bool:
        """Whether entries below the directory ``path`` can match."""
        if self.deep:
            return len(path) < MAX_COMPONENTS
        if len(path) >= len(self.segments):
            return False
        return all(_match_tokens(seg, name) for seg, name in zip(self.segments, path,
                                                                   strict=False) if seg)


def _tokens(segment: str) -> list[tuple[str, Any]]:
    """``*`` -> star, ``?`` -> any, ``[…]`` -> set (a closing ``]`` first is literal), else a
    literal character; a ``[`` without its ``]`` is literal."""
    out: list[tuple[str, Any]] = []
    i = 0
    while i < len(segment):
        c = segment[i]
        if c == "*":
            if not out or out[-1][0] != "star":
                out.append(("star", None))
        elif c == "?":
            out.append(("any", None))
        elif c == "[":
            j = i + 1
            negate = j < len(segment) and segment[j] in "!^"
            if negate:
                j += 1
            start = j
            if j < len(segment) and segment[j] == "]":
                j += 1
            while j < len(segment) and segment[j] != "]":
                j += 1
            if j >= len(segment):
                out.append(("lit", c))
            else:
                body = segment[start:j]
                ranges: list[tuple[str, str]] = []
                k = 0
                while k < len(body):
                    if k + 2 < len(body) and body[k + 1] == "-":
                        ranges.append((body[k], body[k + 2]))
                        k += 3
                    else:
                        ranges.append((body[k], body[k]))
                        k += 1
                out.append(("set", (negate, tuple(ranges))))
                i = j
        else:
            out.append(("lit", c))
        i += 1
    return out


def _match_one(token: tuple[str, Any], c: str) -> bool:
    kind, arg = token
    if kind == "any":
        return True
    if kind == "lit":
        return bool(arg == c)
    negate, ranges = arg
    return bool(any(lo <= c <= hi for lo, hi in ranges) != negate)


def _match_tokens(tokens: list[tuple[str, Any]], name: str) -> bool:
    return _match_seq(tokens, name, lambda t, c: t[0] != "star" and _match_one(t, c),
                      star=lambda t: t[0] == "star")


def _match_seq(pattern: Any, items: Any, one: Any, star: Any = None) -> bool:
    """Wildcard matching with one kind of star, by the two-pointer method: O(len(pattern) ×
    len(items)), whatever the pattern."""
    is_star = star or (lambda t: t is None)
    p = i = 0
    star_p, star_i = -1, 0
    while i < len(items):
        if p < len(pattern) and not is_star(pattern[p]) and one(pattern[p], items[i]):
            p += 1
            i += 1
        elif p < len(pattern) and is_star(pattern[p]):
            star_p, star_i = p, i
            p += 1
        elif star_p >= 0:
            p = star_p + 1
            star_i += 1
            i = star_i
        else:
            return False
    while p < len(pattern) and is_star(pattern[p]):
        p += 1
    return p == len(pattern)


def _given(params: Mapping[str, Any], name: str, default: Any) -> Any:
    """An optional param; ``null`` is the same as leaving it out."""
    value = params.get(name)
    return default if value is None else value


def _listable(name: str) -> bool:
    """Whether a name found on disk can be handed to a script and used in a path again (a
    name that is not UTF-8 arrives with lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not (_CONTROL.search(name) or "\\" in name)


def _shown(path: str, limit: int = 200) -> str:
    """A path for messages and details: non-printable characters escaped, cut."""
    cut = path[:limit]
    text = "".join(c if c.isprintable() else c.encode("unicode_escape",
                                                      "backslashreplace").decode("ascii")
                   for c in cut)
    return f"{text}{'…' if len(path) > limit else ''}"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


register_connector(FilesConnector)
