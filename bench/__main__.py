"""python -m bench [--smoke] [--json PATH] [--only NAME ...]"""

from __future__ import annotations

import argparse
import sys

from bench import (
    control_figures,
    core_figures,
    grpc_figures,
    link_figures,
    one_sided_figures,
    wire_figures,
)
from bench.report import print_report, run_plan, to_json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks it runs")
    ap.add_argument("--json", default="", help="also write the figures here as JSON")
    ap.add_argument("--only", nargs="*", default=[],
                    choices=["control", "calls", "resume", "data", "core", "allocator", "growth", "wire", "shm",
                             "turnaround",
                             "mooncake", "link"])
    args = ap.parse_args(argv)
    smoke = args.smoke
    plan = {
        "control": lambda: grpc_figures.control_plane(rounds=1 if smoke else 5,
                                                      seconds=0.2 if smoke else 2.0),
        "calls": lambda: control_figures.control_path(rounds=1 if smoke else 5,
                                                      windows=20 if smoke else 400,
                                                      smalls=2 if smoke else 20,
                                                      controls=("grpc", "local")),
        "resume": lambda: grpc_figures.resume_path(rounds=1 if smoke else 5,
                                                   windows=10 if smoke else 300),
        "data": lambda: grpc_figures.data_plane(rounds=1 if smoke else 5,
                                                window_tokens=256 if smoke else 8192,
                                                windows=2 if smoke else 4,
                                                block_tokens=64 if smoke else 256),
        "core": lambda: core_figures.core_scale((100, 1000) if smoke else (1_000, 10_000, 100_000)),
        "allocator": lambda: core_figures.allocator(rounds=1 if smoke else 5,
                                                    ops=2_000 if smoke else 200_000),
        "growth": lambda: grpc_figures.cost_growth(window_tokens=64 if smoke else 256,
                                                   window_counts=(1, 4) if smoke else (1, 10, 100),
                                                   live_counts=(5, 20) if smoke else (10, 100, 1000)),
        "shm": lambda: one_sided_figures.shm_transfer(rounds=1 if smoke else 5,
                                                      total_mib=16 if smoke else 256,
                                                      window_mib=4 if smoke else 16),
        "mooncake": lambda: one_sided_figures.mooncake_transfer(rounds=1 if smoke else 5,
                                                                total_mib=16 if smoke else 256,
                                                                window_mib=4 if smoke else 16),
        "turnaround": lambda: one_sided_figures.window_turnaround(windows=10 if smoke else 300),
        "link": lambda: link_figures.slow_link(delay_s=0.01, windows=4 if smoke else 50,
                                               rounds=1 if smoke else 3),
        "wire": lambda: wire_figures.decode_crossover((64, 128) if smoke else (32, 64, 128, 256, 1024),
                                                      number=20 if smoke else 2_000),
    }
    figures = run_plan(plan, args.only)
    print_report(figures)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(to_json(figures) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
