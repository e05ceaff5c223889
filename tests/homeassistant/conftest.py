"""The button tests' world (a broker, a pty receiver, the platform's subscriber) for these."""

from tests.buttons.test_buttons import receiver, rig  # noqa: F401 - fixtures
