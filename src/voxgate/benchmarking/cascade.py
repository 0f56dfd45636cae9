"""Benchmark 5: cascade turn latency, by running `benchmarks/cascade_latency.py`.

That script (owned by the cascade engine) drives the engine with real espeak-ng speech and
returns the per-stage breakdown; it lives in the source tree, not in the installed package, so
it is found on disk: `--script`, then `./benchmarks/`, then the checkout this package runs from.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import voxgate

SCRIPT_NAME = "cascade_latency.py"


def find_script(explicit: Path | None = None) -> Path | None:
    candidates = []
    if explicit is not None:
        candidates.append(explicit)
    candidates.append(Path.cwd() / "benchmarks" / SCRIPT_NAME)
    # An editable install runs from src/voxgate/: the checkout is two levels up.
    candidates.append(Path(voxgate.__file__).resolve().parents[2] / "benchmarks" / SCRIPT_NAME)
    for path in candidates:
        if path.is_file():
            return path
    return None


def cascade_benchmark(utterances: int, script: Path | None = None) -> dict[str, Any]:
    path = find_script(script)
    if path is None:
        raise FileNotFoundError(
            f"{SCRIPT_NAME} not found: run from the voxgate checkout or pass --script"
        )
    spec = importlib.util.spec_from_file_location("voxgate_cascade_latency", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result: dict[str, Any] = module.run(utterances)
    result["script"] = str(path)
    return result
