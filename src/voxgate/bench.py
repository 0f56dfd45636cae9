"""`voxgate bench ...`: the benchmark suite (docs/benchmarks.md).

Each command runs one benchmark with fresh processes, prints a JSON summary and a table, and
writes the full result to `benchmarks/results/<name>-<UTC timestamp>.json` (`--out-dir`,
`--no-save`). `voxgate bench all` runs every benchmark once at its default size.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from voxgate.benchmarking import report
from voxgate.benchmarking._run import LOOP_ENV, LOOPS

bench_app = typer.Typer(
    help="Measure the gateway's cost against a raw relay and a direct connection.",
    no_args_is_help=True,
    add_completion=False,
)
#: Wide enough for the relay table when piped to a file or CI log (rich defaults to 80 there).
console = Console(width=None if Console().is_terminal else 160)

OutDir = Annotated[
    Path, typer.Option("--out-dir", help="Where result JSON files go.")
]
Duration = Annotated[float, typer.Option(help="Measured seconds per run.")]
Warmup = Annotated[float, typer.Option(help="Streaming seconds before measuring.")]
Drain = Annotated[float, typer.Option(help="Seconds to wait for the last echoes.")]
NoSave = Annotated[bool, typer.Option("--no-save", help="Print only; write no result file.")]
Nice = Annotated[
    int,
    typer.Option(
        "--nice",
        help="Scheduling niceness for every benchmark process (children inherit it); negative "
        "values (root only) keep a shared machine's other load from starving the measurement.",
    ),
]
Repeat = Annotated[
    int, typer.Option(help="Runs per measurement, interleaved across paths; the median is reported.")
]
Loop = Annotated[
    str, typer.Option("--loop", help="Event loop for every process: asyncio (default, like-for-like with docs/benchmarks.md) or uvloop (what `voxgate serve` runs).")
]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _setup(loop: str, nice: int = 0) -> None:
    if loop not in LOOPS:
        raise typer.BadParameter(f"--loop must be one of {', '.join(LOOPS)}")
    os.environ[LOOP_ENV] = loop
    if nice:
        try:
            os.nice(nice)
        except PermissionError:
            console.print(f"[yellow]--nice {nice}: not permitted; running at normal priority[/yellow]")
            return
        # With autogroup scheduling (the Linux default for desktop/interactive sessions) a nice
        # value only ranks processes inside their own session's group; the group's weight
        # against other sessions is set here. Children inherit both.
        with contextlib.suppress(OSError):
            Path("/proc/self/autogroup").write_text(str(nice))


def _emit(name: str, result: dict[str, Any], summary: Any, out_dir: Path, no_save: bool) -> None:
    path = report.write_result(name, result, None if no_save else out_dir)
    console.print_json(orjson.dumps(summary).decode())
    if path is not None:
        console.print(f"[dim]full result: {path}[/dim]")


# --- summaries and tables -----------------------------------------------------------------------


def relay_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for run in result["runs"]:
        rtt = run["rtt_ms"]
        cpu = run["cpu_cores"]
        rows.append({
            "sessions": run["sessions"],
            "path": run.get("variant") or run["path"],
            "p50_ms": rtt["p50"], "p90_ms": rtt["p90"], "p99_ms": rtt["p99"], "max_ms": rtt["max"],
            "lost": run["lost_frames"], "late": run["late_sends"],
            "connect_failures": run["connect_failures"], "errors": run["errors"],
            "target_cores": run["target_cores"],
            "target_us_per_frame": run.get("target_us_per_frame"),
            "target_rss_mib": round(run["target_rss_bytes"] / 2**20, 1) if run["target_rss_bytes"] else None,
            "echo_cores": cpu.get("echo"), "loadgen_cores": cpu.get("loadgen"),
            "machine_cores": cpu.get("machine"),
        })  # fmt: skip
    return rows


def print_relay(result: dict[str, Any], title: str = "Relay overhead (round trip of 20 ms frames)") -> None:
    f = report.fmt
    rows = [
        [str(r["sessions"]), r["path"], f(r["p50_ms"], 2), f(r["p90_ms"], 2), f(r["p99_ms"], 2),
         f(r["max_ms"], 1), str(r["lost"]), str(r["late"]), f(r["target_cores"], 2),
         f(r["target_us_per_frame"], 0), f(r["target_rss_mib"], 0), f(r["echo_cores"], 2), f(r["loadgen_cores"], 2),
         f(r["machine_cores"], 2)]
        for r in relay_rows(result)
    ]  # fmt: skip
    report.print_table(
        console, title,
        ["N", "path", "p50 ms", "p90 ms", "p99 ms", "max ms", "lost", "late", "cores",
         "µs/frame", "RSS MiB", "echo cores", "loadgen cores", "machine cores"],
        rows,
    )  # fmt: skip
    ratios = result.get("ratios")
    if isinstance(ratios, list) and ratios:
        report.print_table(
            console,
            "Against the raw relay (ratio; added p99 = p99 minus the direct path's; CPU/frame vs "
            "node = against the Node ws relay; targets: CPU/frame <= 1.15x, at N <= 200 p50 <= "
            "1.5x and p99 <= 2x, nothing lost)",
            ["N", "path", "CPU", "CPU/frame", "p50", "p99", "added p99", "RSS", "lost",
             "CPU/frame vs node", "targets"],
            [[str(r["sessions"]), r["path"], f(r["cpu"], 2), f(r["cpu_per_frame"], 2),
              f(r.get("p50"), 2), f(r["p99"], 2), f(r["added_p99"], 2),
              f(r["rss"], 2), str(r["lost_frames"]), f(r.get("cpu_vs_node"), 2),
              r.get("targets", "")] for r in ratios],
        )  # fmt: skip
    for path, why in (result.get("skipped") or {}).items():
        console.print(f"[yellow]skipped {path}: {why}[/yellow]")


def print_frames(result: dict[str, Any]) -> None:
    print_relay(result, "Client link: binary frames vs base64 JSON (voxgate path)")
    f = report.fmt
    report.print_table(
        console, "Against binary frames without compression (ratio)",
        ["variant", "CPU", "CPU/frame", "p50", "p99"],
        [[label, f(r["cpu"], 2), f(r["cpu_per_frame"], 2), f(r["p50"], 2), f(r["p99"], 2)]
         for label, r in result["ratios_vs_binary"].items()],
    )  # fmt: skip


def print_memory(result: dict[str, Any]) -> None:
    rows = []
    for mode, m in result["modes"].items():
        pts = ", ".join(f"{p['sessions']}:{p['rss_bytes'] / 2**20:.0f}" for p in m["points"])
        rows.append([mode, report.fmt(m["kib_per_session"]), report.mib(m["baseline_rss_bytes"]),
                     str(m["connect_failures"]), pts])  # fmt: skip
    report.print_table(
        console, "Gateway memory per session (RSS slope)",
        ["mode", "KiB/session", "baseline MiB", "failures", "sessions:RSS MiB"], rows,
    )  # fmt: skip


def print_connect(result: dict[str, Any]) -> None:
    f = report.fmt
    rows = []
    for path in ("direct", "voxgate", "voxgate_memory_db"):
        if path not in result:
            continue
        r = result[path]
        for kind in ("sequential", "burst"):
            s = r[kind]
            label = kind if kind == "sequential" else f"burst of {s['size']}"
            rows.append([path, label, str(s["n"]), f(s["p50"], 2), f(s["p90"], 2), f(s["p99"], 2),
                         f(s["max"], 1), str(r["failures"])])  # fmt: skip
    report.print_table(
        console,
        "Connect to ready (voxgate: session_ready; direct: session.updated; "
        "voxgate_memory_db: conversations in in-memory SQLite)",
        ["path", "kind", "n", "p50 ms", "p90 ms", "p99 ms", "max ms", "failures"], rows,
    )  # fmt: skip


def print_cascade(result: dict[str, Any]) -> None:
    rows = [
        [stage, report.fmt(s["p50"]), report.fmt(s["p90"]), report.fmt(s["mean"])]
        for stage, s in (result.get("summary_ms") or {}).items()
    ]
    report.print_table(
        console,
        f"Cascade turn latency ({result.get('measured')} of {result.get('utterances')} turns measured)",
        ["stage", "p50 ms", "p90 ms", "mean ms"], rows,
    )  # fmt: skip


# --- commands -------------------------------------------------------------------------------------


def _relay(
    sizes: str, paths: str, duration: float, warmup: float, drain: float, repeat: int = 1
) -> dict[str, Any]:
    from voxgate.benchmarking.relay import EXTRA_PATHS, PATHS, relay_benchmark

    wanted = [p.strip() for p in paths.split(",") if p.strip()]
    for p in wanted:
        if p not in PATHS + EXTRA_PATHS:
            raise typer.BadParameter(f"unknown path {p!r}; known: {', '.join(PATHS + EXTRA_PATHS)}")
    return relay_benchmark(_ints(sizes), wanted, duration, warmup, drain, repeat)


@bench_app.command()
def relay(
    sizes: Annotated[str, typer.Option(help="Session counts, comma-separated.")] = "50,200,400",
    paths: Annotated[
        str,
        typer.Option(
            help="direct,raw,voxgate,voxgate_json,compat,node; add asgi for the raw relay under "
            "uvicorn"
        ),
    ] = "direct,raw,voxgate,voxgate_json,compat,node",
    duration: Duration = 10.0,
    warmup: Warmup = 2.0,
    drain: Drain = 3.0,
    repeat: Repeat = 1,
    loop: Loop = "asyncio",
    nice: Nice = 0,
    out_dir: OutDir = report.DEFAULT_RESULTS_DIR,
    no_save: NoSave = False,
) -> None:
    """Relay overhead at each size: direct, the raw Python relay, /ws with binary and with JSON
    (base64) audio, /v1/realtime, and the Node ws relay, side by side."""
    _setup(loop, nice)
    result = {"benchmark": "relay", "machine": report.machine(),
              **_relay(sizes, paths, duration, warmup, drain, repeat)}  # fmt: skip
    _emit("relay", result, {"rows": relay_rows(result), "ratios": result["ratios"]}, out_dir, no_save)
    print_relay(result)


@bench_app.command()
def frames(
    sessions: Annotated[int, typer.Option(help="Concurrent sessions.")] = 100,
    duration: Duration = 10.0,
    warmup: Warmup = 2.0,
    drain: Drain = 3.0,
    repeat: Repeat = 1,
    loop: Loop = "asyncio",
    nice: Nice = 0,
    out_dir: OutDir = report.DEFAULT_RESULTS_DIR,
    no_save: NoSave = False,
) -> None:
    """Binary audio frames against base64 JSON on the client link (and permessage-deflate)."""
    from voxgate.benchmarking.relay import frames_benchmark

    _setup(loop, nice)
    result = {"benchmark": "frames", "machine": report.machine(),
              **frames_benchmark(sessions, duration, warmup, drain, repeat)}  # fmt: skip
    summary = {"rows": relay_rows(result), "ratios_vs_binary": result["ratios_vs_binary"],
               "bytes_per_frame": result["bytes_per_frame"]}  # fmt: skip
    _emit("frames", result, summary, out_dir, no_save)
    print_frames(result)


@bench_app.command()
def memory(
    steps: Annotated[str, typer.Option(help="Session counts to step through.")] = "0,100,200,300,400,500",
    modes: Annotated[str, typer.Option(help="idle,active")] = "idle,active",
    active_fps: Annotated[float, typer.Option(help="Frames per second per active session.")] = 10.0,
    settle: Annotated[float, typer.Option(help="Seconds to settle before reading RSS.")] = 2.0,
    loop: Loop = "asyncio",
    nice: Nice = 0,
    out_dir: OutDir = report.DEFAULT_RESULTS_DIR,
    no_save: NoSave = False,
) -> None:
    """Gateway RSS per idle and per active session (slope over the steps)."""
    from voxgate.benchmarking.memory import memory_benchmark

    _setup(loop, nice)
    result = {"benchmark": "memory", "machine": report.machine(),
              **memory_benchmark(_ints(steps), [m.strip() for m in modes.split(",") if m.strip()],
                                 active_fps, settle)}  # fmt: skip
    summary = {mode: {"kib_per_session": m["kib_per_session"], "points": m["points"]}
               for mode, m in result["modes"].items()}  # fmt: skip
    _emit("memory", result, summary, out_dir, no_save)
    print_memory(result)


@bench_app.command()
def connect(
    sequential: Annotated[int, typer.Option(help="Connections made one after another.")] = 30,
    burst: Annotated[int, typer.Option(help="Connections made all at once.")] = 50,
    loop: Loop = "asyncio",
    nice: Nice = 0,
    out_dir: OutDir = report.DEFAULT_RESULTS_DIR,
    no_save: NoSave = False,
) -> None:
    """Time from connect to session_ready (and the direct upstream handshake for reference)."""
    from voxgate.benchmarking.connect import connect_benchmark

    _setup(loop, nice)
    result = {"benchmark": "connect", "machine": report.machine(), **connect_benchmark(sequential, burst)}
    summary = {p: {"sequential": result[p]["sequential"], "burst": result[p]["burst"]}
               for p in ("direct", "voxgate", "voxgate_memory_db")}  # fmt: skip
    _emit("connect", result, summary, out_dir, no_save)
    print_connect(result)


@bench_app.command()
def cascade(
    utterances: Annotated[int, typer.Option(help="Spoken turns to measure.")] = 10,
    script: Annotated[Path | None, typer.Option(help="Path to cascade_latency.py.")] = None,
    wer_sentences: Annotated[
        int, typer.Option(help="Sentences (x3 voices x clean/noisy) for word error rate; 0 = skip.")
    ] = 0,
    out_dir: OutDir = report.DEFAULT_RESULTS_DIR,
    no_save: NoSave = False,
) -> None:
    """Cascade turn latency with its per-stage breakdown (benchmarks/cascade_latency.py), and
    with `--wer-sentences 40` the recognisers' word error rate."""
    from voxgate.benchmarking.cascade import cascade_benchmark

    try:
        data = cascade_benchmark(utterances, script)
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if wer_sentences > 0:
        from voxgate.benchmarking.cascade_wer import wer_benchmark

        data["wer"] = wer_benchmark(wer_sentences)
        for name, r in data["wer"]["recognisers"].items():
            console.print(f"WER {name}: {r['wer']} (decode p50 {r['decode_s_p50']} s)")
    result = {"benchmark": "cascade", "machine": report.machine(), **data}
    _emit("cascade", result, data.get("summary_ms"), out_dir, no_save)
    print_cascade(result)


