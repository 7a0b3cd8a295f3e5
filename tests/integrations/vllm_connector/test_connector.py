"""KvferryECConnector inside real vLLM code: built by vLLM's factory, driven with vllm.v1 objects,
moving embeddings through a real kvferry server process."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import ROW_BYTES, WIDTH
from ec_harness import SCHEDULER, WORKER, deliver, encode_step, image_hash, make, request, step
from stalled_sender import StalledSender
from vllm.config import ParallelConfig
from vllm.distributed.ec_transfer.ec_connector.base import ECConnectorBase

from kvferry.integrations.vllm.config import ConfigError, ConnectorConfig
from kvferry.integrations.vllm.consumer import Arrivals, Loader
from kvferry.integrations.vllm.producer import Producer
from kvferry.testing.fault_proxy import FaultProxy

from support.kvserver import ServerProcess, start_server, wait_until


@pytest.fixture
def pair(ec_server: ServerProcess, tiny_model: Path) -> Iterator[tuple[ECConnectorBase, ECConnectorBase,
                                                      ECConnectorBase]]:
    """The encoder's worker, and the language engine's scheduler and worker connectors."""
    engine = uuid.uuid4().hex
    parts = (make(WORKER, "ec_producer", tiny_model, ec_server.target),
             make(SCHEDULER, "ec_consumer", tiny_model, ec_server.target, engine=engine,
                  kvferry_sender_wait_s=30),
             make(WORKER, "ec_consumer", tiny_model, ec_server.target, engine=engine))
    yield parts
    for p in parts:
        p.shutdown()


def embedding(tokens: int, seed: int) -> torch.Tensor:
    return torch.randn((tokens, WIDTH), generator=torch.Generator().manual_seed(seed))


def test_windowed_embedding_arrives_in_the_encoder_cache(ec_server: ServerProcess, pair) -> None:  # type: ignore[no-untyped-def]
    producer, scheduler, worker = pair
    h, emb = image_hash(1), embedding(100, seed=1)  # 100 rows through 16-token windows
    producer.save_caches({h: emb}, h)
    req = request("r1", h, 100)
    cache, out = deliver(scheduler, worker, req)
    assert out.ec_connector_worker_meta is None  # nothing failed
    assert torch.equal(cache[h], emb)
    assert ec_server.metric("kvferry_resumes_total") == 6  # 7 windows
    assert scheduler.take_unavailable_requests() == set()
    scheduler.request_finished(req)
    ec_server.assert_pool_free()


def test_an_embedding_in_one_window_is_staged_out_of_the_mapped_pool(ec_server: ServerProcess,
                                                                     pair) -> None:  # type: ignore[no-untyped-def]
    producer, scheduler, worker = pair
    h, emb = image_hash(8), embedding(16, seed=8)  # fits the 16-token window
    producer.save_caches({h: emb}, h)
    cache, _ = deliver(scheduler, worker, request("one", h, 16))
    assert torch.equal(cache[h], emb)
    ec_server.assert_pool_free()  # released by the rank once it held the rows
    # No Read: the rank copied the rows out of shared memory. Two Watches: the scheduler's, and
    # the rank's as the transfer's reader.
    def calls(method: str, kind: str) -> float:
        return ec_server.metric("grpc_server_started_total", f'grpc_method="{method}",grpc_service='
                                f'"kvferry.v1.TransferService",grpc_type="{kind}"')
    assert calls("Read", "server_stream") == 0 and calls("Watch", "server_stream") == 2


def test_a_repeated_image_is_sent_once(ec_server: ServerProcess, pair) -> None:  # type: ignore[no-untyped-def]
    producer, scheduler, worker = pair
    h, emb = image_hash(2), embedding(20, seed=2)
    producer.save_caches({h: emb}, h)
    producer.save_caches({h: emb.clone()}, h)  # the same image in another request
    first, second = request("a", h, 20), request("b", h, 20)
    cache, _ = deliver(scheduler, worker, first)
    assert torch.equal(cache[h], emb)
    assert producer.producer.counts.skipped_repeats == 1 and producer.producer.counts.sent == 1
    # The second request finds it in the engine's encoder cache: nothing is opened for it.
    assert scheduler.ensure_cache_available(second, 0)
    ec_server.assert_pool_free()
    ec_server.wait_metric("kvferry_transfers_finished_total", 'outcome="success"', 1)
    assert ec_server.metric("kvferry_transfers_finished_total", 'outcome="success"') == 1
    assert ec_server.metric("grpc_server_started_total", 'grpc_method="Open",grpc_service='
                            '"kvferry.v1.TransferService",grpc_type="unary"') == 1
    # Once the engine evicts it, a new request waits for a sender again.
    step(scheduler, worker, cache, freed=[h])
    assert not scheduler.ensure_cache_available(request("c", h, 20), 0)


def test_no_sender_falls_back_to_local_encoding(ec_server: ServerProcess, tiny_model: Path) -> None:
    scheduler = make(SCHEDULER, "ec_consumer", tiny_model, ec_server.target, kvferry_sender_wait_s=0.3)
    failing = make(SCHEDULER, "ec_consumer", tiny_model, ec_server.target, kvferry_sender_wait_s=0.3,
                   kvferry_on_failure="fail")
    try:
        req = request("lonely", image_hash(3), 10)
        wait_until(lambda: scheduler.ensure_cache_available(req, 0), "giving up on the sender")
        assert not scheduler.has_cache_item(image_hash(3))  # vLLM encodes it itself
        scheduler.update_state_after_alloc(req, 0)
        assert scheduler.take_unavailable_requests() == set()
        other = request("strict", image_hash(4), 10)

        def failed() -> bool:
            assert not failing.ensure_cache_available(other, 0)  # held back, never scheduled
            return failing.take_unavailable_requests() == {"strict"}

        wait_until(failed, "the request given up on, to be failed")
        failing.request_finished(other)  # as vLLM's scheduler does when it fails it
        ec_server.assert_pool_free()
    finally:
        scheduler.shutdown()
        failing.shutdown()


def test_a_partitioned_server_falls_back_within_the_keepalive_bound(tiny_model: Path) -> None:
    """A request waits for its embedding (the sender wait is long) when the link to the kvferry
    server goes silent: the connector's keepalive gives the connection up, the request falls back
    to local encoding, and the engine's next request is served once the link heals."""
    keepalive = 0.5
    srv = start_server(keepalive=keepalive, keepalive_timeout=keepalive, keepalive_min_ping=0.1,
                       lease_timeout=2, bootstrap_timeout=2, retention=2)
    proxy = FaultProxy(srv.grpc_port)
    scheduler = make(SCHEDULER, "ec_consumer", tiny_model, proxy.target, kvferry_sender_wait_s=600,
                     kvferry_keepalive_s=keepalive, kvferry_keepalive_timeout_s=keepalive,
                     kvferry_call_timeout_s=4 * keepalive,
                     kvferry_control="grpc")  # through the proxy, not the same-host socket
    try:
        req = request("cut off", image_hash(11), 10)
        assert not scheduler.ensure_cache_available(req, 0)  # waiting for a sender
        wait_until(lambda: srv.pool_info().transfers == 1, "the Open")
        proxy.partition()
        # Bounded far below the 600 s sender wait: only the keepalive can end it this soon.
        wait_until(lambda: scheduler.ensure_cache_available(req, 0), "the fallback to encoding",
                   within=20 * 2 * keepalive + 5)
        assert not scheduler.has_cache_item(image_hash(11))  # vLLM encodes it itself
        scheduler.update_state_after_alloc(req, 0)
        proxy.heal()
        # Right after the heal the channel may still be in its reconnect backoff: a request then
        # falls back at once (as it should). Fresh requests until one is held back for its
        # sender, its Open made over the healed link.
        tried: list[object] = []

        def held_back() -> bool:
            other = request(f"after-{len(tried)}", image_hash(100 + len(tried)), 10)
            tried.append(other)
            if scheduler.ensure_cache_available(other, 0):
                time.sleep(0.1)  # fell back: pace the next try while the channel reconnects
                return False
            return True

        wait_until(held_back, "a request served over the healed link")
        wait_until(lambda: srv.pool_info().transfers >= 1, "its Open on the server")
        for r in [*tried, req]:
            scheduler.request_finished(r)
        srv.assert_pool_free(timeout=10)  # the cut-off Open is given back by the server's lease
    finally:
        scheduler.shutdown()
        proxy.close()
        assert srv.stop() == 0


