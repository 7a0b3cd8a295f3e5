"""Bearer-token auth and (m)TLS on a real server: nobody uninvited gets in, health still answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvferry.client import Client
from kvferry.v1 import transfer_pb2 as pb
from kvferry.v1 import transfer_pb2_grpc as pb_grpc

from support.certs import make_pki
from support.kvserver import ServerProcess, start_server

TOKEN = "s3cret-token-do-not-echo"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def authed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    token_file = tmp_path_factory.mktemp("auth") / "token"
    token_file.write_text(f"  {TOKEN}\n")  # surrounding whitespace is stripped
    srv = start_server(auth_token_file=token_file)
    yield srv
    assert srv.stop() == 0


def code_of(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details() or ""


@pytest.mark.parametrize("metadata", [
    (), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),),
    (("authorization", f"bearer {TOKEN}x"),),
])
def test_calls_without_the_right_token_are_unauthenticated(authed: ServerProcess, metadata) -> None:  # type: ignore[no-untyped-def]
    ch, stub = authed.stub()
    with ch:
        for call in (lambda: stub.GetPoolInfo(pb.GetPoolInfoRequest(), metadata=metadata),
                     lambda: stub.Open(pb.OpenRequest(transfer_id="x"), metadata=metadata),
                     lambda: list(stub.Watch(pb.WatchRequest(transfer_id="x"), metadata=metadata)),
                     lambda: stub.Push(iter([pb.PushRequest(transfer_id="x", total_tokens=1)]),
                                       metadata=metadata)):
            code, msg = code_of(call)
            assert code == grpc.StatusCode.UNAUTHENTICATED
            assert "Bearer <token>" in msg and TOKEN not in msg


def test_health_is_exempt_and_the_right_token_works(authed: ServerProcess) -> None:
    ch, stub = authed.stub()
    with ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        info = stub.GetPoolInfo(pb.GetPoolInfoRequest(),
                                metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert info.num_blocks == 32
    with Client(authed.target, token=TOKEN) as c:
        assert c.pool_info().row_bytes == 64
    refused = ('grpc_code="Unauthenticated",grpc_method="Open",'
               'grpc_service="kvferry.v1.TransferService",grpc_type="unary"')
    before = authed.metric("grpc_server_handled_total", refused)
    ch, stub = authed.stub()
    with ch:
        for _ in range(4):
            with pytest.raises(grpc.RpcError):
                stub.Open(pb.OpenRequest(transfer_id="no-token"))
    assert authed.wait_metric("grpc_server_handled_total", refused, before + 4) == before + 4


def test_tls_and_mtls(pki: dict[str, Path]) -> None:
    ca = pki["ca.crt"].read_bytes()
    client_key, client_crt = pki["client.key"].read_bytes(), pki["client.crt"].read_bytes()
    tls = start_server(credentials=grpc.ssl_channel_credentials(ca),
                       tls_cert=pki["server.crt"], tls_key=pki["server.key"])
    mtls = start_server(credentials=grpc.ssl_channel_credentials(ca, client_key, client_crt),
                        tls_cert=pki["server.crt"], tls_key=pki["server.key"],
                        tls_client_ca=pki["ca.crt"])
    try:
        def pool(target: str, creds: grpc.ChannelCredentials | None) -> pb.PoolInfo:
            ch = (grpc.insecure_channel(target) if creds is None
                  else grpc.secure_channel(target, creds))
            with ch:
                return pb_grpc.TransferServiceStub(ch).GetPoolInfo(pb.GetPoolInfoRequest(), timeout=5)

        assert pool(tls.target, grpc.ssl_channel_credentials(ca)).num_blocks == 32
        # Plaintext to a TLS port, and a client that trusts another CA: no connection.
        assert code_of(lambda: pool(tls.target, None))[0] == grpc.StatusCode.UNAVAILABLE
        other = grpc.ssl_channel_credentials(pki["other-ca.crt"].read_bytes())
        assert code_of(lambda: pool(tls.target, other))[0] == grpc.StatusCode.UNAVAILABLE
        # mTLS: a client certificate signed by the CA is required.
        assert code_of(lambda: pool(mtls.target, grpc.ssl_channel_credentials(ca)))[0] == \
            grpc.StatusCode.UNAVAILABLE
        with_cert = grpc.ssl_channel_credentials(ca, client_key, client_crt)
        assert pool(mtls.target, with_cert).num_blocks == 32
    finally:
        assert tls.stop() == 0 and mtls.stop() == 0


def test_empty_token_file_is_refused_at_start(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(RuntimeError, match="is empty"):
        start_server(auth_token_file=empty)
