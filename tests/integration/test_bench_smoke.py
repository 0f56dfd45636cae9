"""Smoke runs of every benchmark at toy sizes (N=2, about a second each).

They prove the suite works end to end — processes start, frames make the round trip through
each path with their stamps intact, CPU/RSS are attributed, results are written — without
asserting anything about speed (the machine is shared and noisy). Real numbers come from
`voxgate bench all` (docs/benchmarks.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tests.support.node import npm_ci
from voxgate.bench import bench_app
from voxgate.benchmarking.cascade import find_script
from voxgate.benchmarking.relay import NODE_RELAY_DIR, compat_available, node_relay_missing

runner = CliRunner()


def _invoke(args: list[str]) -> str:
    result = runner.invoke(bench_app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _saved(out_dir: Path, name: str) -> dict:
    files = sorted(out_dir.glob(f"{name}-*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_relay_every_path_round_trips_stamped_frames(tmp_path: Path) -> None:
    npm_ci(NODE_RELAY_DIR)  # what scripts/setup.sh does, in case the lock changed since
    output = _invoke([
        "relay", "--sizes", "2", "--duration", "1", "--warmup", "0.2", "--drain", "3",
        "--paths", "direct,raw,asgi,voxgate,voxgate_json,compat,node", "--out-dir", str(tmp_path),
    ])  # fmt: skip
    result = _saved(tmp_path, "relay")
    paths = {run["path"] for run in result["runs"]}
    expected = {"direct", "raw", "asgi", "voxgate", "voxgate_json", "node"}
    expected |= {"compat"} if compat_available() else set()
    # The Node relay is part of the suite: scripts/setup.sh installs it.
    assert node_relay_missing() is None and "node" not in result["skipped"]
    assert paths == expected
    by = {run["path"]: run for run in result["runs"]}
    assert by["voxgate_json"]["json_audio"] and not by["voxgate"]["json_audio"]
    for run in result["runs"]:
        assert run["connected"] == 2, run
        # ~50 frames a second per session over 1.2 s: every one came back with its stamp.
        assert run["frames_sent"] >= 2 * 40, run
        assert run["lost_frames"] == 0, run
        assert run["errors"] == 0, run["error_samples"]
        assert run["rtt_ms"]["n"] > 0 and run["rtt_ms"]["p50"] > 0
        if run["path"] != "direct":
            assert run["target_cores"] > 0 and run["target_rss_bytes"] > 10 * 2**20
    ratios = {r["path"]: r for r in result["ratios"]}
    assert set(ratios) >= {"voxgate", "voxgate_json", "node"}
    for path in ("voxgate", "voxgate_json"):
        # CPU per frame against both baselines, and the targets judged (met or not: no speed
        # is asserted here).
        assert ratios[path]["cpu_per_frame"] > 0 and ratios[path]["cpu_vs_node"] > 0
        assert ratios[path]["targets"] == "met" or ratios[path]["targets"].startswith("missed: ")
    assert result["machine"]["nproc"] >= 1
    assert "Relay overhead" in output and "Against the raw relay" in output
    assert "voxgate_json" in output and "CPU/frame vs node" in output


def test_frames_binary_and_json_audio(tmp_path: Path) -> None:
    _invoke([
        "frames", "--sessions", "2", "--duration", "1", "--warmup", "0.2", "--drain", "3",
        "--out-dir", str(tmp_path),
    ])  # fmt: skip
    result = _saved(tmp_path, "frames")
    by = {run["variant"]: run for run in result["runs"]}
    assert set(by) == {"binary", "json", "binary+client_deflate", "binary+upstream_deflate"}
    assert by["json"]["json_audio"] and not by["binary"]["json_audio"]
    # The client offered permessage-deflate and the gateway (uvicorn) accepted it.
    assert by["binary+client_deflate"]["deflate_negotiated"] == 2
    assert by["binary"]["deflate_negotiated"] == 0
    for run in by.values():
        assert run["lost_frames"] == 0 and run["errors"] == 0, run
        assert run["rtt_ms"]["n"] > 0
    assert result["bytes_per_frame"]["json_up"] > result["bytes_per_frame"]["binary"]


def test_memory_slope_idle_and_active(tmp_path: Path) -> None:
    _invoke([
        "memory", "--steps", "0,3,6", "--settle", "0.3", "--active-fps", "50",
        "--out-dir", str(tmp_path),
    ])  # fmt: skip
    result = _saved(tmp_path, "memory")
    for mode in ("idle", "active"):
        m = result["modes"][mode]
        assert [p["sessions"] for p in m["points"]] == [0, 3, 6]
        assert m["connect_failures"] == 0
        assert m["kib_per_session"] is not None
    active = result["modes"]["active"]["points"][-1]
    assert active["frames_received"] > 0


def test_connect_to_session_ready(tmp_path: Path) -> None:
    _invoke(["connect", "--sequential", "2", "--burst", "2", "--out-dir", str(tmp_path)])
    result = _saved(tmp_path, "connect")
    # In-memory SQLite shares one connection; the store serializes it, so no session fails.
    for path in ("direct", "voxgate", "voxgate_memory_db"):
        assert result[path]["failures"] == 0
        assert result[path]["sequential"]["n"] == 2
        assert result[path]["burst"]["n"] == 2


def test_cascade_latency_wired_in(tmp_path: Path) -> None:
    # The script is part of the repository: missing, it is a failure, not a skip.
    assert find_script() is not None
    _invoke(["cascade", "--utterances", "1", "--out-dir", str(tmp_path)])
    result = _saved(tmp_path, "cascade")
    assert result["utterances"] == 1
    assert "summary_ms" in result


def test_cluster_relay_through_haproxy_to_workers_and_connect_on_redis(tmp_path: Path) -> None:
    output = _invoke([
        "cluster", "--sessions", "2", "--workers", "1,2", "--duration", "1", "--warmup", "0.2",
        "--drain", "3", "--sequential", "2", "--burst", "2", "--out-dir", str(tmp_path),
    ])  # fmt: skip
    result = _saved(tmp_path, "cluster")
    assert [r["workers"] for r in result["relay"]] == [1, 2]
    for row in result["relay"]:
        run = row["run"]
        assert run["connected"] == 2 and run["frames_sent"] >= 2 * 40, run
        assert row["lost_frames"] == 0 and row["errors"] == 0, run["error_samples"]
        assert row["rtt_ms"]["p50"] > 0 and row["gateway_cores"] > 0
    for state in ("memory", "redis"):
        connect = result["connect"][state]
        assert connect["failures"] == 0 and connect["sequential"]["n"] == 2, connect
    said = " ".join(output.split())  # table titles wrap in a narrow terminal
    assert "gateway µs/frame" in said and "│ redis │ burst │" in said, said
