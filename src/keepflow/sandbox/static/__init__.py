"""Static validation of workflow scripts with tree-sitter (SPEC §11.3 stage 2).

Public API: :func:`analyze` returns a :class:`StaticReport` (findings + statically visible
tool calls for permission compilation, SPEC §9).
"""

from keepflow.sandbox.static.analyze import StaticCall, StaticReport, analyze, check_syntax
from keepflow.sandbox.static.tree import Script

__all__ = ["Script", "StaticCall", "StaticReport", "analyze", "check_syntax"]
