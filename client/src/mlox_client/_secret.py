"""Secret: a credential that never prints."""

from __future__ import annotations

MASK = "[secret]"


class Secret:
    """A credential. Its ``repr``, ``str`` and format are ``[secret]``, so it cannot reach a log
    line, a traceback or an exception message by accident; :meth:`reveal` gives the value to
    the library that needs it.

    Not a ``str`` subclass on purpose: a library that calls ``str()`` on it would otherwise
    send the mask as the password and fail far from here.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        self._value = str(value)

    def reveal(self) -> str:
        """The value in clear (hand it to a library; never print it)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        import hmac

        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self):
        # Pickling would carry the value into caches, task results (Airflow XComs) and logs.
        raise TypeError("a Secret is not pickled: pass the stack's name and connect() where it is used")


def reveal(value: str | Secret | None) -> str | None:
    """The value in clear, whether it is a Secret or plain text."""
    return value.reveal() if isinstance(value, Secret) else value
