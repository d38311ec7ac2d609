"""Values at the edge of what the store's columns hold work on both stores: PostgreSQL enforces
column lengths that SQLite ignores, so an operation that works on one must work on the other."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from keepflow import service
from keepflow.model import WorkflowStatus
from keepflow.runtime import host as host_module
from keepflow.runtime.host import Host
from tests.support.workflows import consumer_js, deploy_source, events_of, workflow_js

pytestmark = pytest.mark.integration

def _seed(message_id: str) -> str:
    return f"""
    seed: async (ctx, state) => {{
      await ctx.publish("items", {{ messageId: {message_id!r}, title: "Mail", payload: {{}} }});
      return null;
    }},"""


def test_an_event_with_the_longest_message_id_can_be_skipped(host: Host, tmp_path: Path) -> None:
    message_id = "<" + "m" * 237 + "@mail.example.org>"
    assert len(message_id) == 256
    prepare = "return { reservations: [], data: {} };"
    deploy_source(host, tmp_path, workflow_js(producers=_seed(message_id),
                                              consumers=consumer_js(prepare=prepare)))
    service.trigger(host, "wf", "seed")
    skipped = service.skip_event(host, "wf", "items", message_id, actor="a" * 300)
    assert skipped["status"] == "skipped"
    assert events_of(host)[0]["status"] == "skipped"


def test_a_long_actor_is_kept_cut_not_refused(host: Host, tmp_path: Path) -> None:
    deploy_source(host, tmp_path, workflow_js(producers=_seed("a"), consumers=consumer_js()))
    wf = service.set_status(host, "wf", WorkflowStatus.PAUSED, actor="é" * 500)
    assert wf.status.value == "paused"
    assert service.deploy(host, tmp_path / "wf.js", actor="x" * 500).status == "unchanged"


def test_a_long_host_name_still_fits_the_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "h" * 200 + ".example.internal")
    owner = f"{host_module._machine()}:{4194304}:{'N' * 8}"
    assert len(owner) <= 64
    assert host_module.dead_local_process(f"{host_module._machine()}:999999999:abcdefgh")
