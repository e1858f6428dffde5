"""What the gateway did, counted for ``/metrics`` as plain integers where the work happens: the
settled requests as each batch of them is stored (not on the request path), the errors keyplane
answers itself, the upstreams' failures. ``gateway/metrics.py`` turns them into Prometheus's text
only when scraped. Labels are bounded: endpoints, priced models (a request for any other model is
refused before it is forwarded), statuses, outcomes, error codes and configured upstreams; never
an organization, a key or an address."""

from __future__ import annotations

from bisect import bisect_left

from keyplane.usage.records import UsageRecord

# A request's whole duration, upstream included (a usage record's ``latency_ms``), in ms.
LATENCY_BOUNDS_MS = (
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000,
)  # fmt: skip

MAX_TRACKED = 100_000  # keys' addresses, and keys' hours of spend, kept between two takes

# The fields of a ``settled`` row.
REQUESTS, INPUT, CACHED_INPUT, OUTPUT, COST, ESTIMATED = range(6)


class Meter:
    def __init__(self) -> None:
        # (endpoint, model, status, outcome) → [requests, input tokens, cached input tokens,
        # output tokens, cost in micro-dollars, requests whose tokens keyplane estimated]
        self.settled: dict[tuple[str, str, int, str], list[int]] = {}
        # endpoint → [requests in each bucket of LATENCY_BOUNDS_MS (not cumulative), the last
        # one above every bound, then the sum of their latencies in ms]
        self.latency: dict[str, list[int]] = {}
        self.errors: dict[tuple[int, str], int] = {}  # (status, code) → answers
        # Each key's activity since ``take_activity`` (keys/anomalies.py reads it): the client
        # addresses it was used from, and what it spent per hour.
        self.key_addresses: dict[tuple[str, str, str], None] = {}  # (org, key, address)
        self.key_spend: dict[tuple[str, str, int], int] = {}  # (org, key, hour) → micro-dollars
        self.upstream_failures: dict[tuple[str, str], int] = {}  # (upstream, reason) → failures

    def settle(self, r: UsageRecord) -> None:
        """Counts a request whose usage record was stored."""
        key = (r.endpoint, r.model, r.status, r.outcome._value_)
        row = self.settled.get(key)
        if row is None:
            row = self.settled[key] = [0, 0, 0, 0, 0, 0]
        row[REQUESTS] += 1
        row[INPUT] += r.input_tokens
        row[CACHED_INPUT] += r.cached_input_tokens
        row[OUTPUT] += r.output_tokens
        row[COST] += r.cost_micro_usd
        if r.tokens_estimated:
            row[ESTIMATED] += 1
        hist = self.latency.get(r.endpoint)
        if hist is None:
            hist = self.latency[r.endpoint] = [0] * (len(LATENCY_BOUNDS_MS) + 2)
        hist[bisect_left(LATENCY_BOUNDS_MS, r.latency_ms)] += 1
        hist[-1] += r.latency_ms
        # (Bounded, should nothing take them: a gateway built without the anomaly watcher.)
        self.used_from(r.org_id, r.key_id, r.client_ip)
        if r.cost_micro_usd and len(self.key_spend) < MAX_TRACKED:
            spent = (r.org_id, r.key_id, r.created_at // 3600)
            self.key_spend[spent] = self.key_spend.get(spent, 0) + r.cost_micro_usd

    def used_from(self, org_id: str, key_id: str, client_ip: str | None) -> None:
        """A key used from ``client_ip`` (a settled request, or an admin key's call)."""
        if client_ip is not None and len(self.key_addresses) < MAX_TRACKED:
            self.key_addresses[(org_id, key_id, client_ip)] = None

    def take_activity(
        self,
    ) -> tuple[dict[tuple[str, str, str], None], dict[tuple[str, str, int], int]]:
        """The keys' addresses and hourly spend since the last call (and forgets them)."""
        taken = self.key_addresses, self.key_spend
        self.key_addresses, self.key_spend = {}, {}
        return taken

    def error(self, status: int, code: str | None) -> None:
        """Counts an error answer keyplane gave itself (a refusal, an upstream it could not use)."""
        key = (status, code or "")
        self.errors[key] = self.errors.get(key, 0) + 1

    def upstream_failed(self, upstream: str, reason: str) -> None:
        key = (upstream, reason)
        self.upstream_failures[key] = self.upstream_failures.get(key, 0) + 1
