"""Load-time rules on the engine's manifest (SPEC §2, §7.2, §11.3 stage 1)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from validation_samples import PHASES, SPEC_EXAMPLE, rules, spec_example_manifest

from keepflow.sandbox.findings import has_errors
from keepflow.sandbox.manifest_rules import check_manifest
from keepflow.workflow import (
    ConsumerSpec,
    ProducerSpec,
    Schedule,
    ScheduleError,
    WorkflowManifest,
    build_manifest,
    parse_schedule,
)

SOURCE = """\
export default Keep.workflow({
  name: "invoice-rows",
  topics: { "email.received": {}, "row.created": {} },
  producers: {
    pollInbox: { schedule: { interval: "5m" }, async handler(ctx, state) { return state; } },
    nightly: { schedule: { cron: "0 3 * * *", tz: "Europe/Berlin" }, handler: (ctx) => null },
    manual(ctx) {},
  },
  consumers: {
    addRow: Keep.consumer({
      subscribe: ["email.received"],
      async prepare(ctx, state) { return { reservations: [], data: {} }; },
      async mutate(ctx, prepared) {},
      async next(ctx, prepared, mutation) { return null; },
    }),
    notify: Keep.consumer({
      subscribe: ["row.created"],
      async prepare(ctx, state) { return { reservations: [], data: {} }; },
      async mutate(ctx, prepared) {},
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
"""


def consumer(*topics: Any, via: bool = True) -> dict[str, Any]:
    return {
        "viaConsumer": via,
        "subscribe": list(topics),
        "subscribeType": "array",
        "phases": dict(PHASES),
    }


def good() -> dict[str, Any]:
    return {
        "registered": 1,
        "name": "invoice-rows",
        "nameType": "string",
        "topics": {"email.received": {}, "row.created": {}},
        "topicsType": "object",
        "producers": {
            "pollInbox": {"form": "scheduled", "schedule": {"interval": "5m"}, "problem": None},
            "nightly": {
                "form": "scheduled",
                "schedule": {"cron": "0 3 * * *", "tz": "Europe/Berlin"},
                "problem": None,
            },
            "manual": {"form": "function", "schedule": None, "problem": None},
        },
        "consumers": {"addRow": consumer("email.received"), "notify": consumer("row.created")},
        "problems": [],
    }


def line_of(text: str, source: str = SOURCE) -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if text in line)


def test_good_manifest_has_no_findings_and_builds() -> None:
    assert check_manifest(good(), SOURCE) == []
    manifest = build_manifest(good())
    assert manifest == WorkflowManifest(
        name="invoice-rows",
        topics=("email.received", "row.created"),
        producers={
            "pollInbox": ProducerSpec(Schedule("interval", interval_seconds=300)),
            "nightly": ProducerSpec(Schedule("cron", cron="0 3 * * *", tz="Europe/Berlin")),
            "manual": ProducerSpec(None),
        },
        consumers={
            "addRow": ConsumerSpec(("email.received",)),
            "notify": ConsumerSpec(("row.created",)),
        },
    )
    assert manifest.consumer_of("row.created") == "notify"
    assert manifest.handler_names == ("pollInbox", "nightly", "manual", "addRow", "notify")
    stored = json.loads(json.dumps(manifest.to_dict()))
    assert WorkflowManifest.from_dict(stored) == manifest


def test_spec_example_only_lacks_a_consumer_for_row_created() -> None:
    # SPEC §2's example declares "row.created" without consuming it; v1 requires exactly one
    # consumer per topic, so the example as written is rejected at load time.
    found = check_manifest(spec_example_manifest(), SPEC_EXAMPLE)
    assert rules(found) == [("topic-consumers", 3)]
    assert '"row.created" has no consumer' in found[0].message


def test_registration_must_happen_exactly_once() -> None:
    source = SOURCE + 'Keep.workflow({ name: "other" });\n'
    found = check_manifest(good() | {"registered": 2}, source)
    assert rules(found) == [("registration", 24)]
    (none,) = check_manifest(good() | {"registered": 0}, "const x = 1;")
    assert none.rule == "registration"
    assert "export default Keep.workflow" in none.message


@pytest.mark.parametrize(
    ("name", "name_type", "fragment"),
    [
        (None, "undefined", "has no name"),
        (None, "number", "must be a string"),
        ("", "string", "invalid"),
        ("Invoice Rows", "string", "invalid"),
        ("-rows", "string", "invalid"),
        ("x" * 65, "string", "invalid"),
    ],
)
def test_workflow_name(name: str | None, name_type: str, fragment: str) -> None:
    found = check_manifest(good() | {"name": name, "nameType": name_type}, SOURCE)
    assert rules(found) == [("workflow-name", 2)]
    assert fragment in found[0].message
    if name_type == "string":
        assert "same rule as topic names" in found[0].message


def test_topics_must_be_an_object() -> None:
    manifest = good() | {"topics": None, "topicsType": "string"}
    found = check_manifest(manifest, SOURCE)
    assert ("topics", 3) in rules(found)


def test_topic_names_are_checked() -> None:
    source = SOURCE.replace('"row.created": {} }', '"row.created": {}, "Bad Topic": {} }')
    manifest = good()
    manifest["topics"]["Bad Topic"] = {}
    manifest["consumers"]["notify"]["subscribe"].append("Bad Topic")
    found = check_manifest(manifest, source)
    assert rules(found) == [("topic-name", 3)]
    assert '"Bad Topic"' in found[0].message


def test_undeclared_subscribed_topic_points_at_the_array_element() -> None:
    source = SOURCE.replace('subscribe: ["row.created"]', 'subscribe: ["row.created", "rows"]')
    manifest = good()
    manifest["consumers"]["notify"]["subscribe"].append("rows")
    found = check_manifest(manifest, source)
    line = line_of('"rows"]', source)
    assert rules(found) == [("undeclared-topic", line)]
    assert found[0].column == source.splitlines()[line - 1].index('"rows"') + 1


def test_topic_without_consumer() -> None:
    manifest = good()
    del manifest["consumers"]["notify"]
    found = check_manifest(manifest, SOURCE)
    assert rules(found) == [("topic-consumers", 3)]
    assert found[0].message.startswith(
        'topic "row.created" has no consumer; events published to it would never be processed'
        " — add a consumer or remove the topic"
    )


def test_topic_with_two_consumers_names_both() -> None:
    source = SOURCE.replace(
        'subscribe: ["row.created"]', 'subscribe: ["row.created", "email.received"]'
    )
    manifest = good()
    manifest["consumers"]["notify"]["subscribe"].append("email.received")
    found = check_manifest(manifest, source)
    assert rules(found) == [("topic-consumers", line_of('"row.created", "email', source))]
    assert "addRow and notify" in found[0].message


def test_handler_name_clash_between_producer_and_consumer() -> None:
    source = SOURCE.replace("manual(ctx) {}", "addRow(ctx) {}")
    manifest = good()
    manifest["producers"]["addRow"] = manifest["producers"].pop("manual")
    found = check_manifest(manifest, source)
    assert rules(found) == [("handler-name-clash", 10)]
    assert "producer (line 7)" in found[0].message


def test_duplicate_handler_key_in_the_source() -> None:
    # The engine never sees the first `pollInbox`: in JS the last duplicate key wins.
    source = SOURCE.replace("    manual(ctx) {},", "    pollInbox(ctx) {},")
    manifest = good()
    del manifest["producers"]["manual"]
    found = check_manifest(manifest, source)
    assert rules(found) == [("handler-name-clash", 7)]
    assert "defined twice" in found[0].message


def test_invalid_producer_form() -> None:
    manifest = good()
    manifest["producers"]["manual"] = {"form": "invalid", "schedule": None, "problem": "a number"}
    found = check_manifest(manifest, SOURCE)
    assert rules(found) == [("producer-form", 7)]
    assert "{ schedule:" in found[0].message


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"interval": "30s"}, Schedule("interval", interval_seconds=30)),
        ({"interval": "1s"}, Schedule("interval", interval_seconds=1)),
        ({"interval": "5m"}, Schedule("interval", interval_seconds=300)),
        ({"interval": "2h"}, Schedule("interval", interval_seconds=7200)),
        ({"interval": "1d"}, Schedule("interval", interval_seconds=86400)),
        ({"cron": "*/15 9-17 * * 1-5"}, Schedule("cron", cron="*/15 9-17 * * 1-5")),
        ({"cron": "0 8 * * *", "tz": "UTC"}, Schedule("cron", cron="0 8 * * *", tz="UTC")),
    ],
)
def test_valid_schedules(schedule: dict[str, Any], expected: Schedule) -> None:
    assert parse_schedule(schedule) == expected
    assert Schedule.from_dict(expected.to_dict()) == expected


@pytest.mark.parametrize(
    ("schedule", "key"),
    [
        ({"interval": "0s"}, "interval"),
        ({"interval": "5"}, "interval"),
        ({"interval": "5min"}, "interval"),
        ({"interval": "1.5h"}, "interval"),
        ({"interval": " 5m"}, "interval"),
        ({"interval": 300}, "interval"),
        ({"cron": "0 * * *"}, "cron"),
        ({"cron": "0 0 * * * *"}, "cron"),
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "@daily"}, "cron"),
        ({"cron": "0 * * * *", "tz": "Mars/Olympus"}, "tz"),
        ({"cron": "0 * * * *", "tz": "../etc/passwd"}, "tz"),
        ({"cron": "0 * * * *", "tz": 1}, "tz"),
        ({"interval": "5m", "tz": "UTC"}, None),
        ({"interval": "5m", "cron": "0 * * * *"}, None),
        ({"every": "5m"}, None),
        ({}, None),
        ("5m", None),
        (None, None),
    ],
)
def test_invalid_schedules(schedule: Any, key: str | None) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(schedule)
    assert info.value.key == key


def test_schedule_finding_points_at_the_bad_value() -> None:
    source = SOURCE.replace('tz: "Europe/Berlin"', 'tz: "Europe/Nowhere"')
    manifest = good()
    manifest["producers"]["nightly"]["schedule"]["tz"] = "Europe/Nowhere"
    found = check_manifest(manifest, source)
    assert rules(found) == [("schedule", 6)]
    assert found[0].column == source.splitlines()[5].index("tz:") + 1
    assert "IANA" in found[0].message


def test_consumer_phases_and_subscribe() -> None:
    manifest = good()
    manifest["consumers"]["addRow"]["phases"] = {"prepare": "function", "mutate": "undefined"}
    manifest["consumers"]["notify"] |= {"subscribe": None, "subscribeType": "string"}
    found = check_manifest(manifest, SOURCE)
    assert rules(found) == [
        ("topic-consumers", 3),  # notify's subscribe is unusable
        ("consumer-phases", 10),
        ("consumer-phases", 10),
        ("consumer-subscribe", 16),
    ]
    assert "has no mutate function" in found[1].message
    assert "has no next function" in found[2].message


def test_empty_and_non_string_subscribe() -> None:
    manifest = good()
    manifest["consumers"]["notify"]["subscribe"] = []
    manifest["consumers"]["addRow"]["subscribe"] = ["email.received", 3]
    found = check_manifest(manifest, SOURCE)
    assert rules(found) == [
        ("topic-consumers", 3),
        ("consumer-subscribe", 17),
        ("consumer-subscribe", None),  # the source has no second element to point at
    ]


def test_plain_object_consumer_is_only_a_warning() -> None:
    manifest = good()
    manifest["consumers"]["notify"]["viaConsumer"] = False
    found = check_manifest(manifest, SOURCE)
    assert [(f.rule, f.severity, f.line) for f in found] == [("consumer-wrapper", "warning", 16)]
    assert not has_errors(found)


def test_engine_problems_become_findings() -> None:
    manifest = good() | {"problems": ["producers is not an object"]}
    found = check_manifest(manifest, SOURCE)
    assert rules(found) == [("definition", 4)]


def test_computed_values_have_no_position() -> None:
    source = SOURCE.replace('"row.created": {} }', '[PREFIX + ".created"]: {} }')
    manifest = good()
    manifest["topics"]["Row.created"] = manifest["topics"].pop("row.created")
    manifest["consumers"]["notify"]["subscribe"] = ["Row.created"]
    found = check_manifest(manifest, source)
    assert [(f.rule, f.line, f.column) for f in found] == [("topic-name", None, None)]


def test_build_manifest_rejects_malformed_input() -> None:
    broken = copy.deepcopy(good())
    del broken["consumers"]
    with pytest.raises(ValueError, match="malformed"):
        build_manifest(broken)
    with pytest.raises(ValueError, match="format"):
        WorkflowManifest.from_dict({"name": "x"})


def test_never_raises_on_odd_manifests_or_sources() -> None:
    odd: list[dict[str, Any]] = [
        {},
        {"registered": 1},
        {"registered": 1, "producers": [], "consumers": "x", "topics": [], "problems": None},
        {"registered": 1, "consumers": {"c": None}, "producers": {"p": None}, "topics": {}},
        {"registered": 1, "consumers": {"c": {"subscribe": "in", "phases": None}}},
    ]
    for manifest in odd:
        for source in ("", SOURCE, SOURCE[:200], "export default Keep.workflow(1);"):
            assert all(f.message for f in check_manifest(manifest, source))
