"""vLLM engines in their own processes (engine_agent.py), for the end-to-end test."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
# Only bounds a hang while nothing has been measured yet: the first engine start.
FIRST_START_LIMIT = 900.0


class Engine:
    def __init__(self, name: str, model: Path, engine_args: dict[str, Any],
                 env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "engine_agent.py"), str(model), json.dumps(engine_args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(HERE), **env})
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.lines.put(line)
            else:
                self.log.append(line)
        self.lines.put(None)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"engine {self.name}: no answer within {timeout:.0f}s\n"
                                 + "".join(self.log[-40:])) from None
        if line is None:
            self.proc.wait(10)
            raise AssertionError(f"engine {self.name} exited ({self.proc.returncode}):\n"
                                 + "".join(self.log[-60:]))
        return dict(json.loads(line))

    def ready(self, timeout: float = FIRST_START_LIMIT) -> float:
        """Seconds the engine took to start."""
        event = self._next(timeout)
        assert event.get("event") == "ready", event
        return float(event["startup_s"])

    def generate(self, seeds: list[int], max_tokens: int, timeout: float) -> list[list[int]]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"generate": seeds, "max_tokens": max_tokens}) + "\n")
        self.proc.stdin.flush()
        return list(self._next(timeout)["tokens"])

    def cpu_seconds(self) -> float:
        """CPU time the engine's processes (the agent and all it started) have used so far."""
        import psutil

        total = 0.0
        root = psutil.Process(self.proc.pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = p.cpu_times()
                total += times.user + times.system
        return total

    def stop(self, timeout: float) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
