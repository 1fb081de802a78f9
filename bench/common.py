"""What every benchmark script does with its result: save it as JSON and print it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_result(result: dict[str, Any], out: str | Path, detail: str | None = None) -> None:
    """Write ``result`` to ``out`` (creating its folder) and print it, leaving out the bulky ``detail`` key."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != detail}, indent=2))