@pytest.mark.parametrize("ends", ["after the Open", "at once"])
def test_a_request_that_ends_while_waiting_leaves_nothing_held(ec_server: ServerProcess,
                                                               tiny_model: Path, ends: str) -> None:
    scheduler = make(SCHEDULER, "ec_consumer", tiny_model, ec_server.target,
                     kvferry_sender_wait_s=60)
    try:
        req = request("gone", image_hash(5), 10)
        assert not scheduler.ensure_cache_available(req, 0)
        if ends == "after the Open":
            wait_until(lambda: ec_server.pool_info().transfers == 1, "the Open")
        # "at once": the Open may still be on its way; it is given back all the same.
        assert scheduler.request_finished(req) == (False, None)
        assert ec_server.wait_metric("grpc_server_handled_total", 'grpc_code="OK",grpc_method='
                                     '"Release",grpc_service="kvferry.v1.TransferService",'
                                     'grpc_type="unary"', 1) == 1
        ec_server.assert_pool_free()
    finally:
        scheduler.shutdown()


@pytest.mark.parametrize("on_failure", ["fail", "encode"])
def test_a_transfer_broken_off_mid_way_never_lets_its_request_run(
        ec_server: ServerProcess, tiny_model: Path, on_failure: str) -> None:
    """The rank has taken the first window in (and resumed it) when the sender stops mid-way:
    the request is held back throughout, and when the transfer fails it is failed (or encoded
    locally) without ever being scheduled on the rows that came; the rank lets them go."""
    engine = uuid.uuid4().hex
    scheduler = make(SCHEDULER, "ec_consumer", tiny_model, ec_server.target, engine=engine,
                     kvferry_sender_wait_s=30, kvferry_on_failure=on_failure)
    worker = make(WORKER, "ec_consumer", tiny_model, ec_server.target, engine=engine)
    h = image_hash(6)
    req = request("doomed", h, 100)
    try:
        assert not scheduler.ensure_cache_available(req, 0)
        wait_until(lambda: ec_server.pool_info().transfers == 1, "the Open")
        sender = StalledSender(ec_server.target, f"ec-{h}", embedding(100, seed=6), rows=40)
        # Two windows of 16 taken in and resumed on the rank; the third waits for rows.
        assert ec_server.wait_metric("kvferry_resumes_total", "", 2) == 2
        assert not scheduler.ensure_cache_available(req, 0) and not scheduler.has_cache_item(h)
        sender.cut()  # the sender's stream ends 40 rows in: failed after the reconnect grace

        def decided() -> bool:
            ready = scheduler.ensure_cache_available(req, 0)
            assert not scheduler.has_cache_item(h)  # never: the rows did not all arrive
            return ready or "doomed" in scheduler.arrivals.unavailable_requests
        wait_until(decided, "the request given up on")
        if on_failure == "fail":
            assert scheduler.take_unavailable_requests() == {"doomed"}
        else:  # vLLM encodes it itself
            assert scheduler.ensure_cache_available(req, 0)
        assert "40 of 100 tokens delivered" in scheduler.arrivals.expected[h].reason
        wait_until(lambda: not worker.loader._staging and not worker.loader.staged,
                   "the rank letting go of what it took in")
        ec_server.assert_pool_free()
    finally:
        scheduler.shutdown()
        worker.shutdown()


