"""The README's vLLM commands work as written: vLLM's own CLI parser takes each
--ec-transfer-config, and vLLM's factory builds the connector it names for both process roles."""

from __future__ import annotations

from pathlib import Path

from readme_configs import readme_configs
from vllm.config import ModelConfig, VllmConfig
from vllm.distributed.ec_transfer.ec_connector.base import ECConnectorRole
from vllm.distributed.ec_transfer.ec_connector.factory import ECConnectorFactory
from vllm.engine.arg_utils import EngineArgs
from vllm.utils.argparse_utils import FlexibleArgumentParser

from kvferry.integrations.vllm import KvferryECConnector


def test_readme_ec_transfer_configs_build_the_connector(tiny_model: Path) -> None:
    configs = readme_configs()
    assert set(configs) == {"ec_producer", "ec_consumer"}
    for role, text in configs.items():
        parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
        args = EngineArgs.from_cli_args(parser.parse_args(["--ec-transfer-config", text]))
        ec = args.ec_transfer_config
        assert ec is not None and ec.ec_role == role
        vllm_config = VllmConfig(model_config=ModelConfig(model=str(tiny_model), dtype="float32"),
                                 ec_transfer_config=ec)
        for part in (ECConnectorRole.SCHEDULER, ECConnectorRole.WORKER):
            connector = ECConnectorFactory.create_connector(vllm_config, part)
            try:
                assert type(connector) is KvferryECConnector
                assert connector.is_producer == (role == "ec_producer")
            finally:
                connector.shutdown()
