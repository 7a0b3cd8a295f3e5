"""The --ec-transfer-config lines of the README's "Use it from vLLM", as written."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

README = Path(__file__).parents[3] / "README.md"


def readme_configs() -> dict[str, str]:
    """ec_role -> the JSON text after --ec-transfer-config."""
    found = re.findall(r"--ec-transfer-config '(\{.*\})'", README.read_text())
    assert len(found) == 2, f"README: expected the encoder's and the language's config, found {found}"
    return {json.loads(text)["ec_role"]: text for text in found}


def readme_config(role: str, **override_extra: Any) -> dict[str, Any]:
    config = dict(json.loads(readme_configs()[role]))
    config["ec_connector_extra_config"] = {**config["ec_connector_extra_config"], **override_extra}
    return config
