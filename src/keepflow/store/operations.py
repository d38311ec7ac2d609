"""Store operations people perform (deploy, skip, pause…), each one transaction with its audit
record (SPEC §12: who, when, what, before → after)."""

from __future__ import annotations

from typing import Any

from keepflow.model import (
    EventDraft,
    EventRecord,
    PublishReport,
    VersionRecord,
    WorkflowRecord,
    WorkflowStatus,
)
from keepflow.store import credential_records as creds
from keepflow.store import events as ev
from keepflow.store import workflows as wf
from keepflow.store.session import StoreBase


class PeopleOperations(StoreBase):
    def create_workflow(self, name: str, actor: str) -> WorkflowRecord:
        with self.write() as conn:
            rec = wf.create_txn(conn, name, self.clock())
            wf.audit_txn(conn, actor=actor, action="workflow.create", target_type="workflow",
                         target_id=rec.id, after={"name": name}, now=self.clock())
            return rec

    def add_version(self, workflow_id: str, *, source: str, source_sha256: str,
                    manifest: dict[str, Any], findings: list[dict[str, Any]], created_by: str,
                    bump: str = "major") -> VersionRecord:
        with self.write() as conn:
            before = wf.get(conn, workflow_id).current_version_id
            rec = wf.add_version_txn(conn, workflow_id, source=source,
                                     source_sha256=source_sha256, manifest=manifest,
                                     findings=findings, created_by=created_by, bump=bump,
                                     now=self.clock())
            wf.audit_txn(conn, actor=created_by, action="workflow.deploy",
                         target_type="workflow", target_id=workflow_id,
                         before={"versionId": before},
                         after={"versionId": rec.id, "version": rec.label}, now=self.clock())
            return rec

    def set_workflow_status(self, workflow_id: str, status: WorkflowStatus, reason: str | None,
                            actor: str) -> WorkflowRecord:
        now = self.clock()
        with self.write() as conn:
            before = wf.get(conn, workflow_id)
            wf.set_status_txn(conn, workflow_id, status, reason, now)
            wf.audit_txn(conn, actor=actor, action=f"workflow.{status.value}",
                         target_type="workflow", target_id=workflow_id,
                         before={"status": before.status.value, "reason": before.status_reason},
                         after={"status": status.value, "reason": reason}, now=now)
            return wf.get(conn, workflow_id)

    def find_workflow(self, name: str) -> WorkflowRecord | None:
        with self.read() as conn:
            return wf.find(conn, name)

    def list_workflows(self) -> list[WorkflowRecord]:
        with self.read() as conn:
            return wf.list_all(conn)

    def skip_event(self, workflow_id: str, topic: str, message_id: str, actor: str
                   ) -> EventRecord:
        now = self.clock()
        with self.write() as conn:
            before = ev.by_message_ids(conn, workflow_id, topic, [message_id]).get(message_id)
            rec = ev.skip_event_txn(conn, workflow_id, topic, message_id, actor, now)
            wf.audit_txn(conn, actor=actor, action="event.skip", target_type="event",
                         target_id=f"{workflow_id}/{topic}/{message_id}",
                         before={"status": before.status.value if before else None},
                         after={"status": rec.status.value}, now=now)
            return rec

    def set_inbound_token(self, workflow_id: str, token_sha256: str | None, actor: str) -> None:
        """Replace (or, with None, revoke) the token of a workflow's inbound events, audited
        (the audit record never holds the token)."""
        now = self.clock()
        with self.write() as conn:
            had = ev.inbound_token_txn(conn, workflow_id, token_sha256, actor, now)
            wf.audit_txn(conn, actor=actor, action="workflow.inbound_token",
                         target_type="workflow", target_id=workflow_id,
                         before={"token": "set" if had else "none"},
                         after={"token": "set" if token_sha256 else "none"}, now=now)

    def inbound_token_sha(self, workflow_id: str) -> str | None:
        with self.read() as conn:
            return ev.inbound_token_sha(conn, workflow_id)

    def publish_inbound(self, workflow_id: str, draft: EventDraft, quota: int | None
                        ) -> PublishReport:
        """An event from outside (docs/api.md#inbound-events): inserted exactly like a
        producer's publish — an existing messageId is a no-op — and charged to the workflow's
        storage in the same transaction (refused past ``quota``)."""
        now = self.clock()
        with self.write() as conn:
            report = ev.publish_txn(conn, workflow_id, None, [draft], now,
                                    note="received over HTTP")
            if report.inserted:
                wf.charge_storage_txn(conn, workflow_id, draft.size, quota)
                wf.touch_txn(conn, workflow_id, now)
            return report

    # -- connection secrets (sealed by keepflow.credentials; the audit never holds them) --

    def put_credential(self, name: str, ciphertext: str, actor: str) -> None:
        now = self.clock()
        with self.write() as conn:
            had = creds.put_txn(conn, name, ciphertext, actor, now)
            wf.audit_txn(conn, actor=actor, action="credential.set", target_type="credential",
                         target_id=name, before={"secret": "set" if had else "none"},
                         after={"secret": "set"}, now=now)

    def credential_ciphertext(self, name: str) -> str | None:
        with self.read() as conn:
            return creds.ciphertext(conn, name)

    def delete_credentials(self, names: list[str], actor: str) -> list[str]:
        now = self.clock()
        with self.write() as conn:
            gone = creds.delete_txn(conn, names)
            for name in gone:
                wf.audit_txn(conn, actor=actor, action="credential.removed",
                             target_type="credential", target_id=name,
                             before={"secret": "set"}, after={"secret": "none"}, now=now)
            return gone

    def credential_list(self, prefix: str = "") -> list[dict[str, Any]]:
        with self.read() as conn:
            return creds.listing(conn, prefix)

    def credentials_marker(self) -> str:
        with self.read() as conn:
            return creds.marker(conn)

    def audit(self, *, actor: str, action: str, target_type: str, target_id: str,
              before: Any = None, after: Any = None, detail: str | None = None) -> None:
        with self.write() as conn:
            wf.audit_txn(conn, actor=actor, action=action, target_type=target_type,
                         target_id=target_id, before=before, after=after, detail=detail,
                         now=self.clock())

    def audit_entries(self, target_type: str | None = None, target_id: str | None = None
                      ) -> list[dict[str, Any]]:
        with self.read() as conn:
            return wf.audit_entries(conn, target_type, target_id)
