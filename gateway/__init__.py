"""eldergate: the gateway core (events, outbox, uplink, commands, daemon)."""

__version__ = "0.1.0"
