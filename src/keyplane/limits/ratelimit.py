"""Rate limits: what a request costs, which limits apply, and one atomic decision over all of them.

The algorithm is GCRA with one theoretical arrival time (TAT) per scope x dimension, a *cell*.
A cell with limit ``L`` per period ``P`` (60 s, or 86 400 s for RPD) emits one unit every
``T = P / L`` seconds. Its TAT is when everything it admitted would have been emitted at that steady
rate, so ``TAT - now`` is how far ahead of its rate the cell runs (0: at rest, and then forgotten).

**Burst, exactly.** Each cell has a burst ``b >= 0`` in units. A request costing ``c`` units at
time ``t`` is admitted iff, once charged, the cell is at most ``b + 1`` units ahead of its rate::

    max(TAT, t) + c·T - t <= (b + 1)·T          and then  TAT := max(TAT, t) + c·T

So ``b + 1`` units go through at one instant from rest, and in every window ``[t, t + P)`` at most
``L + b`` units are admitted: the debt ``TAT - s`` drains at most one second per second and stays
``<= (b + 1)·T`` after each admission, hence ``Σc·T < (b + 1)·T + P``, i.e. ``Σc <= L + b``.
``b = 0`` is strict pacing (never more than ``L`` in any window of one period). A request with
``c > b + 1`` can never be admitted: it is rejected as *too large*, without a retry time.

Default bursts (``burst_for``): RPM gets 10 seconds' worth, ``ceil(L / 6)`` (RPM 60: burst 10, so
at most 70 in any 60 s, while random traffic at half the limit is almost never rejected).
Tokens, images, audio MB and RPD get ``b = L - 1``: any single request within the limit can
succeed and at most ``L`` are admitted at one instant, at the price of up to ``2L - 1`` in one
period (a day's requests may be spent in the morning). ``settle`` adds token overruns on top.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any, Protocol, final

from keyplane.values import Value

DEFAULT_RPM_BURST_S = 10.0
_EPS = 1e-9  # seconds; absorbs float rounding in sums like 10 x 1000 tokens x (60 / 10000)


class Dimension(StrEnum):
    REQUESTS = "requests"  # per minute
    TOKENS = "tokens"  # per minute
    REQUESTS_PER_DAY = "requests_per_day"
    IMAGES = "images"  # per minute
    AUDIO_MB = "audio_mb"  # per minute

    @property
    def period(self) -> float:
        return 86_400.0 if self is Dimension.REQUESTS_PER_DAY else 60.0


# The members the hot path compares against, as module constants: on Python 3.11 every
# ``Dimension.TOKENS`` goes through the enum metaclass's ``__getattr__`` hook (~80 ns, against
# ~10 ns for a global), and the limiter looks several up per request.
_REQUESTS = Dimension.REQUESTS
_TOKENS = Dimension.TOKENS
_TOKENS_PERIOD = Dimension.TOKENS.period


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """Limits for one model in one scope; None means no limit on that dimension."""

    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    images_per_min: int | None = None
    audio_mb_per_min: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_limit(f.name, getattr(self, f.name))

    def limit(self, dimension: Dimension) -> int | None:
        value: int | None = getattr(self, _FIELD[dimension])
        return value

    def items(self) -> Iterator[tuple[Dimension, int]]:
        """Yields (dimension, limit) for every limited dimension."""
        for dimension, name in _FIELD.items():
            value = getattr(self, name)
            if value is not None:
                yield dimension, value


MAX_LIMIT = 2**31 - 1  # the largest limit a database column holds (PostgreSQL's INTEGER)
MAX_TOKEN_LIMIT = 10**15  # tokens a minute (a BIGINT column)

# The Admin API's name of each limit (OpenAI's project rate limit fields).
API_NAMES = {
    "rpm": "max_requests_per_1_minute",
    "tpm": "max_tokens_per_1_minute",
    "rpd": "max_requests_per_1_day",
    "images_per_min": "max_images_per_1_minute",
    "audio_mb_per_min": "max_audio_megabytes_per_1_minute",
}


class LimitOutOfRange(ValueError):
    """A limit's value out of range; ``param`` is the limit's Admin API name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.param = API_NAMES.get(name, name)


def _check_limit(name: str, value: object) -> None:
    if value is not None and (type(value) is not int or not 0 < value <= MAX_TOKEN_LIMIT):
        raise LimitOutOfRange(
            name,
            f"{name} must be a positive integer up to {MAX_TOKEN_LIMIT:,} or None, not {value!r}",
        )