def test_server_killed_while_ranks_stage_fails_the_request_without_a_hang(
        ec_server: ServerProcess, pair) -> None:  # type: ignore[no-untyped-def]
    producer, scheduler, worker = pair
    h = image_hash(6)
    producer.save_caches({h: embedding(100, seed=6)}, h)
    req = request("doomed", h, 100)
    assert not scheduler.ensure_cache_available(req, 0)
    wait_until(lambda: ec_server.metric("kvferry_tokens_received_total") >= 16, "the first rows")
    ec_server.stop(signal.SIGKILL)
    # Whether or not every row was staged by then, the request runs only on all of them: it is
    # either staged whole, or encoded locally.
    wait_until(lambda: scheduler.ensure_cache_available(req, 0), "the request decided")
    if scheduler.has_cache_item(h):
        scheduler.update_state_after_alloc(req, 0)
        cache: dict[str, torch.Tensor] = {}
        step(scheduler, worker, cache)
        assert torch.equal(cache[h], embedding(100, seed=6))
    # The encoder's send ends too (it does not wait for a server that is gone).
    wait_until(lambda: producer.producer.pending() == 0, "the producer's send ending")
    # A request that was still waiting gives up and encodes locally.
    waiting = request("after", image_hash(7), 10)
    wait_until(lambda: scheduler.ensure_cache_available(waiting, 0), "giving up on a dead server")
    assert not scheduler.has_cache_item(image_hash(7))


