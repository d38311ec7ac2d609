"""Connection secrets kept by keepflow, encrypted at rest (docs/security.md#secrets).

``keepflow connection add`` reads a secret from a prompt or stdin (never from argv), seals it
with the home's key (:mod:`.keys`) and keeps only the sealed token in the store
(:mod:`.vault`); ``connections.toml`` names it (``token_secret = "slack.token"``) and holds
no secret. Opening happens where a connection is built: the value becomes a
:class:`~keepflow.connectors.secret.Secret`, which never prints itself.
"""
