"""Finding values and their formatting (SPEC §11.3: structured, human-readable findings)."""

from __future__ import annotations

import json

from keepflow.sandbox.findings import (
    Finding,
    format_finding,
    format_findings,
    has_errors,
    sort_findings,
)


def test_round_trip_and_json() -> None:
    f = Finding("code-after-mutation", "error", "move it", 3, 7)
    data = json.loads(json.dumps(f.to_dict()))
    assert data == {
        "rule": "code-after-mutation",
        "severity": "error",
        "message": "move it",
        "line": 3,
        "column": 7,
    }
    assert Finding.from_dict(data) == f


def test_has_errors() -> None:
    warning = Finding("consumer-wrapper", "warning", "wrap it")
    assert not has_errors([warning])
    assert has_errors([warning, Finding("syntax", "error", "fix it", 1, 1)])
    assert not has_errors([])


def test_format() -> None:
    assert format_finding(Finding("syntax", "error", "bad", 4, 2), "wf.js") == (
        "wf.js:4:2: error[syntax] bad"
    )
    assert format_finding(Finding("schedule", "error", "bad", 4), "wf.js") == (
        "wf.js:4: error[schedule] bad"
    )
    assert format_finding(Finding("registration", "warning", "x")) == (
        "script.js: warning[registration] x"
    )


def test_sort_orders_by_position_and_drops_duplicates() -> None:
    a = Finding("r", "warning", "a", 2, 1)
    b = Finding("r", "error", "b", 2, 1)
    c = Finding("r", "error", "c", None)
    d = Finding("r", "error", "d", 1, 5)
    assert sort_findings([c, a, b, d, b]) == [d, b, a, c]
    assert format_findings([c, d]).splitlines() == [
        "script.js:1:5: error[r] d",
        "script.js: error[r] c",
    ]
