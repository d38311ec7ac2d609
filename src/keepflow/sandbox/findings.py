"""Findings: the structured, human-readable output of script validation (SPEC §11.3).

Every validation stage (load-time rules on the engine's manifest, static analysis) reports
:class:`Finding` values. They are shown to people and fed back verbatim to the Planner or
Maintainer LLM on retry, so each message says what is wrong, where, and what to do instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    """One problem found in a script. ``line``/``column`` are 1-based, ``None`` if unknown."""

    rule: str
    severity: Severity
    message: str
    line: int | None = None
    column: int | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "line": self.line,
            "column": self.column,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        severity = data["severity"]
        if severity not in ("error", "warning"):
            raise ValueError(f"unknown finding severity {severity!r}")
        return cls(
            rule=str(data["rule"]),
            severity=cast(Severity, severity),
            message=str(data["message"]),
            line=data.get("line"),
            column=data.get("column"),
        )


def error(rule: str, message: str, line: int | None = None, column: int | None = None) -> Finding:
    return Finding(rule, "error", message, line, column)


def warning(rule: str, message: str, line: int | None = None, column: int | None = None) -> Finding:
    return Finding(rule, "warning", message, line, column)


def has_errors(findings: Iterable[Finding]) -> bool:
    """True if any finding is an error (warnings never block a deploy)."""
    return any(f.severity == "error" for f in findings)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Order by position (unknown positions last), errors before warnings, and drop
    duplicates (the same helper function can be reached from several handlers)."""
    unique = dict.fromkeys(findings)
    return sorted(
        unique,
        key=lambda f: (
            f.line is None,
            f.line or 0,
            f.column or 0,
            f.severity != "error",
            f.rule,
            f.message,
        ),
    )


def format_finding(f: Finding, filename: str = "script.js") -> str:
    """``file:line:col: error[rule] message`` (position parts omitted when unknown)."""
    where = filename
    if f.line is not None:
        where += f":{f.line}"
        if f.column is not None:
            where += f":{f.column}"
    return f"{where}: {f.severity}[{f.rule}] {f.message}"


def format_findings(findings: Iterable[Finding], filename: str = "script.js") -> str:
    """All findings, sorted, one per line: the text fed back to an LLM on retry."""
    return "\n".join(format_finding(f, filename) for f in sort_findings(findings))
