"""Framing between the pool and a sandbox worker.

A frame is a 4-byte big-endian length followed by that many bytes: a one-line JSON header, a
newline, then an optional raw payload. The payload is JSON text produced by one side and parsed
once by the other, so values crossing the boundary are never decoded and re-encoded on the way
(the worker forwards the engine's JSON text untouched). ``parts`` in the header splits a payload
that carries several texts.

Frames travel over dedicated pipe file descriptors, never stdin/stdout, so a stray print in the
worker cannot corrupt the protocol.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

_LENGTH = struct.Struct(">I")
#: Hard ceiling of one frame; a larger length means the stream is corrupt.
MAX_FRAME_BYTES = 1 << 30


class ProtocolClosed(Exception):
    """The other side closed its end of the pipe (it exited or died)."""


class ProtocolTimeout(Exception):
    """No complete frame arrived before the deadline."""


def encode_frame(header: dict[str, Any], *parts: str | bytes) -> bytes:
    chunks = [p.encode() if isinstance(p, str) else p for p in parts]
    if len(chunks) > 1:
        header = {**header, "parts": [len(c) for c in chunks]}
    head = json.dumps(header, separators=(",", ":")).encode()
    body = head + b"\n" + b"".join(chunks)
    return _LENGTH.pack(len(body)) + body


def write_frame(fd: int, header: dict[str, Any], *parts: str | bytes) -> None:
    data = memoryview(encode_frame(header, *parts))
    try:
        while data:
            written = os.write(fd, data)
            data = data[written:]
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise ProtocolClosed(str(exc)) from exc


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    remaining = n
    poller = select.poll() if deadline is not None else None
    if poller is not None:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while remaining:
        if poller is not None and deadline is not None:
            timeout_ms = max(0, int((deadline - time.monotonic()) * 1000) + 1)
            if not poller.poll(timeout_ms):
                raise ProtocolTimeout("no reply before the deadline")
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise ProtocolClosed("the other side closed the pipe")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, deadline: float | None = None) -> tuple[dict[str, Any], bytes]:
    """Read one frame. ``deadline`` is a ``time.monotonic()`` value, or None to wait forever."""
    (length,) = _LENGTH.unpack(_read_exact(fd, _LENGTH.size, deadline))
    if length > MAX_FRAME_BYTES:
        raise ProtocolClosed(f"frame of {length} bytes exceeds the protocol ceiling")
    body = _read_exact(fd, length, deadline)
    head, _, payload = body.partition(b"\n")
    header = json.loads(head)
    if not isinstance(header, dict):
        raise ProtocolClosed("frame header is not a JSON object")
    return header, payload


def split_parts(header: dict[str, Any], payload: bytes) -> list[bytes]:
    """Split a payload into the texts listed by ``header["parts"]`` (one text if absent)."""
    sizes = header.get("parts")
    if not sizes:
        return [payload]
    out: list[bytes] = []
    offset = 0
    for size in sizes:
        out.append(payload[offset : offset + size])
        offset += size
    return out
