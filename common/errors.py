"""The gateway's exception tree: each class says what the caller should do next.

- `TransientError`: retry later (broker down, disk busy, receiver unplugged).
- `ConfigError`: stop and say why; retrying cannot help until a person fixes the file.
- `AuthError`: the broker refused our credentials; back off hard and report.
- `StorageError`: the durable store cannot take the write; the caller must not assume
  the event was accepted.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid; the message names the key (and line where known)."""


class TransientError(GatewayError):
    """A temporary failure: the operation may succeed if retried later."""


class AuthError(GatewayError):
    """The broker rejected the gateway's credentials or authorisation."""


class StorageError(GatewayError):
    """The outbox could not durably store or read data."""


class StorageFullError(StorageError):
    """The disk or the outbox's page budget is full; nothing more can be accepted now."""


class StoreCorruptError(StorageError):
    """The SQLite file failed its integrity check or is not a database."""


class StartupTimeoutError(GatewayError):
    """A daemon start-up step did not finish in time (the message names the step)."""
