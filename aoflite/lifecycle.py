"""Whether a handle may still be used, and why not: one object every room
of a handle consults, so closing, a writer that cannot go on, and a fork
refuse every call the same way."""

from __future__ import annotations

from collections.abc import Callable

from . import errors

__all__ = ["Lifecycle"]


class Lifecycle:
    """``usable`` is the one flag the hot paths read; ``check()`` raises
    what the handle now says to every call."""

    __slots__ = ("path", "usable", "closed", "_refusal", "_on_refuse")

    def __init__(self, path: str):
        self.path = path
        self.usable = True
        self.closed = False
        self._refusal: Callable[[], BaseException] | None = None
        self._on_refuse: list[Callable[[], None]] = []

    @property
    def refused(self) -> bool:
        """True once something made the handle refuse every call."""
        return self._refusal is not None

    def check(self) -> None:
        """Raise ClosedError, or the refusal, unless the handle is usable."""
        if self.closed:
            raise errors.ClosedError(f"{self.path}: store is closed")
        if self._refusal is not None:
            raise self._refusal()

    def on_refuse(self, hook: Callable[[], None]) -> None:
        """Call hook when the handle starts refusing (to swap out hot paths)."""
        self._on_refuse.append(hook)

    def refuse(self, make: Callable[[], BaseException]) -> None:
        """From now on every call raises make(); the first reason stays."""
        if self._refusal is None:
            self._refusal = make
        self.usable = False
        for hook in self._on_refuse:
            hook()

    def close(self) -> None:
        """Every call from now on raises ClosedError."""
        self.closed = True
        self.usable = False
