"""``Value``: the base of the small immutable records made on every proxied request (holds, usage
records, rate-limit decisions...).

Why not NamedTuple or dataclass: keyplane's request path is compiled with mypyc
(scripts/compile.py), which turns a plain class with an ``__init__`` into a C struct built in
~20 ns, while a NamedTuple's ``__new__`` and a dataclass's generated ``__init__`` stay Python
functions (~300 ns; ~700 ns frozen), with keyword arguments more. At a dozen records per request
that was ~16 % of its instructions (bench/RESULTS.md, 2026-12-05 notes).

A subclass lists its attributes in ``FIELDS``, in the order of its ``__init__``'s parameters
(tests/unit/test_values.py checks every subclass), sets them once in ``__init__`` and never
again; ``Value`` gives it equality, hashing, ``repr`` and ``replace`` over those fields.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self


class Value:
    __slots__ = ()
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def astuple(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self.FIELDS])

    def asdict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` (off the request's usual path: a clamped hold, a corrected
        record)."""
        return type(self)(**{**self.asdict(), **changes})

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, Value)
            and self.astuple() == other.astuple()
        )

    def __hash__(self) -> int:
        return hash(self.astuple())

    def __repr__(self) -> str:
        inner = ", ".join([f"{name}={getattr(self, name)!r}" for name in self.FIELDS])
        return f"{type(self).__name__}({inner})"
