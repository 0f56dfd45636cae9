"""A gateway you can watch: metrics after a scripted conversation, live sessions, JSON logs with
the session id, and durability when the server is killed with SIGKILL mid-conversation."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.support.procs import VOXGATE, clean_env, free_port
from voxgate.client import VoxgateClient
from voxgate.store.sql import SqlConversationStore
from voxgate.testing.speech import silence, synthesize


def _samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            if sample.name.endswith("_bucket"):
                continue
            out[key] = sample.value
    return out


async def test_metrics_and_live_sessions_after_a_scripted_conversation(make_settings, gateway_factory) -> None:
    async with gateway_factory(make_settings()) as gw, httpx.AsyncClient(base_url=gw.http_url) as http:
        async with VoxgateClient(gw.ws_url) as client:
            ready = await client.start(binary=True)
            rate = client.input_rate
            await client.stream_audio(silence(200, rate) + synthesize("hello there", rate) + silence(900, rate), speed=4.0)
            await client.collect_reply(timeout=30)
            await client.user_message("second turn")
            await client.collect_reply(timeout=30)
            await client.send_raw("not json")  # one error by code
            await client.wait_for("error")

            live = (await http.get("/api/realtime/sessions")).json()["sessions"]
            assert len(live) == 1
            session = live[0]
            assert session["sessionId"] == ready["sessionId"]
            assert session["engine"] == "cascade" and session["audioInSeconds"] > 1.0
            assert session["audioOutSeconds"] > 0.5 and session["turns"] == 4
            one = (await http.get(f"/api/realtime/sessions/{ready['sessionId']}")).json()
            assert one["conversationId"] == ready["conversationId"]
            assert (await http.get("/api/realtime/sessions/nope")).status_code == 404
            status = (await http.get("/ws/status")).json()
            assert status["sessions"] == 1 and status["websockets"] == 1
            await client.stop()

        await asyncio.sleep(0.3)
        prom = _samples((await http.get("/metrics")).text)
        assert prom["voxgate_sessions_total{engine=cascade}"] == 1
        assert prom["voxgate_active_sessions{engine=cascade}"] == 0
        assert prom["voxgate_turns_total{role=user}"] == 2
        assert prom["voxgate_turns_total{role=assistant}"] == 2
        assert prom["voxgate_errors_total{code=invalid_json}"] == 1
        assert prom["voxgate_audio_in_seconds_total"] > 1.0
        assert prom["voxgate_audio_out_seconds_total"] > 0.5
        assert prom["voxgate_session_duration_seconds_count{engine=cascade}"] == 1
        assert prom["voxgate_turn_first_audio_seconds_count{engine=cascade}"] == 2
        assert prom["voxgate_turn_first_transcript_seconds_count{engine=cascade}"] == 2
        assert prom["voxgate_websockets_open"] == 0
        summary = (await http.get("/api/realtime/metrics")).json()
        assert summary["voxgate_turn_first_audio_seconds"]["engine=cascade"]["count"] == 2
        assert summary["voxgate_turn_first_audio_seconds"]["engine=cascade"]["mean"] > 0
        assert summary["live"]["sessions"] == 0


def _serve(tmp_path: Path, port: int, **env_extra: str) -> subprocess.Popen[bytes]:
    """`voxgate serve` with its stderr kept: these tests read its logs."""
    env = clean_env(
        VOXGATE_PORT=str(port),
        VOXGATE_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/kill.db",
        **env_extra,
    )
    return subprocess.Popen([VOXGATE, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def _wait_ready(port: int) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            try:
                if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError("server did not become ready")


async def _wait_for_turns(db: Path, conversation_id: str, count: int, timeout: float = 10.0) -> None:
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            (n,) = conn.execute(
                "SELECT count(*) FROM turns WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
        if n >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"only {n} turns committed after {timeout} s")


async def test_sigkill_mid_conversation_keeps_every_finished_turn(tmp_path: Path) -> None:
    port = free_port()
    proc = _serve(tmp_path, port, VOXGATE_LOG_FORMAT="json")
    try:
        await _wait_ready(port)
        client = await VoxgateClient(f"ws://127.0.0.1:{port}/ws").connect()
        ready = await client.start()
        for text in ("first finished turn", "second finished turn"):
            await client.user_message(text)
            await client.collect_reply(timeout=30)
        # A third turn in flight when the process dies.
        await client.user_message("a long third turn that is still being answered when the server dies")
        await client.wait_for("audio", timeout=30)
        # The finished turns are committed while the session is still live (not at its end):
        # wait for them to be visible to another connection, then kill the process.
        await _wait_for_turns(tmp_path / "kill.db", ready["conversationId"], 5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        await client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    # Structured logs: one JSON object per line, the session id on session lines.
    lines = [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert lines, stderr[-2000:]
    assert any(entry.get("sessionId") == ready["sessionId"] for entry in lines)

    store = SqlConversationStore(f"sqlite+aiosqlite:///{tmp_path}/kill.db")
    await store.open()
    try:
        record = await store.get_conversation(ready["conversationId"])
        assert record is not None
        texts = [(t.role, t.text) for t in record.turns]
        assert texts[0] == ("user", "first finished turn")
        assert texts[1][0] == "assistant" and "first finished turn" in texts[1][1]
        assert texts[2] == ("user", "second finished turn")
        assert texts[3][0] == "assistant" and "second finished turn" in texts[3][1]
        # The third user turn was final (typed) before the crash, so it is there too.
        assert ("user", "a long third turn that is still being answered when the server dies") in texts
    finally:
        await store.close()


async def test_graceful_shutdown_tells_clients_and_keeps_turns(tmp_path: Path) -> None:
    port = free_port()
    proc = _serve(tmp_path, port)
    try:
        await _wait_ready(port)
        client = await VoxgateClient(f"ws://127.0.0.1:{port}/ws").connect()
        ready = await client.start()
        await client.user_message("remember this before shutdown")
        await client.collect_reply(timeout=30)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status = await client.wait_for("status", where=lambda m: m["status"] == "disconnected", timeout=15)
        assert status["reason"] == "server_shutdown"
        try:
            while True:
                await client.recv(10)
        except Exception:
            pass
        assert client.close_code == 1001
        # uvicorn re-raises the signal after its graceful shutdown: -SIGTERM, not a crash.
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 20
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert "Traceback" not in stderr, stderr[-3000:]
        assert "Application shutdown complete" in stderr or "shutting down" in stderr.lower()
    finally:
        if proc.poll() is None:
            proc.kill()
    store = SqlConversationStore(f"sqlite+aiosqlite:///{tmp_path}/kill.db")
    await store.open()
    try:
        record = await store.get_conversation(ready["conversationId"])
        assert record is not None and len(record.turns) == 2
        assert record.ended_at is not None
    finally:
        await store.close()


async def test_audio_logs_write_a_wav_per_turn(make_settings, gateway_factory, tmp_path: Path) -> None:
    from voxgate.audio import read_wav

    logs = tmp_path / "audio-logs"
    async with gateway_factory(make_settings(audio_log_dir=str(logs))) as gw:
        async with VoxgateClient(gw.ws_url) as client:
            ready = await client.start(binary=True)
            rate = client.input_rate
            await client.stream_audio(silence(200, rate) + synthesize("hello there", rate) + silence(900, rate), speed=4.0)
            await client.collect_reply(timeout=30)
            await client.stop()
        await gw.wait_idle()
    files = sorted((logs / ready["conversationId"]).glob("*.wav"))
    assert [f.name.split("-", 1)[1] for f in files] == ["user.wav", "assistant.wav"]
    user_pcm, user_rate = read_wav(files[0])
    assert user_rate == 24000 and len(user_pcm) / 2 / user_rate > 0.5
    reply_pcm, reply_rate = read_wav(files[1])
    assert len(reply_pcm) / 2 / reply_rate > 0.5
