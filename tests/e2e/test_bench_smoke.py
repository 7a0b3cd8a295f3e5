"""The benchmark harness still runs (tiny sizes): every figure is produced with a real number.
Speed targets are judged by `python -m bench`, never here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--json", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    figures = json.loads(out.read_text())
    names = " | ".join(f["name"] for f in figures)
    for expected in ("poll throughput", "poll latency p99", "resume p99", "Push into CPU pool",
                     "Read a window", "core Open+Abort+Release", "core memory", "allocator",
                     "Push time per window", "server RSS", "first rows, control local",
                     "per window, 20 windows of 16 KiB, control grpc",
                     "idle: the server with 100 senders attached"):
        assert expected in names, f"{expected!r} missing from {names}"
    for f in figures:
        assert math.isfinite(f["kvferry"]) and f["kvferry"] >= 0, f
        if f["baseline"] is not None:
            assert f["baseline"] > 0 and f["ratio"] is not None, f
    assert "| figure" in r.stdout  # the table is printed
