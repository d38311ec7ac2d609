"""keepflow: durable delegated automations."""

__version__ = "0.1.0"
