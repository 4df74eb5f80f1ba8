"""The errors of mlox-client: one base, each message one sentence that says what to do.

No message carries a credential: they name settings by their variable, never by value.
"""

from __future__ import annotations


class MloxClientError(Exception):
    """Base of every mlox-client error."""


class NotConfigured(MloxClientError):
    """No source of a stack's settings applies (the message names all four)."""


class ProfileError(MloxClientError):
    """A profile file that cannot be used: unreadable, not ours, or readable by other users."""


class NotInStack(MloxClientError):
    """The stack does not run the service (the message names the setting that enables it)."""


class SettingMissing(MloxClientError):
    """The stack runs the service, but a setting a client needs is not in the settings found."""


class MissingExtra(MloxClientError):
    """An integration's library is not installed (the message names the extra)."""


class InsecureTLS(MloxClientError):
    """Something asks to turn TLS verification off, which mlox-client never does."""


class TunnelError(MloxClientError):
    """The SSH tunnel to a service that only the server itself reaches did not open."""


class RemoteError(MloxClientError):
    """A service answered with an error (its status, the URL and the start of its answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
