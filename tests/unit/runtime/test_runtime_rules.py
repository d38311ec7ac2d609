"""Pure decisions of the runtime: phase table, run transitions, routing, policy, faults, ids."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from keepflow import faults, ids
from keepflow.connectors.base import ToolKind
from keepflow.errors import ConfigError, FailureClass, PhaseViolation
from keepflow.model import RunDraft, RunKind, RunStatus, WorkflowStatus
from keepflow.policies import PolicyBook, RetryPolicy
from keepflow.runtime.phases import RULES, Phase
from keepflow.runtime.routing import route_failure, route_indeterminate
from keepflow.store.transitions import path_error

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("phase", "kind", "allowed"), [
    (Phase.PRODUCER, ToolKind.READ, True), (Phase.PRODUCER, ToolKind.MUTATE, False),
    (Phase.PREPARE, ToolKind.READ_BY_ID, True), (Phase.PREPARE, ToolKind.MUTATE, False),
    (Phase.MUTATE, ToolKind.READ, False), (Phase.MUTATE, ToolKind.READ_BY_ID, True),
    (Phase.MUTATE, ToolKind.MUTATE, True), (Phase.NEXT, ToolKind.READ_BY_ID, False),
])
def test_phase_table_matches_spec(phase: Phase, kind: ToolKind, allowed: bool) -> None:
    rules = RULES[phase]
    if allowed:
        rules.check_tool("ctx.x.y", kind)
    else:
        with pytest.raises(PhaseViolation, match=f"ctx.x.y .* is not allowed in {phase.value}"):
            rules.check_tool("ctx.x.y", kind)


def test_publish_and_peek_rights() -> None:
    assert [p for p in Phase if RULES[p].publish] == [Phase.PRODUCER, Phase.NEXT]
    assert [p for p in Phase if RULES[p].peek] == [Phase.PREPARE]


def _run(status: RunStatus) -> RunDraft:
    return RunDraft(id="r", workflow_id="w", version_id="v", handler="h", kind=RunKind.CONSUMER,
                    trigger="t", status=status, created_at=NOW)


ENDS_COMMITTED = frozenset({RunStatus.COMMITTED})


def test_transitions_follow_the_spec_lifecycle() -> None:
    run = _run(RunStatus.PENDING)
    for to in (RunStatus.PREPARING, RunStatus.PREPARED, RunStatus.MUTATING, RunStatus.MUTATED,
               RunStatus.EMITTING, RunStatus.COMMITTED):
        run.step(to, NOW)
    assert run.finished_at == NOW
    assert path_error(RunStatus.PENDING, run, ENDS_COMMITTED) is None
    run.step(RunStatus.PREPARING, NOW)
    assert path_error(RunStatus.PENDING, run, ENDS_COMMITTED) == (
        "committed → preparing is not a legal run transition")


def test_prepared_cannot_skip_to_committed() -> None:
    run = _run(RunStatus.PENDING)
    for to in (RunStatus.PREPARING, RunStatus.PREPARED, RunStatus.COMMITTED):
        run.step(to, NOW)
    assert "prepared → committed is not a legal" in str(
        path_error(RunStatus.PENDING, run, ENDS_COMMITTED))


def test_a_path_must_start_where_the_store_stands_and_end_where_the_transition_ends() -> None:
    run = _run(RunStatus.PENDING)
    run.step(RunStatus.PREPARING, NOW)
    assert "path says pending → preparing but it is mutating" in str(
        path_error(RunStatus.MUTATING, run, ENDS_COMMITTED))
    assert "must end committed" in str(path_error(RunStatus.PENDING, run, ENDS_COMMITTED))
    run.step(RunStatus.PREPARING, NOW, note="a note keeps the status")
    assert path_error(RunStatus.PENDING, run, frozenset({RunStatus.PREPARING})) is None


def test_rewind_forgets_the_unwritten_path() -> None:
    run = _run(RunStatus.PENDING)
    for to in (RunStatus.RUNNING, RunStatus.COMMITTED):
        run.step(to, NOW)
    run.rewind(keep=1)
    assert (run.status, run.finished_at, len(run.transitions)) == (RunStatus.RUNNING, None, 1)
    run.rewind()
    assert (run.status, run.transitions) == (RunStatus.PENDING, [])


def test_routing_says_what_to_do() -> None:
    status, reason = route_failure(FailureClass.AUTH, "poll", "token expired")
    assert status is WorkflowStatus.NEEDS_ACTION
    assert "reconnect" in reason
    status, reason = route_indeterminate("POST https://x/orders", ["Order #1"], "timeout", False)
    assert '"Order #1"' in reason
    assert "cannot verify" in reason


def test_retry_delay_grows_and_is_capped() -> None:
    p = RetryPolicy(base_seconds=1, factor=2, max_delay_seconds=5, jitter=0)
    assert [p.delay(i) for i in (1, 2, 3, 4)] == [1, 2, 4, 5]
    jittered = RetryPolicy(base_seconds=10, jitter=0.1).delay(1, random.Random(1))
    assert 9 <= jittered <= 11


def test_policy_file_errors_name_the_key(tmp_path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("[retry]\nmax_attempts = 0\n")
    with pytest.raises(ConfigError, match=r"retry\.max_attempts"):
        PolicyBook.load(path)
    path.write_text("[limits]\nunknown = 1\n")
    with pytest.raises(ConfigError, match=r"limits\.unknown"):
        PolicyBook.load(path)
    path.write_text('[workflows.orders.limits]\npayload_bytes = 2048\n')
    book = PolicyBook.load(path)
    assert book.for_workflow("orders").limits.payload_bytes == 2048
    assert book.for_workflow("other").limits.payload_bytes == 256 * 1024


def test_fault_spec_parsing_and_zero_cost_default() -> None:
    assert faults._parse("a.b:3, c.d") == {"a.b": 3, "c.d": 1}
    if not faults._TARGETS:
        assert faults.point is faults._noop


def test_ids_are_sortable_and_unique() -> None:
    made = [ids.new_id() for _ in range(2000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert all(len(i) == 26 for i in made)


def test_the_shipped_policy_file_is_the_model_defaults_and_documents_every_key() -> None:
    """Docs that cannot rot: default_policy.toml equals Policy() and names every setting."""
    import tomllib

    from keepflow.policies import DEFAULTS_FILE, Policy

    text = DEFAULTS_FILE.read_text(encoding="utf-8")
    assert Policy.model_validate(tomllib.loads(text)) == Policy()
    for section, model in Policy.model_fields.items():
        assert f"[{section}]" in text, section
        assert model.annotation is not None
        for key in model.annotation.model_fields:  # type: ignore[union-attr]
            assert f"{key} =" in text or f"# {key} =" in text, f"{section}.{key}"


def test_connector_and_workflow_overrides_apply_in_order(tmp_path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        "[timeouts]\ntool_call_seconds = 10\n"
        "[connectors.api.timeouts]\ntool_call_seconds = 20\n"
        "[workflows.w.timeouts]\nreconcile_call_seconds = 7\n"
        "[workflows.w.connectors.api.timeouts]\ntool_call_seconds = 30\n")
    book = PolicyBook.load(path)
    assert book.effective("other", None).timeouts.tool_call_seconds == 10
    assert book.effective("other", "api").timeouts.tool_call_seconds == 20
    assert book.effective("w", "http").timeouts.tool_call_seconds == 10
    assert book.effective("w", "api").timeouts.tool_call_seconds == 30
    assert book.effective("w", "api").timeouts.reconcile_call_seconds == 7


def test_approval_rules() -> None:
    from keepflow.policies import ApprovalPolicy

    p = ApprovalPolicy(require=("api.post", "books.*"), min_risk="high")
    assert p.requires("api", "post", "medium")
    assert not p.requires("api", "put", "medium")
    assert p.requires("books", "delete", "low")
    assert p.requires("mail", "send", "high")


def test_policy_show_never_prints_a_webhook_secret(tmp_path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[notifications]\nwebhook_url = "https://user:pw@hooks.example/T0/B1/XyZsecret"\n')
    shown = PolicyBook.load(path).show()
    assert shown["notifications"]["webhook_url"] == "https://hooks.example/…"
