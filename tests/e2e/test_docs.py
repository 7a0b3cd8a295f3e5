"""What the README and docs claim: the generated diagram is current, the example runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from kvferry.statemachine import diagram

from support.kvserver import start_server

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_diagram_is_generated_from_the_table() -> None:
    block = re.search(r"```mermaid\n(.*?)```", README, re.S)
    assert block and block.group(1) == diagram.mermaid()


def test_state_machine_doc_is_current() -> None:
    assert (ROOT / "docs/state-machine.md").read_text() == diagram.state_machine_doc(), \
        "docs/state-machine.md is stale: run `kvferry diagram --doc > docs/state-machine.md`"


def test_readme_example_is_the_quickstart_file() -> None:
    block = re.search(r"```python\n(.*?)```", README, re.S)
    assert block and block.group(1) == (ROOT / "examples/quickstart.py").read_text()


def test_quickstart_completes_a_three_window_transfer_on_the_default_server() -> None:
    srv = start_server(base={})  # the defaults of `kvferry serve`, as `make serve` runs it
    try:
        r = subprocess.run([sys.executable, str(ROOT / "examples/quickstart.py")],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "KVFERRY_TARGET": srv.target})
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("window: ") == 3 and "ok: 3 windows" in r.stdout
        srv.assert_pool_free()
    finally:
        assert srv.stop() == 0


def test_readme_documents_every_flag() -> None:
    from dataclasses import fields

    from kvferry.server.config import ServerConfig

    table = README[README.index("## Configuration"):README.index("## Metrics")]
    for f in fields(ServerConfig):
        assert f"--{f.name.replace('_', '-')}`" in table, f"README lacks --{f.name}"


def test_readme_epd_snippet_runs_as_written(tmp_path: Path) -> None:
    """The EPD block, verbatim, against the server `make serve SERVE_ARGS="--row-bytes 8208"`
    would start (with a smaller pool: the default one is 538 MB of shared memory)."""
    section = README[README.index("## Encoder → language (EPD)"):README.index("## Coming from SGLang")]
    assert 'make serve SERVE_ARGS="--row-bytes 8208"' in section
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    srv = start_server(base={}, row_bytes=8208, num_blocks=32, block_tokens=256)
    try:
        script = tmp_path / "epd_snippet.py"
        script.write_text(code.group(1))
        r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "KVFERRY_TARGET": srv.target})
        assert r.returncode == 0, r.stderr
        assert "ok: 6000 tokens in two windows, aux [6000, -3]" in r.stdout
    finally:
        assert srv.stop() == 0


def test_vllm_doc_lists_every_connector_setting() -> None:
    from kvferry.integrations.vllm.config import KEYS

    documented = re.findall(r"^\| `(kvferry_\w+)` \|", (ROOT / "docs/vllm.md").read_text(), re.M)
    assert sorted(documented) == sorted(KEYS)
