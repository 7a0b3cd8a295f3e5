"""One row per figure: kvferry's value, the baseline's, the ratio, the target, and whether it holds."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass


@dataclass
class Figure:
    name: str
    unit: str
    kvferry: float
    baseline: float | None
    target: str  # e.g. ">= 0.85x", "<= 1.3x", "<= 20 us"
    met: bool
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.kvferry / self.baseline


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def ratio_target(name: str, unit: str, ours: float, base: float, op: str, bound: float,
                 note: str = "") -> Figure:
    r = ours / base if base else float("inf")
    met = r >= bound if op == ">=" else r <= bound
    return Figure(name, unit, ours, base, f"{op} {bound}x", met, note)


def table(figures: list[Figure]) -> str:
    rows = [("figure", "kvferry", "baseline", "ratio", "target", "met")]
    for f in figures:
        rows.append((f.name, f"{f.kvferry:,.4g} {f.unit}",
                     "-" if f.baseline is None else f"{f.baseline:,.4g} {f.unit}",
                     "-" if f.ratio is None else f"{f.ratio:.3f}", f.target, "yes" if f.met else "NO"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def to_json(figures: list[Figure]) -> str:
    return json.dumps([{**asdict(f), "ratio": f.ratio} for f in figures], indent=2)


def run_plan(plan: dict[str, Callable[[], list[Figure]]], only: Sequence[str] = ()) -> list[Figure]:
    """Run each named group of figures, timing it on stderr; a group that fails is reported and
    skipped so the others still run (a device run is precious)."""
    figures: list[Figure] = []
    for name, run in plan.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            figures += run()
        except Exception as e:
            print(f"[{name}: FAILED: {e!r}]", file=sys.stderr, flush=True)
            continue
        print(f"[{name}: {time.perf_counter() - t0:.1f}s]", file=sys.stderr, flush=True)
    return figures


def print_report(figures: list[Figure]) -> None:
    print(table(figures))
    for f in figures:
        if f.note:
            print(f"  {f.name}: {f.note}")
