"""``/metrics``: the gateway's counts (``gateway/meter.py``) and state in Prometheus's text format,
built when scraped (nothing on the request path). Loaded by the first scrape only.

Counters of money are exact integers (micro-dollars): a float holds every integer up to 2**53,
about $9 billion."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest

from keyplane import __version__
from keyplane.gateway.meter import (
    CACHED_INPUT,
    COST,
    ESTIMATED,
    INPUT,
    LATENCY_BOUNDS_MS,
    OUTPUT,
    REQUESTS,
)

if TYPE_CHECKING:
    from keyplane.gateway.app import Gateway


def exposition(gateway: Gateway) -> Callable[[], bytes]:
    """What /metrics answers, each time it is called: keyplane's own metrics, then the process's
    (memory, CPU, open files) and Python's version."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_GatewayCollector(gateway))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return lambda: generate_latest(registry)


class _GatewayCollector:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        meter, money = gw.meter, gw.pipeline.money
        info = GaugeMetricFamily("keyplane_build_info", "keyplane's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

        labels = ["endpoint", "model", "status", "outcome"]
        requests = CounterMetricFamily(
            "keyplane_requests",
            "Requests forwarded upstream, counted once their usage record is stored. status: the "
            "HTTP status the client got (0: its gateway died); outcome: completed, "
            "client_disconnected, upstream_broken, upstream_unreachable or gateway_lost.",
            labels=labels,
        )
        estimated = CounterMetricFamily(
            "keyplane_requests_tokens_estimated",
            "Of those, requests whose tokens keyplane counted itself (a stream cut short).",
            labels=labels,
        )
        tokens = CounterMetricFamily(
            "keyplane_tokens",
            "Tokens of the requests counted in keyplane_requests_total, as billed.",
            labels=["endpoint", "model", "type"],
        )
        cost = CounterMetricFamily(
            "keyplane_cost_micro_usd",
            "What those requests were charged, in micro-dollars (exact).",
            labels=["endpoint", "model"],
        )
        per_model: dict[tuple[str, str], list[int]] = {}
        for (endpoint, model, status, outcome), row in sorted(meter.settled.items()):
            names = [endpoint, model, str(status), outcome]
            requests.add_metric(names, row[REQUESTS])
            estimated.add_metric(names, row[ESTIMATED])
            sums = per_model.setdefault((endpoint, model), [0, 0, 0, 0])
            for i, field in enumerate((INPUT, CACHED_INPUT, OUTPUT, COST)):
                sums[i] += row[field]
        for (endpoint, model), (inp, cached, out, micro) in per_model.items():
            tokens.add_metric([endpoint, model, "input"], inp)
            tokens.add_metric([endpoint, model, "cached_input"], cached)
            tokens.add_metric([endpoint, model, "output"], out)
            cost.add_metric([endpoint, model], micro)
        yield from (requests, estimated, tokens, cost)

        duration = HistogramMetricFamily(
            "keyplane_request_duration_seconds",
            "How long forwarded requests took, from their arrival to their answer's end "
            "(the upstream's time included).",
            labels=["endpoint"],
        )
        for endpoint, hist in sorted(meter.latency.items()):
            running, buckets = 0, []
            for bound, count in zip((*LATENCY_BOUNDS_MS, None), hist, strict=False):
                running += count
                buckets.append(("+Inf" if bound is None else repr(bound / 1000), running))
            duration.add_metric([endpoint], buckets, sum_value=hist[-1] / 1000)
        yield duration

        errors = CounterMetricFamily(
            "keyplane_errors",
            "Error answers keyplane gave itself, by HTTP status and OpenAI error code: refusals "
            "(invalid_api_key, rate_limit_exceeded, insufficient_quota…) and upstreams it could not "
            "use (those, forwarded, are also in keyplane_requests_total, as are the upstream's "
            "own errors).",
            labels=["status", "code"],
        )
        for (status, code), count in sorted(meter.errors.items()):
            errors.add_metric([str(status), code], count)
        yield errors

        failures = CounterMetricFamily(
            "keyplane_upstream_failures",
            "Failed tries of an upstream (each retry counts): connect, timeout, closed, "
            "invalid_answer, pool_busy, refused_credentials, status_5xx or answer_too_large.",
            labels=["upstream", "reason"],
        )
        for (upstream, reason), count in sorted(meter.upstream_failures.items()):
            failures.add_metric([upstream, reason], count)
        yield failures

        open_, idle, waiting = gw.pipeline.router.client.pool()
        yield _gauge("keyplane_upstream_connections", "Connections to upstreams open.", open_)
        yield _gauge("keyplane_upstream_connections_idle", "Of those, idle in the pool.", idle)
        yield _gauge(
            "keyplane_upstream_pool_waiting",
            "Requests waiting for a connection (all of upstream_max_connections busy).",
            waiting,
        )
        yield _gauge(
            "keyplane_holds_in_flight",
            "Money holds of requests this process is answering now.",
            money.in_flight,
        )
        yield _gauge(
            "keyplane_settlements_queued",
            "Settled requests not stored in the database yet (stored every "
            "usage_flush_interval_s; requests get 503 at max_unstored_settlements).",
            money.queued,
        )
        yield CounterMetricFamily(
            "keyplane_settlement_flushes_failed",
            "Writes of settled requests the database refused (each is retried).",
            value=gw.flushes_failed,
        )
        yield _gauge(
            "keyplane_settlement_last_flush_timestamp_seconds",
            "When the settled requests were last all stored (Unix time; 0: not yet). Alert "
            "when it falls behind time() by more than a few seconds.",
            gw.last_flush_ok,
        )
        yield _gauge(
            "keyplane_cached_keys", "API keys in this process's cache.", gw.pipeline.auth.cached
        )
        yield _gauge(
            "keyplane_cached_organizations",
            "Organizations whose money this process holds in memory.",
            money.cached_orgs,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
