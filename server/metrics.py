"""Prometheus metrics of the transfer path. Label values are bounded: never a transfer id.

Counts live in the core (``Coordinator.totals``) and gauges are read from it at scrape time, so
the Stats RPC and /metrics can never disagree; only the histograms are observed as events happen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvferry.statemachine import Coordinator, Listener, State, Transfer

# *_created series double the scrape for no dashboard's benefit.
disable_created_metrics()

# Sub-millisecond buckets too: a same-host one-sided window turns around in about a millisecond.
_WAIT_BUCKETS = (0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                 1, 2.5, 5, 10, 30, 60)
_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class TransferHistograms(Listener):
    """The two distributions, observed when the core reports the events."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram("kvferry_transfer_duration_seconds",
                                  "Open to terminal state.", buckets=_DURATION_BUCKETS,
                                  registry=registry)
        self.window_wait = Histogram("kvferry_window_wait_seconds",
                                     "Window full to resume applied: how long receivers make "
                                     "senders wait.", buckets=_WAIT_BUCKETS, registry=registry)

    def resume_applied(self, t: Transfer, window_wait: float | None) -> None:
        if window_wait is not None:
            self.window_wait.observe(window_wait)

    def finished(self, t: Transfer) -> None:
        self.duration.observe(max(0.0, t.finished_at - t.opened_at))


class CoordinatorCollector(Collector):
    """Counters and gauges read at scrape time from ints the core keeps current (no walk over
    transfers). Runs on the HTTP thread: it reads ints only."""

    def __init__(self, coord: Coordinator, device: str, row_bytes: int,
                 senders_waiting: Callable[[], int] = lambda: 0) -> None:
        self._coord = coord
        self._senders_waiting = senders_waiting
        self._device = device
        self._row_bytes = row_bytes

    def collect(self) -> Iterator[Metric]:
        c, totals = self._coord, self._coord.totals
        yield CounterMetricFamily("kvferry_resumes", "Resumes applied: a window was read and "
                                  "the next one given to the sender.", value=totals.resumes_applied)
        dups = CounterMetricFamily(
            "kvferry_resume_duplicates_skipped",
            "Resumes skipped as duplicates (reason=repeat: sent_tokens equal to the last applied, "
            "or a reader's second resume of the current window; stale: older). Retries and late "
            "messages.",
            labels=["reason"])
        for reason, n in list(totals.duplicates.items()):
            dups.add_metric([reason], n)
        yield dups
        yield CounterMetricFamily("kvferry_transfers_started", "Transfers opened.",
                                  value=totals.started)
        finished = CounterMetricFamily("kvferry_transfers_finished", "Transfers that reached a "
                                       "terminal state, by outcome.", labels=["outcome"])
        for outcome, n in list(totals.finished.items()):
            finished.add_metric([outcome], n)
        yield finished
        released = CounterMetricFamily("kvferry_transfers_released", "Transfers released "
                                       "(by=client: Release; retention: timed out unreleased).",
                                       labels=["by"])
        for by, n in list(totals.released.items()):
            released.add_metric([by], n)
        yield released
        tokens = totals.tokens_received
        yield CounterMetricFamily("kvferry_tokens_received", "Rows (tokens) written into the "
                                  "pool.", value=tokens)
        yield CounterMetricFamily("kvferry_bytes_received", "Row bytes written into the pool.",
                                  value=tokens * self._row_bytes)
        by_state = GaugeMetricFamily("kvferry_transfers",
                                     "Held (not yet released) transfers, by state.", labels=["state"])
        for s in State:
            by_state.add_metric([s.name.lower()], c.state_counts[s])
        yield by_state
        blocks = GaugeMetricFamily("kvferry_pool_blocks", "Pool blocks, by state (quarantined: "
                                   "fenced until a one-sided writer of a failed transfer stops).",
                                   labels=["state"])
        free, fenced = c.allocator.free_count, c.quarantine.blocks
        blocks.add_metric(["free"], free)
        blocks.add_metric(["used"], c.allocator.num_blocks - free - fenced)
        blocks.add_metric(["quarantined"], fenced)
        yield blocks
        lifted = CounterMetricFamily("kvferry_fences_lifted", "Fences lifted (by=commit or detach: "
                                     "the writer said it stopped; timeout: --fence-timeout passed "
                                     "first).", labels=["by"])
        for by, n in list(totals.fences_lifted.items()):
            lifted.add_metric([by], n)
        yield lifted
        yield CounterMetricFamily("kvferry_commit_duplicates", "One-sided commits of rows already "
                                  "delivered (retries), answered without change.",
                                  value=totals.commit_duplicates)
        yield GaugeMetricFamily("kvferry_pool_block_tokens", "Rows (tokens) per pool block.",
                                value=c.limits.block_tokens)
        yield GaugeMetricFamily("kvferry_pool_row_bytes", "Bytes per row.", value=self._row_bytes)
        info = GaugeMetricFamily("kvferry_pool_info", "Pool layout (value is always 1).",
                                 labels=["device", "num_blocks", "block_tokens", "row_bytes"])
        info.add_metric([self._device, str(c.limits.num_blocks), str(c.limits.block_tokens),
                         str(self._row_bytes)], 1)
        yield info
        yield GaugeMetricFamily("kvferry_senders_waiting",
                                "Senders (Push or Attach) waiting for their receiver's Open, up to "
                                "--bootstrap-timeout.", value=self._senders_waiting())
        yield GaugeMetricFamily("kvferry_resume_waiting_for_blocks",
                                "Transfers whose resume waits for free pool blocks.",
                                value=c.resumes_waiting)
