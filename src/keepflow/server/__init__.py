"""The long-running host and how other processes reach it.

- ``serve``: ``keepflow serve`` — the scheduler loop, the HTTP API and discovery (``serve.json``);
- ``client``: finding a running server and calling its API from another process;
- ``link``: the CLI's adapter that decides "a server is running, tell it" (the service layer
  only knows the :class:`keepflow.runtime.host.Handoff` it is given).
"""