def storable(limits: ModelLimits) -> ModelLimits:
    """``limits`` if a project's or a key's override can hold them (the database's columns);
    raises LimitOutOfRange for the first that cannot."""
    for name in API_NAMES:
        value: int | None = getattr(limits, name)
        top = MAX_TOKEN_LIMIT if name == "tpm" else MAX_LIMIT
        if value is not None and value > top:
            raise LimitOutOfRange(name, f"{API_NAMES[name]} must be at most {top:,}, not {value:,}")
    return limits


def with_changes(
    current: ModelLimits | None, change: Mapping[str, int | None]
) -> ModelLimits | None:
    """``current`` with the limits ``change`` names set (None lifts one), the others kept; None
    when no limit is left. Raises LimitOutOfRange for a value out of range."""
    merged = storable(replace(current or ModelLimits(), **change))
    return None if merged == ModelLimits() else merged


def limits_from(values: Mapping[str, Any]) -> ModelLimits:
    """ModelLimits from values nobody has checked (an operator's tier file). The ValueError names
    the field whatever the value's type: compiled (scripts/compile.py), ModelLimits itself refuses
    a value of the wrong type with a TypeError from its constructor, before ``__post_init__``."""
    for name, value in values.items():
        _check_limit(name, value)
    return ModelLimits(**values)


_FIELD: dict[Dimension, str] = {
    Dimension.REQUESTS: "rpm",
    Dimension.TOKENS: "tpm",
    Dimension.REQUESTS_PER_DAY: "rpd",
    Dimension.IMAGES: "images_per_min",
    Dimension.AUDIO_MB: "audio_mb_per_min",
}
UNLIMITED = ModelLimits()


def effective(
    org: ModelLimits, project: ModelLimits | None = None, key: ModelLimits | None = None
) -> ModelLimits:
    """Returns the per-dimension minimum: overrides can lower the organization's limits, never
    raise them (an override above the tier's limit simply has no effect)."""
    values: dict[str, int | None] = {}
    for name in _FIELD.values():
        given = [v for v in (getattr(s, name) for s in (org, project, key) if s) if v is not None]
        values[name] = min(given) if given else None
    return ModelLimits(**values)


def raised_fields(base: ModelLimits, override: ModelLimits) -> tuple[str, ...]:
    """Returns the fields where ``override`` asks for more than ``base`` allows, for refusing such
    an override when it is written (``effective`` ignores it anyway)."""
    return tuple(
        name
        for name in _FIELD.values()
        if (b := getattr(base, name)) is not None
        and (o := getattr(override, name)) is not None
        and o > b
    )


def burst_for(dimension: Dimension, limit: int, rpm_burst_s: float = DEFAULT_RPM_BURST_S) -> int:
    """Returns the burst ``b`` of a cell (see the module docstring for what it guarantees)."""
    if dimension is Dimension.REQUESTS:
        return min(limit - 1, math.ceil(limit * rpm_burst_s / dimension.period - _EPS))
    return limit - 1


@dataclass(frozen=True, slots=True, eq=False)
class LimitScope:
    """One set of limits a request counts against, e.g. ``org:org-1:gpt-4o-mini``.

    Compared and hashed by identity: the limiter caches each scope's plan under the scope object
    itself, and hashing the limits field by field on every request cost more than the plan."""

    scope_id: str
    limits: ModelLimits


def scope_id(kind: str, owner_id: str, model: str) -> str:
    """Returns the id of a scope's cells: ``kind`` is "org", "project" or "key"; ``model`` is the
    one the limits were looked up for (snapshots share their base model's cells)."""
    return f"{kind}:{owner_id}:{model}"


@final
class Cost(Value):
    """What a request takes: ``tokens`` is the estimated prompt plus ``max_tokens``; audio in whole
    megabytes, rounded up. (Never negative: the limiter refuses such a cost.)"""

    FIELDS = ("tokens", "requests", "images", "audio_mb")
    __slots__ = FIELDS

    def __init__(
        self, tokens: int = 0, requests: int = 1, images: int = 0, audio_mb: int = 0
    ) -> None:
        self.tokens = tokens
        self.requests = requests
        self.images = images
        self.audio_mb = audio_mb

    def amounts(self) -> tuple[int, int, int, int]:
        """The units of every dimension, each at its place in ``_UNITS_AT``."""
        return (self.requests, self.tokens, self.images, self.audio_mb)

    def units(self, dimension: Dimension) -> int:
        return self.amounts()[_UNITS_AT[dimension]]


