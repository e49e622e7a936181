"""A wrapper for values that must never reach a log, a transcript or an exception message."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Secret(Generic[T]):
    """Holds a secret value; ``repr``/``str``/``format`` never show it.

    Only :meth:`reveal` gives the value back, so every place that needs the plaintext is
    greppable.
    """

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "Secret(<redacted>)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> object:  # never pickle the plaintext by accident
        raise TypeError("Secret values cannot be pickled")
