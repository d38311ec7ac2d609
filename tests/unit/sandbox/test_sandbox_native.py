"""The engine hooks (ctypes) switch themselves off cleanly when the binding is not the one they
were written for, and the engine then works without them (in-process, no worker)."""

from __future__ import annotations

import json

import pytest

from keepflow.sandbox import native
from keepflow.sandbox.engine import EngineFailure, Session, prepare

LIMITS = {"cpu_seconds": 2.0, "max_jobs": 100_000, "memory_bytes": 32 << 20,
          "stack_bytes": 1 << 20}
SPEC = {"handler": ["producers", "p"], "undefinedArgs": [], "connections": {},
        "maxHostCalls": 10, "maxMessage": 1 << 20, "maxLogs": 10, "maxLogChars": 100}
SOURCE = """export default Keep.workflow({ producers: { async p(ctx) {
  Promise.reject(new Error("left alone"));
  return [1, 2];
} } });"""


def test_an_unexpected_binding_version_disables_the_hooks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(native, "_BINDING_VERSION", "0.0.0")
    hooks = native.EngineHooks()
    assert not hooks.available
    assert hooks.problem is not None
    assert "is not 0.0.0" in hooks.problem
    prepare(hooks)  # no bytecode cache, no tracker: the prelude is evaluated as source
    session = Session(SOURCE, LIMITS, hooks)
    poll = session.start(SPEC, "[]")
    session.close()
    assert poll.state == "returned"
    assert poll.header["unhandled"] is None  # documented fallback: not reported
    assert json.loads(poll.payload)["value"] == [1, 2]


def test_with_hooks_the_rejection_is_reported_and_the_prelude_is_cached() -> None:
    hooks = native.EngineHooks()
    if not hooks.available:
        pytest.skip(f"engine hooks unavailable here: {hooks.problem}")
    prepare(hooks)
    session = Session(SOURCE, LIMITS, hooks)
    poll = session.start(SPEC, "[]")
    session.close()
    assert poll.header["unhandled"]["count"] == 1
    assert poll.header["unhandled"]["reason"]["message"] == "left alone"


def test_syntax_errors_surface_from_the_session_in_both_modes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for version in (None, "0.0.0"):
        if version is not None:
            monkeypatch.setattr(native, "_BINDING_VERSION", version)
        hooks = native.EngineHooks()
        prepare(hooks)
        with pytest.raises(EngineFailure) as info:
            Session("let x = ;\n", LIMITS, hooks)
        assert info.value.error["line"] == 1
        assert info.value.error["js_name"] == "SyntaxError"