@bench_app.command()
def cluster(
    sessions: Annotated[int, typer.Option(help="Concurrent relay sessions through HAProxy.")] = 200,
    worker_counts: Annotated[str, typer.Option("--workers", help="Worker counts to compare.")] = "1,2",
    duration: Duration = 10.0,
    warmup: Warmup = 2.0,
    drain: Drain = 3.0,
    sequential: Annotated[int, typer.Option(help="Connections made one after another.")] = 30,
    burst: Annotated[int, typer.Option(help="Connections made all at once.")] = 50,
    loop: Loop = "asyncio",
    nice: Nice = 0,
    out_dir: OutDir = report.DEFAULT_RESULTS_DIR,
    no_save: NoSave = False,
) -> None:
    """The relay load through HAProxy to N worker processes on Redis, and connect latency with
    the memory shared state against Redis."""
    from voxgate.benchmarking.cluster import cluster_benchmark

    _setup(loop, nice)
    data = cluster_benchmark(sessions, duration, warmup, drain, _ints(worker_counts), sequential, burst)
    result = {"benchmark": "cluster", "machine": report.machine(), **data}
    f = report.fmt
    relay_table = [
        [str(r["workers"]), str(r["sessions"]), f(r["rtt_ms"]["p50"], 2), f(r["rtt_ms"]["p99"], 2),
         str(r["lost_frames"]), f(r["gateway_cores"], 2), f(r["gateway_us_per_frame"], 0),
         f(r["haproxy_us_per_frame"], 0), f(r["machine_cores"], 2)]
        for r in data["relay"]
    ]  # fmt: skip
    connect_table = [
        [name, kind, f(c[kind]["p50"], 2), f(c[kind]["p99"], 2), str(c["failures"])]
        for name, c in data["connect"].items() for kind in ("sequential", "burst")
    ]  # fmt: skip
    summary = {
        "relay": [{k: v for k, v in r.items() if k != "run"} for r in data["relay"]],
        "connect_p50_ms": {n: c["sequential"]["p50"] for n, c in data["connect"].items()},
    }
    _emit("cluster", result, summary, out_dir, no_save)
    report.print_table(
        console, "Relay through HAProxy to N workers on Redis (20 ms frames, round trip)",
        ["workers", "N", "p50 ms", "p99 ms", "lost", "gateway cores", "gateway µs/frame",
         "haproxy µs/frame", "machine cores"], relay_table,
    )  # fmt: skip
    report.print_table(
        console, "Connect to session_ready, one process: memory shared state vs Redis",
        ["state", "kind", "p50 ms", "p99 ms", "failures"], connect_table,
    )  # fmt: skip