def test_only_engines_holding_the_shared_secret_move_embeddings(tiny_model: Path,
                                                                tmp_path: Path) -> None:
    (tmp_path / "token").write_text("service-token-0123456789")
    (tmp_path / "secret").write_text("shared-secret-of-both-engines-0123")
    (tmp_path / "other").write_text("a-secret-the-encoder-does-not-hold")
    srv = start_server(num_blocks=8, block_tokens=8, row_bytes=ROW_BYTES, default_window_tokens=16,
                       auth_token_file=tmp_path / "token", require_transfer_secrets=True)
    auth = {"kvferry_token_file": str(tmp_path / "token")}
    engine = uuid.uuid4().hex
    parts = [make(WORKER, "ec_producer", tiny_model, srv.target, **auth,
                  kvferry_secret_file=str(tmp_path / "secret")),
             make(SCHEDULER, "ec_consumer", tiny_model, srv.target, engine=engine, **auth,
                  kvferry_secret_file=str(tmp_path / "secret")),
             make(WORKER, "ec_consumer", tiny_model, srv.target, engine=engine, **auth,
                  kvferry_secret_file=str(tmp_path / "secret")),
             make(SCHEDULER, "ec_consumer", tiny_model, srv.target, **auth,
                  kvferry_secret_file=str(tmp_path / "other"), kvferry_sender_wait_s=30)]
    producer, scheduler, worker, outsider = parts
    try:
        h, emb = image_hash(9), embedding(16, seed=9)
        producer.save_caches({h: emb}, h)  # the sender waits, its claim on the id made
        wait_until(lambda: srv.metric("kvferry_senders_waiting") == 1, "the sender's claim")
        # A language engine without the secret: its Open is refused, so it encodes locally.
        lost = request("outsider", h, 16)
        wait_until(lambda: outsider.ensure_cache_available(lost, 0), "the outsider giving up")
        assert not outsider.has_cache_item(h)
        assert "PERMISSION_DENIED" in outsider.arrivals.expected[h].reason
        cache, _ = deliver(scheduler, worker, request("insider", h, 16))
        assert torch.equal(cache[h], emb)
        srv.assert_pool_free()
    finally:
        for p in parts:
            p.shutdown()
        srv.stop()


@pytest.mark.parametrize(("sent", "says"), [
    (torch.zeros((20, WIDTH)), "placeholders"),                  # another number of rows
    (torch.zeros((16, 2 * WIDTH), dtype=torch.float16), "--dtype"),  # another dtype, same bytes
])
def test_an_embedding_the_request_cannot_take_is_refused_before_scheduling(
        ec_server: ServerProcess, pair, sent: torch.Tensor, says: str) -> None:  # type: ignore[no-untyped-def]
    producer, scheduler, _ = pair
    h = image_hash(10)
    producer.save_caches({h: sent}, h)
    req = request("mismatch", h, 16)  # the language model takes 16 float32 rows
    wait_until(lambda: scheduler.ensure_cache_available(req, 0), "the refusal")
    assert not scheduler.has_cache_item(h)  # vLLM encodes it itself
    assert says in scheduler.arrivals.expected[h].reason
    ec_server.assert_pool_free()


