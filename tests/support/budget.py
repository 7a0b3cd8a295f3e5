"""How hard the property tests search. The default budgets find the regressions they exist for in
the time a CI run has; ``KVFERRY_DEEP=1`` searches much longer, for a night or a release."""

from __future__ import annotations

import os

DEEP = os.environ.get("KVFERRY_DEEP") == "1"


def examples(default: int, deep: int) -> int:
    return deep if DEEP else default
