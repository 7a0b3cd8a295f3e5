"""Prometheus metrics of the transfer path. Label values are bounded: never a transfer id."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kvferry.statemachine import Coordinator, Listener, Outcome, State, Transfer

# *_created series double the scrape for no dashboard's benefit.
disable_created_metrics()

_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class TransferMetrics(Listener):
    """Counts what the coordinator reports; gauges are read from it at scrape time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.resumes_total = Counter("kvferry_resumes", "Resumes applied: a window was read and the "
                               "next one given to the sender.", registry=registry)
        self.duplicates_total = Counter(
            "kvferry_resume_duplicates_skipped",
            "Resumes skipped because their sent_tokens was already applied (reason=repeat: equal "
            "to the last applied; stale: older). Retries and extra tensor-parallel ranks.",
            ["reason"], registry=registry)
        self.started_total = Counter("kvferry_transfers_started", "Transfers opened.", registry=registry)
        self.finished_total = Counter("kvferry_transfers_finished",
                                "Transfers that reached a terminal state, by outcome.",
                                ["outcome"], registry=registry)
        self.released_total = Counter("kvferry_transfers_released",
                                "Transfers released (by=client: Release; retention: timed out "
                                "unreleased).", ["by"], registry=registry)
        self.tokens_total = Counter("kvferry_tokens_received", "Rows (tokens) written into the pool.",
                              registry=registry)
        self.bytes_total = Counter("kvferry_bytes_received", "Row bytes written into the pool.",
                             registry=registry)
        self.duration = Histogram("kvferry_transfer_duration_seconds",
                                  "Open to terminal state.", buckets=_DURATION_BUCKETS,
                                  registry=registry)
        self.window_wait = Histogram("kvferry_window_wait_seconds",
                                     "Window full to resume applied: how long receivers make "
                                     "senders wait.", buckets=_WAIT_BUCKETS, registry=registry)
        # Children bound once: no label lookup on the hot path, and every series exists from start.
        self._dup = {r: self.duplicates_total.labels(r) for r in ("repeat", "stale")}
        self._finished = {o: self.finished_total.labels(o) for o in Outcome.ALL}
        self._released = {b: self.released_total.labels(b) for b in ("client", "retention")}
        self.row_bytes = 0

    def opened(self, t: Transfer) -> None:
        self.started_total.inc()

    def delivered(self, t: Transfer, tokens: int) -> None:
        self.tokens_total.inc(tokens)
        self.bytes_total.inc(tokens * self.row_bytes)

    def resume_applied(self, t: Transfer, window_wait: float | None) -> None:
        self.resumes_total.inc()
        if window_wait is not None:
            self.window_wait.observe(window_wait)

    def resume_duplicate(self, t: Transfer, reason: str) -> None:
        self._dup[reason].inc()

    def finished(self, t: Transfer) -> None:
        self._finished[t.outcome].inc()
        self.duration.observe(max(0.0, t.finished_at - t.opened_at))

    def released(self, t: Transfer, by: str) -> None:
        self._released[by].inc()


class CoordinatorCollector(Collector):
    """Gauges read at scrape time from counters the coordinator keeps current (no walk over
    transfers). Runs on the HTTP thread: it reads ints only."""

    def __init__(self, coord: Coordinator, device: str, row_bytes: int) -> None:
        self._coord = coord
        self._device = device
        self._row_bytes = row_bytes

    def collect(self):  # type: ignore[no-untyped-def]
        c = self._coord
        by_state = GaugeMetricFamily("kvferry_transfers",
                                     "Held (not yet released) transfers, by state.", labels=["state"])
        for s in State:
            by_state.add_metric([s.name.lower()], c.state_counts[s])
        yield by_state
        blocks = GaugeMetricFamily("kvferry_pool_blocks", "Pool blocks, by state.", labels=["state"])
        free = c.allocator.free_count
        blocks.add_metric(["free"], free)
        blocks.add_metric(["used"], c.allocator.num_blocks - free)
        yield blocks
        yield GaugeMetricFamily("kvferry_pool_block_tokens", "Rows (tokens) per pool block.",
                                value=c.limits.block_tokens)
        yield GaugeMetricFamily("kvferry_pool_row_bytes", "Bytes per row.", value=self._row_bytes)
        info = GaugeMetricFamily("kvferry_pool_info", "Pool layout (value is always 1).",
                                 labels=["device", "num_blocks", "block_tokens", "row_bytes"])
        info.add_metric([self._device, str(c.limits.num_blocks), str(c.limits.block_tokens),
                         str(self._row_bytes)], 1)
        yield info
        yield GaugeMetricFamily("kvferry_resume_waiting_for_blocks",
                                "Transfers whose resume waits for free pool blocks.",
                                value=c.resumes_waiting)