def test_an_encoder_that_shuts_down_mid_transfer_says_so(ec_server: ServerProcess,
                                                         tiny_model: Path) -> None:
    engine = uuid.uuid4().hex
    producer = make(WORKER, "ec_producer", tiny_model, ec_server.target)
    scheduler = make(SCHEDULER, "ec_consumer", tiny_model, ec_server.target, engine=engine,
                     kvferry_sender_wait_s=30, kvferry_on_failure="fail")
    try:
        h = image_hash(11)
        producer.save_caches({h: embedding(100, seed=11)}, h)  # 7 windows
        req = request("orphan", h, 100)
        assert not scheduler.ensure_cache_available(req, 0)
        # No rank of this engine is up yet: the first window fills and the sender waits.
        wait_until(lambda: ec_server.metric("kvferry_tokens_received_total") >= 16,
                   "the first window")
        producer.shutdown()
        # Held back (never scheduled), then failed by vLLM's scheduler at the end of a step.
        wait_until(lambda: not scheduler.ensure_cache_available(req, 0)
                   and scheduler.take_unavailable_requests() == {"orphan"}, "the failure")
        assert "encoder engine shut down" in scheduler.arrivals.expected[h].reason
        ec_server.assert_pool_free()
    finally:
        scheduler.shutdown()


@pytest.mark.parametrize(("extra", "says"), [
    ({"kvferry_target": "nowhere"}, "kvferry_target"),
    ({"kvferry_transport": "carrier-pigeon"}, "kvferry_transport"),
    ({"kvferry_on_failure": "retry"}, "kvferry_on_failure"),
    ({"kvferry_window": 4}, "unknown key"),
    ({"kvferry_secret_file": "/nonexistent/secret"}, "kvferry_secret_file"),
    ({"kvferry_sender_wait_s": "soon"}, "kvferry_sender_wait_s"),
])
def test_bad_settings_are_refused_with_the_key_to_fix(extra, says, tiny_model: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=says):
        make(SCHEDULER, "ec_consumer", tiny_model, extra.pop("kvferry_target", "localhost:1"),
             **extra)


@pytest.mark.parametrize("ec_role", ["ec_producer", "ec_consumer"])
def test_a_pipeline_parallel_engine_is_refused_at_start(ec_role: str, tiny_model: Path) -> None:
    with pytest.raises(ConfigError, match="--pipeline-parallel-size 1"):
        make(WORKER, ec_role, tiny_model, "localhost:1",
             parallel=ParallelConfig(pipeline_parallel_size=2))


def test_a_tensor_parallel_consumer_opens_each_transfer_for_every_rank(tiny_model: Path) -> None:
    c = make(SCHEDULER, "ec_consumer", tiny_model, "localhost:1",
             parallel=ParallelConfig(tensor_parallel_size=2))
    try:
        assert c.arrivals is not None and c.arrivals.readers == 2
    finally:
        c.shutdown()


