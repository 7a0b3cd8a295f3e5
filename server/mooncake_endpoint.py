"""The server's end of transport "mooncake": a Mooncake Transfer Engine with the pool's memory
registered, so senders on other hosts write granted rows straight into it (P2P handshake: no
metadata server). The engine is imported only when ``--mooncake`` is given."""

from __future__ import annotations

import logging

from kvferry.server.storage import PoolUnavailable
from kvferry.v1 import transfer_pb2 as pb

log = logging.getLogger("kvferry")

INSTALL_HINT = ("install the Mooncake Transfer Engine: pip install 'kvferry[mooncake]' (on GPU hosts "
                "mooncake-transfer-engine) and Debian's libibverbs1")


class MooncakeEndpoint:
    """The server half of transport "mooncake" (``kvferry.server.transports``)."""

    name = "mooncake"

    def __init__(self, protocol: str, host: str, device: str, region: tuple[int, int]) -> None:
        try:
            from mooncake.engine import TransferEngine
        except ImportError as e:
            raise PoolUnavailable(f"--mooncake {protocol}: the engine cannot be loaded ({e}); "
                                  f"{INSTALL_HINT}") from e
        self.protocol = protocol
        self.engine = TransferEngine()
        if self.engine.initialize(host, "P2PHANDSHAKE", protocol, device) != 0:
            raise PoolUnavailable(f"--mooncake {protocol}: the engine did not start on {host!r}"
                                  f"{f' with NIC(s) {device}' if device else ''}; check "
                                  f"--mooncake-host (an address of this host) and the NICs")
        self.base_address, self.nbytes = region
        if self.engine.register_memory(self.base_address, self.nbytes) != 0:
            raise PoolUnavailable(f"--mooncake {protocol}: the engine could not register the "
                                  f"{self.nbytes / 2**30:.2f} GiB pool (a GPU pool needs the CUDA "
                                  f"build, mooncake-transfer-engine)")
        self.session = f"{host}:{self.engine.get_rpc_port()}"
        log.info("mooncake %s engine at %s, pool registered", protocol, self.session)

    def describe(self, info: pb.PoolInfo) -> None:
        info.mooncake_session = self.session
        info.mooncake_protocol = self.protocol
        info.mooncake_base_address = self.base_address

    def close(self) -> None:
        """The engine and its registration go with the process."""
