"""What an operator sees: ``kvferry status`` (one table) and ``kvferry top`` (the same, live)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kvferry.client.sync import Client
from kvferry.v1 import transfer_pb2 as pb

LIVE_STATES = (pb.TRANSFER_STATE_BOOTSTRAPPING, pb.TRANSFER_STATE_TRANSFERRING,
               pb.TRANSFER_STATE_RESUMING)


def state_name(value: int) -> str:
    return pb.TransferState.Name(value).removeprefix("TRANSFER_STATE_")


def render(target: str, stats: pb.StatsResponse, oldest: Sequence[pb.TransferSummary]) -> Group:
    pool = stats.pool
    used = pool.num_blocks - pool.free_blocks
    head = Table.grid(padding=(0, 2))
    head.add_row(Text(f"kvferry {target}", style="bold"),
                 f"device {pool.device}", f"up {stats.uptime_seconds:,.0f}s",
                 Text("DRAINING", style="bold red") if stats.draining else Text("serving", style="green"))
    summary = Table(title="pool and totals", show_header=False, title_justify="left")
    summary.add_row("pool blocks used", f"{used} / {pool.num_blocks} ({used / pool.num_blocks:.0%})"
                    f" of {pool.block_tokens} tokens x {pool.row_bytes} B")
    summary.add_row("resumes waiting for blocks", str(stats.resumes_waiting))
    summary.add_row("transfers started", f"{stats.transfers_started:,}")
    summary.add_row("resumes applied / duplicates skipped",
                    f"{stats.resumes_applied:,} / {stats.resume_duplicates:,}")
    summary.add_row("tokens received", f"{stats.tokens_received:,}")
    states = Table(title="held transfers by state", title_justify="left")
    for sc in stats.transfers:
        states.add_column(state_name(sc.state).lower(), justify="right")
    states.add_row(*[str(sc.count) for sc in stats.transfers])
    live = Table(title=f"oldest live transfers ({len(oldest)})", title_justify="left")
    for col in ("transfer", "state", "sent / total", "window", "resumes", "age s", "idle s"):
        live.add_column(col, justify="left" if col in ("transfer", "state") else "right")
    for s in oldest:
        st = s.status
        live.add_row(st.transfer_id, state_name(st.state), f"{st.sent_tokens:,} / {st.total_tokens or '?'}",
                     f"{st.window_filled_tokens}/{st.window_tokens}"
                     + (" (waiting for blocks)" if st.waiting_for_blocks else ""),
                     str(st.resume_count), f"{s.age_seconds:,.1f}", f"{s.idle_seconds:,.1f}")
    failed = Table(title=f"recent failures ({len(stats.recent_failures)})", title_justify="left")
    for col in ("transfer", "outcome", "sent / total", "after s", "reason"):
        failed.add_column(col, justify="right" if col in ("sent / total", "after s") else "left")
    for s in stats.recent_failures[:10]:
        st = s.status
        failed.add_row(st.transfer_id, s.outcome, f"{st.sent_tokens:,} / {st.total_tokens or '?'}",
                       f"{s.age_seconds:,.1f}", st.failure_reason)
    return Group(head, summary, states, live, failed)


def snapshot(client: Client, target: str, oldest: int) -> Group:
    return render(target, client.stats(), client.list_transfers(LIVE_STATES, limit=oldest))


def status(client: Client, target: str, oldest: int = 10, console: Console | None = None) -> None:
    (console or Console()).print(snapshot(client, target, oldest))


def top(client: Client, target: str, interval: float = 1.0, iterations: int = 0,
        oldest: int = 20, console: Console | None = None) -> None:
    """Refresh every ``interval`` seconds; stop after ``iterations`` (0: until Ctrl-C)."""
    n = 0
    with Live(snapshot(client, target, oldest), console=console or Console(),
              refresh_per_second=max(1.0, 1 / interval), screen=False) as live:
        try:
            while not iterations or n < iterations - 1:
                time.sleep(interval)
                live.update(snapshot(client, target, oldest))
                n += 1
        except KeyboardInterrupt:
            pass