def test_each_image_goes_to_the_kvferry_server_its_request_names(ec_server: ServerProcess,
                                                                 tiny_model: Path) -> None:
    """One encoder, two language instances each beside its own kvferry server: a request's
    ec_transfer_params name the server its image goes to. An image the encoder holds already
    (encoded for the first instance) reaches the second from the encoder's cache, without being
    encoded again; a server the encoder was not given is refused."""
    other = start_server(num_blocks=8, block_tokens=8, row_bytes=ROW_BYTES,
                         default_window_tokens=16)
    engines = [uuid.uuid4().hex, uuid.uuid4().hex]
    parts = [make(SCHEDULER, "ec_producer", tiny_model, ec_server.target,
                  kvferry_targets=other.target),
             make(WORKER, "ec_producer", tiny_model, ec_server.target)]
    for srv, engine in zip((ec_server, other), engines, strict=True):
        parts += [make(SCHEDULER, "ec_consumer", tiny_model, srv.target, engine=engine,
                       kvferry_sender_wait_s=30),
                  make(WORKER, "ec_consumer", tiny_model, srv.target, engine=engine)]
    enc_sched, enc_worker, first_sched, first_worker, second_sched, second_worker = parts
    try:
        h, emb = image_hash(20), embedding(20, seed=20)
        encoded: dict[str, torch.Tensor] = {}
        to_first = {"kvferry_target": ec_server.target}
        e1 = request("e1", h, 20, ec_transfer_params=to_first)
        encode_step(enc_sched, enc_worker, e1, encoded, emb)
        # The encoder's answer says where each image went, beside vLLM's own entry (BLIP-2
        # declares no placeholder fields: its metadata is empty).
        assert enc_sched.request_finished(e1) == (False, {h: {
            "item_indices": [0], "metadata": {}, "kvferry_target": ec_server.target,
            "kvferry_transfer_id": f"ec-{h}"}})
        cache, _ = deliver(first_sched, first_worker, request("l1", h, 20))
        assert torch.equal(cache[h], emb)
        # The same image, for the other instance: the encoder has it cached (no save_caches).
        to_second = {"kvferry_target": other.target}
        encode_step(enc_sched, enc_worker, request("e2", h, 20, ec_transfer_params=to_second),
                    encoded, torch.zeros_like(emb))  # would be a wrong answer, if encoded
        cache, _ = deliver(second_sched, second_worker, request("l2", h, 20))
        assert torch.equal(cache[h], emb)
        assert enc_worker.producer.counts.sent == 2
        for srv in (ec_server, other):
            srv.assert_pool_free()
            assert srv.metric("kvferry_transfers_finished_total", 'outcome="success"') == 1
        # A server outside kvferry_target and kvferry_targets: nothing is sent there.
        stranger = {"kvferry_target": "elsewhere:1"}
        encode_step(enc_sched, enc_worker, request("e3", image_hash(21), 8,
                                                   ec_transfer_params=stranger),
                    encoded, embedding(8, seed=21))
        assert enc_worker.producer.pending() == 0 and enc_worker.producer.counts.sent == 2
    finally:
        for p in parts:
            p.shutdown()
        other.stop()


def test_staging_waits_for_room_beside_the_encoder_cache(ec_server: ServerProcess) -> None:
    """Each rank stages at most budget_rows at once (the engine's encoder cache size): a
    request whose image does not fit beside those staged waits, opening nothing, until one is
    taken into the encoder cache; an image larger than the budget is staged alone."""
    engine = uuid.uuid4().hex
    config = ConnectorConfig(target=ec_server.target, sender_wait_s=30)
    producer = Producer(config)
    arrivals = Arrivals(config, torch.float32, engine=engine, budget_rows=30)
    loader = Loader(config, torch.device("cpu"), (WIDTH, torch.float32), engine=engine)
    try:
        images = {image_hash(30 + i): embedding(rows, seed=30 + i)
                  for i, rows in enumerate((20, 20, 40))}
        for h, emb in images.items():
            producer.save(emb, h)
        first, second, large = images

        def take(request_id: str, h: str) -> None:
            arrivals.allocated(request_id, h, len(images[h]))
            cache: dict[str, torch.Tensor] = {}
            loader.load(arrivals.take_loads([]), cache)
            assert torch.equal(cache[h], images[h])

        wait_until(lambda: arrivals.ensure("r1", [(first, 20)]), "the first staged")
        assert not arrivals.ensure("r2", [(second, 20)])
        assert second not in arrivals.expected  # no room: not even opened
        take("r1", first)
        wait_until(lambda: arrivals.ensure("r2", [(second, 20)]), "the second, once there is room")
        assert not arrivals.ensure("r3", [(large, 40)]) and large not in arrivals.expected
        take("r2", second)
        wait_until(lambda: arrivals.ensure("r3", [(large, 40)]), "the large one, alone")
        take("r3", large)
        wait_until(lambda: producer.pending() == 0, "the sends ending")
        ec_server.assert_pool_free()
    finally:
        for part in (producer, arrivals, loader):
            part.close()