@bench_app.command("all")
def all_(
    sizes: Annotated[str, typer.Option(help="Relay session counts.")] = "50,200,400",
    duration: Annotated[float, typer.Option(help="Measured seconds per relay run.")] = 10.0,
    memory_steps: Annotated[str, typer.Option(help="Memory benchmark steps.")] = "0,100,200,300,400,500",
    frames_sessions: Annotated[int, typer.Option(help="Sessions for the frames benchmark.")] = 100,
    utterances: Annotated[int, typer.Option(help="Cascade turns.")] = 10,
    loop: Loop = "asyncio",
    nice: Nice = 0,
    out_dir: OutDir = report.DEFAULT_RESULTS_DIR,
    no_save: NoSave = False,
) -> None:
    """Every benchmark once, side by side, in one result file (a few minutes)."""
    from voxgate.benchmarking.cascade import cascade_benchmark
    from voxgate.benchmarking.connect import connect_benchmark
    from voxgate.benchmarking.memory import memory_benchmark
    from voxgate.benchmarking.relay import PATHS, frames_benchmark

    _setup(loop, nice)
    started = time.monotonic()
    result: dict[str, Any] = {"benchmark": "all", "machine": report.machine()}
    result["relay"] = _relay(sizes, ",".join(PATHS), duration, 2.0, 3.0)
    print_relay(result["relay"])
    result["frames"] = frames_benchmark(frames_sessions, duration, 2.0, 3.0)
    print_frames(result["frames"])
    result["memory"] = memory_benchmark(_ints(memory_steps), ["idle", "active"])
    print_memory(result["memory"])
    result["connect"] = connect_benchmark(30, 50)
    print_connect(result["connect"])
    try:
        result["cascade"] = cascade_benchmark(utterances)
        print_cascade(result["cascade"])
    except FileNotFoundError as exc:
        result["cascade"] = {"skipped": str(exc)}
        console.print(f"[yellow]cascade skipped: {exc}[/yellow]")
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    summary = {
        "relay": relay_rows(result["relay"]),
        "relay_ratios": result["relay"]["ratios"],
        "frames": result["frames"]["ratios_vs_binary"],
        "memory_kib_per_session": {m: r["kib_per_session"] for m, r in result["memory"]["modes"].items()},
        "connect_p50_ms": {p: result["connect"][p]["sequential"]["p50"] for p in ("direct", "voxgate")},
        "cascade_ms": result["cascade"].get("summary_ms"),
        "elapsed_s": result["elapsed_s"],
    }
    _emit("all", result, summary, out_dir, no_save)
