"""Framing over real pipes (pure, no worker)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import pytest

from keepflow.sandbox.protocol import (
    ProtocolClosed,
    ProtocolTimeout,
    read_frame,
    split_parts,
    write_frame,
)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


def test_header_and_parts_round_trip(pipe: tuple[int, int]) -> None:
    r, w = pipe
    write_frame(w, {"op": "invoke", "x": "é\n"}, "source\nwith lines", b'[1,"\\n"]')
    header, payload = read_frame(r, time.monotonic() + 5)
    assert header["op"] == "invoke"
    assert header["x"] == "é\n"
    assert split_parts(header, payload) == [b"source\nwith lines", b'[1,"\\n"]']


def test_single_part_and_no_part(pipe: tuple[int, int]) -> None:
    r, w = pipe
    write_frame(w, {"type": "idle"})
    write_frame(w, {"type": "calls"}, '{"calls":[]}')
    assert read_frame(r) == ({"type": "idle"}, b"")
    header, payload = read_frame(r)
    assert split_parts(header, payload) == [b'{"calls":[]}']


def test_timeout_and_closed(pipe: tuple[int, int]) -> None:
    r, w = pipe
    with pytest.raises(ProtocolTimeout):
        read_frame(r, time.monotonic() + 0.01)
    os.close(w)
    with pytest.raises(ProtocolClosed):
        read_frame(r, time.monotonic() + 5)