# Where each dimension's units are in ``Cost.amounts()`` (requests per day count requests).
_UNITS_AT = {
    Dimension.REQUESTS: 0, Dimension.TOKENS: 1, Dimension.REQUESTS_PER_DAY: 0,
    Dimension.IMAGES: 2, Dimension.AUDIO_MB: 3,
}  # fmt: skip


@final
class Headroom(Value):
    """One ``x-ratelimit-*`` triple: the limit, units admittable right now, seconds until at rest."""

    FIELDS = ("limit", "remaining", "reset_s")
    __slots__ = FIELDS

    def __init__(self, limit: int, remaining: int, reset_s: float) -> None:
        self.limit = limit
        self.remaining = remaining
        self.reset_s = reset_s


@final
class Rejection(Value):
    FIELDS = ("scope_id", "dimension", "limit", "used", "requested", "retry_after", "too_large")
    __slots__ = FIELDS

    def __init__(
        self,
        scope_id: str,
        dimension: Dimension,
        limit: int,
        used: int,  # limit minus what is admittable now: what the limiter counts against the limit
        requested: int,
        retry_after: float | None,  # seconds until this request would fit; None when too_large
        too_large: bool = False,  # larger than the cell can ever admit: retrying cannot help
    ) -> None:
        self.scope_id = scope_id
        self.dimension = dimension
        self.limit = limit
        self.used = used
        self.requested = requested
        self.retry_after = retry_after
        self.too_large = too_large


@final
class Ticket:
    """An admitted request's token charge, to be corrected by ``settle`` exactly once. (A plain
    class, as ``Value``s are, for the same reason; not one: ``settled`` changes.)"""

    __slots__ = ("estimated_tokens", "settled", "token_scopes")

    def __init__(self, estimated_tokens: int, token_scopes: tuple[tuple[str, int], ...]) -> None:
        self.estimated_tokens = estimated_tokens
        self.token_scopes = token_scopes  # (scope id, TPM at admission)
        self.settled = False


@final
class Decision(Value):
    FIELDS = ("admitted", "ticket", "requests", "tokens", "rejection")
    __slots__ = FIELDS

    def __init__(
        self,
        admitted: bool,
        ticket: Ticket | None,  # set when admitted
        requests: Headroom | None,  # of the scope with the fewest requests left (None: no RPM)
        tokens: Headroom | None,  # likewise for TPM
        rejection: Rejection | None = None,
    ) -> None:
        self.admitted = admitted
        self.ticket = ticket
        self.requests = requests
        self.tokens = tokens
        self.rejection = rejection


class RateLimiter(Protocol):
    def admit(self, scopes: Sequence[LimitScope], cost: Cost, now: float) -> Decision:
        """Returns a decision over every scope and dimension at once: when admitted, all of the
        scopes' cells are charged; when rejected, none is. ``now`` is Unix seconds.

        Raises LimiterUnavailable when a shared store cannot be reached (the caller's fail mode
        decides what happens then)."""
        ...

    def settle(self, ticket: Ticket, actual_tokens: int, now: float) -> None:
        """Corrects the ticket's token charge to ``actual_tokens`` (refund or overrun); a ticket
        settles once, later calls do nothing.

        Raises LimiterUnavailable like ``admit``."""
        ...


class LimiterUnavailable(Exception):
    """A shared limiter store could not answer in time."""


@final
class _Cell:
    """A scope's cell as the limiter plans it, once per scope: its key (scope id, dimension), limit,
    emission interval ``T``, room ``(b + 1)·T`` and where its units are in ``Cost.amounts()``.
    (Classes rather than tuples here and in ``_Check``: compiled, their numbers stay unboxed;
    the tuples' allocations and boxed numbers were ~a sixth of a call's instructions.)"""

    __slots__ = ("at", "interval", "key", "limit", "room")

    def __init__(
        self, key: tuple[str, Dimension], limit: int, interval: float, room: float, at: int
    ) -> None:
        self.key = key
        self.limit = limit
        self.interval = interval
        self.room = room
        self.at = at


