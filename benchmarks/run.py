"""Run the benchmark suite from a checkout: `python benchmarks/run.py all` (= `voxgate bench all`).

Every benchmark lives in the installed package (`voxgate.benchmarking`, CLI in `voxgate.bench`)
so `voxgate bench ...` works from any install; this script only forwards its arguments.
`benchmarks/cascade_latency.py` (the cascade turn-latency benchmark) runs on its own too and is
what `voxgate bench cascade` calls.
"""

from __future__ import annotations

import sys

from voxgate.bench import bench_app

if __name__ == "__main__":
    bench_app(sys.argv[1:], prog_name="benchmarks/run.py")
