"""Values going into the sandbox: unsafe integers become strings with a warning (pure)."""

from __future__ import annotations

import json

import pytest

from keepflow.errors import SandboxLimitExceeded
from keepflow.sandbox.api import JS_MAX_SAFE_INTEGER
from keepflow.sandbox.encoding import encode_for_js


def test_safe_integers_are_sent_unchanged() -> None:
    value = {"a": 2**40, "b": -JS_MAX_SAFE_INTEGER, "c": [JS_MAX_SAFE_INTEGER, 1.5, True, None]}
    data, warnings = encode_for_js(value, "arg", 1 << 20)
    assert json.loads(data) == value
    assert warnings == []


def test_unsafe_integers_become_decimal_strings_with_their_path() -> None:
    value = {"id": 2**60, "rows": [{"n": -(2**53) - 1}], "odd key": 10**30 + 1}
    data, warnings = encode_for_js(value, "the reply to ctx.sql.query (#1)", 1 << 20)
    assert json.loads(data) == {
        "id": str(2**60), "rows": [{"n": str(-(2**53) - 1)}], "odd key": str(10**30 + 1)
    }
    assert len(warnings) == 3
    assert warnings[0].startswith("the reply to ctx.sql.query (#1) at $.id: an integer no "
                                  "JavaScript number can hold exactly")
    assert "at $.rows[0].n:" in warnings[1]
    assert 'at $["odd key"]:' in warnings[2]


@pytest.mark.parametrize("n", [2**53, -(2**53), 10**21, 10**30, 2**53 - 1])
def test_integers_a_script_gets_back_exactly_stay_numbers(n: int) -> None:
    """JSON.stringify writes a double's shortest digits: for these that is the integer itself
    (a script's own 2**53, or 1e21 that PostgreSQL's jsonb returns as an integer)."""
    data, warnings = encode_for_js({"n": n}, "state", 1 << 20)
    assert json.loads(data) == {"n": n}
    assert warnings == []


def test_the_input_is_not_modified() -> None:
    value = {"id": 2**60, "keep": [1, 2]}
    encode_for_js(value, "arg", 1 << 20)
    assert value == {"id": 2**60, "keep": [1, 2]}


def test_a_top_level_unsafe_integer() -> None:
    data, warnings = encode_for_js(2**64, "argument 1", 1 << 20)
    assert data == b'"18446744073709551616"'
    assert warnings[0].startswith("argument 1: an integer no JavaScript number can hold")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {"d": object()}])
def test_non_json_host_values_are_refused(bad: object) -> None:
    with pytest.raises(TypeError, match="is not a JSON value"):
        encode_for_js(bad, "the reply", 1 << 20)


def test_oversized_values_exceed_the_size_limit() -> None:
    with pytest.raises(SandboxLimitExceeded) as info:
        encode_for_js("x" * 100, "the reply to ctx.peek (#1)", 50)
    assert info.value.limit == "size"
    assert "ctx.peek" in info.value.message