@final
class _Check:
    """One cell's arithmetic for one request: its units, and its debt (seconds ahead of the cell's
    rate) before and after the charge."""

    __slots__ = ("cell", "debt_after", "debt_before", "units")

    def __init__(self, cell: _Cell, units: int, debt_before: float, debt_after: float) -> None:
        self.cell = cell
        self.units = units
        self.debt_before = debt_before
        self.debt_after = debt_after


def _available(interval: float, room: float, debt: float) -> int:
    """Units admittable now at this debt (negative when a settled overrun put the cell beyond
    its room)."""
    return math.floor((room - debt + _EPS) / interval)


_Plan = tuple[_Cell, ...]
_MAX_PLANS = 100_000


class InMemoryRateLimiter:
    """The limiter of a single gateway process: one lock, O(scopes x dimensions) per call.

    Thread-safe; the lock is held for microseconds, so calling it from the event loop is fine.
    Memory stays bounded: once more than ``keep`` cells are remembered, each call also inspects a
    few of the oldest cells and forgets those at rest (a forgotten cell and a cell at rest behave
    identically), moving the others to the back. (A charge does not move its cell: that was ~1% of
    a request's instructions, and the sweep finds busy cells the same either way.) Below that
    nothing is swept: inspecting cells on every call was ~40% of a call's time, for memory that a
    few thousand cells do not need."""

    def __init__(self, rpm_burst_s: float = DEFAULT_RPM_BURST_S, *, keep: int = 4096) -> None:
        if not rpm_burst_s >= 0:
            raise ValueError("rpm_burst_s must be >= 0")
        self._rpm_burst_s = rpm_burst_s
        self._keep = keep
        self._lock = threading.Lock()
        # TATs relative to the first `now` seen, so floats keep ~10 ps resolution instead of the
        # ~0.2 µs of raw Unix seconds (a TPM of 150M is 0.4 µs per token).
        self._epoch: float | None = None
        self._cells: OrderedDict[tuple[str, Dimension], float] = OrderedDict()
        self._plans: dict[LimitScope, _Plan] = {}
        # Each cell's emission interval as last planned: when a limit changes, its debt is carried
        # over in units (see ``_carried``).
        self._intervals: dict[tuple[str, Dimension], float] = {}

    def admit(self, scopes: Sequence[LimitScope], cost: Cost, now: float) -> Decision:
        amounts = requests, tokens, images, audio_mb = cost.amounts()
        if requests < 0 or tokens < 0 or images < 0 or audio_mb < 0:
            raise ValueError("a cost cannot be negative")
        with self._lock:
            t = self._clock(now)
            cells = self._cells
            checks: list[_Check] = []
            pending: dict[tuple[str, Dimension], float] = {}
            over = False
            for scope in scopes:
                for cell in self._plan(scope, t):
                    key, interval, room = cell.key, cell.interval, cell.room
                    units = amounts[cell.at]
                    tat = pending.get(key)
                    if tat is None:
                        tat = cells.get(key, t)
                    base = tat if tat > t else t
                    after = pending[key] = base + units * interval
                    debt_after = after - t
                    # Too large for the cell at all, or not room for it now.
                    if debt_after - room > _EPS or units * interval > room + _EPS:
                        over = True
                    checks.append(_Check(cell, units, base - t, debt_after))
            rejection = _worst(checks) if over else None
            if rejection is None:
                for key, tat in pending.items():
                    if tat > t:
                        cells[key] = tat
            if len(cells) > self._keep:
                self._sweep(t, 2 * len(pending) + 2)
        return _decision(checks, rejection, cost)

    def _plan(self, scope: LimitScope, t: float) -> _Plan:
        """The scope's cells with their limit, emission interval and room, computed once."""
        plan = self._plans.get(scope)
        if plan is None:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
                self._intervals.clear()
            cells = []
            for dimension, limit in scope.limits.items():
                interval = dimension.period / limit
                room = (burst_for(dimension, limit, self._rpm_burst_s) + 1) * interval
                key = (scope.scope_id, dimension)
                self._carried(key, interval, room, t)
                cells.append(_Cell(key, limit, interval, room, _UNITS_AT[dimension]))
            plan = tuple(cells)
            self._plans[scope] = plan
        return plan

    def _carried(self, key: tuple[str, Dimension], interval: float, room: float, t: float) -> None:
        """Carries a cell's debt over to a changed limit in units, not seconds: 2 requests used
        of an RPM of 2 are 2 used of a raised RPM of 100, not a minute's wait; a day's requests
        used up stay used up, not a day's wait, after a tier promotion raises RPD. Lowered, a
        cell is at most full (one unit's wait), not the old units' time at the new rate."""
        before = self._intervals.get(key)
        self._intervals[key] = interval
        tat = self._cells.get(key)
        if before is None or before == interval or tat is None or tat <= t:
            return
        debt = (tat - t) * (interval / before)
        self._cells[key] = t + (debt if debt < room else room)

    def settle(self, ticket: Ticket, actual_tokens: int, now: float) -> None:
        if actual_tokens < 0:
            raise ValueError("actual_tokens cannot be negative")
        with self._lock:
            if ticket.settled:
                return
            ticket.settled = True
            delta = actual_tokens - ticket.estimated_tokens
            if delta == 0:
                return
            t = self._clock(now)
            cells = self._cells
            for scope_id, tpm in ticket.token_scopes:
                key = (scope_id, _TOKENS)
                tat = cells.get(key, t)
                # A refund never goes below rest: unused time is not banked for later bursts.
                tat = (tat if tat > t else t) + delta * _TOKENS_PERIOD / tpm
                if tat > t:
                    cells[key] = tat
                else:
                    cells.pop(key, None)

    def snapshot(self, now: float) -> dict[tuple[str, Dimension], float]:
        """Returns seconds until at rest for every cell that is not at rest (for tests, metrics)."""
        with self._lock:
            t = self._clock(now)
            return {key: tat - t for key, tat in self._cells.items() if tat > t}

    def __len__(self) -> int:
        return len(self._cells)

    def _clock(self, now: float) -> float:
        if self._epoch is None:
            self._epoch = now
        return now - self._epoch

    def _sweep(self, t: float, budget: int) -> None:
        cells = self._cells
        for _ in range(min(budget, len(cells))):
            key = next(iter(cells))
            if cells[key] <= t:
                del cells[key]
            else:
                cells.move_to_end(key)


