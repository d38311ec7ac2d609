"""The CLI's adapter to a running server: the one place that decides "a server is running,
tell it" (docs/architecture.md "Layers").

The service layer knows nothing of HTTP; it is given a :class:`~keepflow.runtime.host.Handoff`
and asks it to carry a workflow on. Run from the CLI, that is a :class:`ServerLink`: when a
``keepflow serve`` holds this home, the server is told to re-read the workflow (it resumes the
run between runs, under its own lease); otherwise the caller does the work itself.
"""

from __future__ import annotations

import contextlib
from functools import cached_property

from keepflow.errors import KeepflowError
from keepflow.server.client import ServerInfo, find_server
from keepflow.settings import Settings


class ServerLink:
    """A :class:`~keepflow.runtime.host.Handoff` to the server of ``settings``' home, if any."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def server(self) -> ServerInfo | None:
        """The running server, looked up once per command (a process that starts one later
        is told by the next command)."""
        return find_server(self.settings)

    def hand_over(self, workflow: str) -> bool:
        """Tell the running server to carry ``workflow`` on now; False when none runs."""
        if self.server is None:
            return False
        self.server.post(f"/api/workflows/{workflow}/refresh", timeout=10.0)
        return True

    def notify(self, workflow: str) -> None:
        """A running server re-reads ``workflow`` now (it would notice within a second
        anyway, so a failure to tell it is not an error)."""
        with contextlib.suppress(KeepflowError):
            self.hand_over(workflow)