def _worst(checks: Sequence[_Check]) -> Rejection | None:
    """Returns the rejection to report: a too-large request first, else the longest wait."""
    worst: Rejection | None = None
    for check in checks:
        cell, units = check.cell, check.units
        interval, room, limit = cell.interval, cell.room, cell.limit
        scope, dimension = cell.key
        too_large = units > 0 and units * interval > room + _EPS
        wait = check.debt_after - room
        if not too_large and wait <= _EPS:
            continue
        used = limit - _available(interval, room, check.debt_before)
        candidate = Rejection(
            scope, dimension, limit, used, units, None if too_large else wait, too_large
        )
        if (
            worst is None
            or (too_large and not worst.too_large)
            or (not worst.too_large and not too_large and wait > (worst.retry_after or 0.0))
        ):
            worst = candidate
    return worst


def _decision(checks: Sequence[_Check], rejection: Rejection | None, cost: Cost) -> Decision:
    """The decision with, per dimension shown to clients, the headroom of the scope with the fewest
    units left (on a tie, the one furthest from rest), after the charge when admitted."""
    admitted = rejection is None
    requests: tuple[int, float, int] | None = None  # (remaining, debt, limit)
    tokens: tuple[int, float, int] | None = None
    token_scopes: list[tuple[str, int]] = []
    for check in checks:
        cell = check.cell
        scope, dimension = cell.key
        limit = cell.limit
        is_tokens = dimension is _TOKENS
        if is_tokens:
            token_scopes.append((scope, limit))
        elif dimension is not _REQUESTS:
            continue
        debt = check.debt_after if admitted else check.debt_before
        remaining = _available(cell.interval, cell.room, debt)
        remaining = 0 if remaining < 0 else limit if remaining > limit else remaining
        best = tokens if is_tokens else requests
        if best is None or remaining < best[0] or (remaining == best[0] and debt > best[1]):
            if is_tokens:
                tokens = (remaining, debt, limit)
            else:
                requests = (remaining, debt, limit)
    return Decision(
        admitted,
        Ticket(cost.tokens, tuple(token_scopes)) if admitted else None,
        None if requests is None else Headroom(requests[2], requests[0], requests[1]),
        None if tokens is None else Headroom(tokens[2], tokens[0], tokens[1]),
        rejection,
    )
