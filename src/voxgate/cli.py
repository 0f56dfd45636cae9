"""`voxgate` command line: serve, talk, token, simulate, conversations, db, bench."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from voxgate import __version__
from voxgate.config import Settings

app = typer.Typer(
    name="voxgate",
    help="voxgate: a realtime voice-conversation gateway.",
    no_args_is_help=True,
    add_completion=False,
)
simulate_app = typer.Typer(help="Run a provider simulator (offline development and tests).")
app.add_typer(simulate_app, name="simulate")
console = Console(stderr=False)
err = Console(stderr=True)

log = logging.getLogger("voxgate.cli")


def _mount_optional() -> None:
    try:
        from voxgate.store.cli import conversations_app, db_app
    except ImportError:  # pragma: no cover - store extras missing
        return
    app.add_typer(conversations_app, name="conversations", help="Stored conversations.")
    app.add_typer(db_app, name="db", help="Database schema.")
    try:
        from voxgate.bench import bench_app
    except ImportError:
        return
    app.add_typer(bench_app, name="bench", help="Benchmarks (see docs/benchmarks.md).")


def _load_settings(**overrides: Any) -> Settings:
    """The settings, or exit 2 naming each bad variable and what it accepts (e.g.
    `VOXGATE_STT: Input should be 'pocketsphinx', 'openai' or 'whisper'`), not a traceback."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            name = ".".join(str(part) for part in error["loc"])
            got = error.get("input")
            detail = error["msg"]
            if isinstance(got, str | int | float):
                detail += f" (got {got!r})"
            err.print(f"[red]voxgate: {escape(name)}: {escape(detail)}[/red]")
        raise typer.Exit(2) from None


@app.command()
def version() -> None:
    """Print the version."""
    console.print(__version__)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (VOXGATE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (VOXGATE_PORT).")] = None,
    engine: Annotated[str | None, typer.Option(help="Default engine (VOXGATE_ENGINE).")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow VOXGATE_AUTH=none on a non-loopback host.")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            help="Gateway processes on the one port (SO_REUSEPORT); more than 1 needs "
            "VOXGATE_REDIS_URL."
        ),
    ] = 1,
) -> None:
    """Run the gateway (browser client at http://HOST:PORT)."""
    from voxgate.gateway.server import serve as run_server
    from voxgate.logs import configure_logging
    from voxgate.secrets import register_secret

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if engine is not None:
        overrides["engine"] = engine
    if insecure:
        overrides["insecure"] = True
    settings = _load_settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    for secret in (settings.openai_api_key, settings.elevenlabs_api_key, settings.jwt_secret, settings.llm_api_key):
        if secret is not None:
            register_secret(secret.get_secret_value())
    from voxgate.gateway.workers import serve_workers, workers_refusal

    problem = check_serve_settings(settings) or workers_refusal(settings, workers)
    if problem:
        err.print(f"[red]voxgate: {escape(problem)}[/red]")
        raise typer.Exit(2)
    log.info("conversations stored in %s", _shown_url(settings.database_url))
    _warn_about_old_store(settings)
    describe_engines(settings)
    if workers > 1:
        raise typer.Exit(serve_workers(settings, workers))
    run_server(settings)


def _warn_about_old_store(settings: Settings) -> None:
    """Older versions kept the default store in the working directory: say where it went, so
    an upgrade does not look like lost conversations."""
    from voxgate.config import default_database_url

    if settings.database_url == default_database_url() and Path("voxgate.db").is_file():
        log.warning(
            "found ./voxgate.db, the store of an older voxgate; the default is now %s. To keep "
            "using ./voxgate.db set VOXGATE_DATABASE_URL=sqlite+aiosqlite:///%s, or move it there",
            _shown_url(settings.database_url), Path("voxgate.db").resolve(),
        )


def _shown_url(url: str) -> str:
    """The store's URL as an operator needs it in a log: the file's path, no password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(an unparseable VOXGATE_DATABASE_URL)"


def check_serve_settings(settings: Settings) -> str | None:
    """A sentence explaining why the server must not start, or None."""
    if settings.auth == "none" and not settings.is_loopback() and not settings.insecure:
        return (
            f"refusing to serve on non-loopback host {settings.host} without authentication: "
            "anyone who can reach it could spend your provider credits. Set VOXGATE_AUTH=jwt "
            "with VOXGATE_JWT_SECRET, bind 127.0.0.1, or pass --insecure if a proxy in front "
            "authenticates."
        )
    if settings.auth == "jwt" and settings.jwt_secret is None:
        return "VOXGATE_AUTH=jwt needs VOXGATE_JWT_SECRET (a long random string)"
    if settings.auth == "jwt" and settings.jwt_secret is not None:
        from voxgate.gateway.auth import weak_jwt_secret

        if (weak := weak_jwt_secret(settings.jwt_secret.get_secret_value())) is not None:
            return weak
    from voxgate.engines import ENGINES

    for name in settings.engines_allowed_for_clients():
        if name not in ENGINES:
            return f"unknown engine '{name}'; known engines: {', '.join(ENGINES)}"
    if settings.tools or settings.tools_file:
        from voxgate.tools.box import ToolBox

        try:
            ToolBox.from_settings(settings)  # the modules and the file load, or say why not
        except ValueError as exc:
            return str(exc)
    return None


def describe_engines(settings: Settings) -> None:
    """Log which engines (and, for the cascade, which parts) are active and why."""
    from voxgate.engines import engine_class

    for name in settings.engines_allowed_for_clients():
        try:
            cls = engine_class(name)
        except Exception as exc:
            log.warning("engine %s: cannot be loaded: %s", name, exc)
            continue
        lines = cls.describe(settings)
        problem = cls.availability(settings)
        state = f"unavailable: {problem}" if problem else "available"
        default = " (default)" if name == settings.engine else ""
        log.info("engine %s%s: %s", name, default, state)
        for line in lines:
            log.info("  %s: %s", name, line)


@app.command()
def talk(
    url: Annotated[
        str, typer.Option(envvar="VOXGATE_URL", help="Gateway WebSocket URL.")
    ] = "ws://127.0.0.1:8000/ws",
    wav: Annotated[Path | None, typer.Option(help="Speak this WAV file (any rate).")] = None,
    text: Annotated[str | None, typer.Option(help="Type this message instead of speaking.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the reply audio to this WAV.")] = None,
    token: Annotated[str | None, typer.Option(envvar="VOXGATE_TOKEN", help="Bearer token.")] = None,
    engine: Annotated[str | None, typer.Option(help="Ask for this engine.")] = None,
    manual: Annotated[bool, typer.Option(help="Push-to-talk: commit after the audio.")] = False,
    fast: Annotated[bool, typer.Option(help="Send audio as fast as possible.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the reply.")] = 60.0,
) -> None:
    """Hold one turn of a conversation and print both transcripts live."""
    if (wav is None) == (text is None):
        err.print("[red]give exactly one of --wav or --text[/red]")
        raise typer.Exit(2)
    try:
        code = asyncio.run(_talk(url, wav, text, out, token, engine, manual, fast, timeout))
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


async def _talk(
    url: str,
    wav: Path | None,
    text: str | None,
    out: Path | None,
    token: str | None,
    engine: str | None,
    manual: bool,
    fast: bool,
    timeout: float,
) -> int:
    from voxgate.audio import silence_pcm, write_wav
    from voxgate.client import ProtocolFailure, VoxgateClient

    client = VoxgateClient(url, token)
    try:
        await client.connect()
    except Exception as exc:
        err.print(f"[red]cannot connect to {url}: {exc}[/red]")
        return 1
    options: dict[str, Any] = {"binary": True}
    if engine:
        options["engine"] = engine
    if manual:
        options["turnDetection"] = {"mode": "manual"}
    try:
        ready = await client.start(**options)
        err.print(
            f"[dim]session {ready['sessionId']} · engine {ready['engine']} · "
            f"conversation {ready['conversationId']}[/dim]"
        )
        if manual and ready.get("capabilities", {}).get("manualTurns") is False:
            # The engine's model decides turn ends itself (GPT-Live): no commit, just silence.
            err.print(f"[dim]{ready['engine']} ends turns itself: --manual is ignored[/dim]")
            manual = False
        sender: asyncio.Task[Any] | None = None
        if text is not None:
            console.print(f"[bold cyan]you:[/bold cyan] {text}")
            await client.user_message(text)
        else:
            assert wav is not None

            async def send_speech() -> None:
                await client.stream_wav(wav, realtime=not fast)
                if manual:
                    await client.commit()
                else:
                    # Trailing silence lets server VAD see the end of the turn.
                    await client.stream_audio(silence_pcm(1500, client.input_rate), realtime=not fast)

            sender = asyncio.create_task(send_speech())
        audio = bytearray()
        printed_assistant = ""
        while True:
            message = await client.recv(timeout)
            kind = message["type"]
            if kind == "transcript":
                if message["role"] == "user" and message["final"]:
                    console.print(f"[bold cyan]you:[/bold cyan] {message['text']}")
                elif message["role"] == "assistant":
                    new = message["text"][len(printed_assistant):] if message["text"].startswith(printed_assistant) else message["delta"]
                    if not printed_assistant:
                        console.print("[bold green]assistant:[/bold green] ", end="")
                    console.print(new, end="")
                    printed_assistant = message["text"]
            elif kind == "audio":
                audio.extend(message["pcm16"])
            elif kind == "error":
                err.print(f"\n[red]error {message['code']}: {message['message']}[/red]")
                if message.get("fatal"):
                    return 1
            elif kind == "response_done":
                console.print()
                err.print(f"[dim]response {message['status']} · {len(audio) / 2 / client.output_rate:.2f} s of audio[/dim]")
                break
        if sender is not None:
            sender.cancel()
        if out is not None:
            write_wav(out, bytes(audio), client.output_rate)
            err.print(f"[dim]reply audio written to {out}[/dim]")
        await client.stop()
        return 0
    except (ProtocolFailure, TimeoutError) as exc:
        err.print(f"[red]{exc}[/red]")
        return 1
    finally:
        await client.close()


@app.command()
def token(
    user: Annotated[str, typer.Option(help="User id (the JWT 'sub').")],
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds.")] = 3600,
    admin: Annotated[bool, typer.Option(help="Grant access to admin routes.")] = False,
    engine: Annotated[
        list[str] | None,
        typer.Option(help="Limit the user to this engine (repeatable; the 'engines' claim)."),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(help="Limit the user to this model (repeatable; the 'models' claim)."),
    ] = None,
) -> None:
    """Mint a JWT for a user (needs VOXGATE_JWT_SECRET)."""
    from voxgate.gateway.auth import Authenticator, AuthError, ConfigError

    settings = _load_settings()
    try:
        minted = Authenticator(settings).mint_jwt(user, ttl, admin=admin, engines=engine, models=model)
        console.print(minted, soft_wrap=True)
    except AuthError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@simulate_app.command("openai")
def simulate_openai(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 9100,
    key: Annotated[list[str] | None, typer.Option(help="Accepted API key (repeatable).")] = None,
    pace: Annotated[float, typer.Option(help="Speech pacing: 1 = real time, 4 = 4x faster.")] = 1.0,
    transcript: Annotated[str | None, typer.Option(help="Scripted user transcript.")] = None,
) -> None:
    """An OpenAI Realtime GA simulator at ws://HOST:PORT/v1/realtime."""
    from voxgate.testing.openai_sim import run_openai_sim

    run_openai_sim(host=host, port=port, keys=key or ["sk-test"], pace=pace, transcript=transcript)


@simulate_app.command("openai-live")
def simulate_openai_live(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 9150,
    key: Annotated[list[str] | None, typer.Option(help="Accepted API key (repeatable).")] = None,
    transcript: Annotated[str | None, typer.Option(help="Scripted user transcript.")] = None,
    pocketsphinx: Annotated[bool, typer.Option(help="Recognise speech for real.")] = False,
    delegate_on: Annotated[
        list[str] | None, typer.Option(help="A phrase that makes the model delegate (repeatable).")
    ] = None,
    tool_trigger: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PHRASE=NAME:JSON",
            help="Under Responses delegation, the backend calls NAME with the JSON arguments when "
            "the user says PHRASE (repeatable).",
        ),
    ] = None,
) -> None:
    """An OpenAI GPT-Live simulator at ws://HOST:PORT/v1/live/sessions."""
    import orjson

    from voxgate.testing.openai_live_sim import run_openai_live_sim
    from voxgate.testing.tooling import ToolTrigger

    triggers = []
    for spec in tool_trigger or []:
        phrase, _, call = spec.partition("=")
        name, _, arguments = call.partition(":")
        if not phrase or not name:
            err.print(f"[red]--tool-trigger {spec!r}: expected PHRASE=NAME:JSON[/red]")
            raise typer.Exit(2)
        triggers.append(ToolTrigger.one(phrase, name, orjson.loads(arguments or "{}")))
    run_openai_live_sim(
        host=host, port=port, keys=key or ["sk-test"], transcript=transcript,
        pocketsphinx=pocketsphinx, delegate_on=delegate_on or (), tool_triggers=triggers,
    )  # fmt: skip


@simulate_app.command("elevenlabs")
def simulate_elevenlabs(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 9200,
    api_key: Annotated[str, typer.Option(help="Accepted xi-api-key.")] = "xi-test",
    agent_id: Annotated[str, typer.Option(help="The agent id.")] = "agent_test",
    pace: Annotated[float, typer.Option(help="Speech pacing: 1 = real time.")] = 1.0,
    transcript: Annotated[str | None, typer.Option(help="Scripted user transcript.")] = None,
    public: Annotated[bool, typer.Option(help="A public agent (no signed URL needed).")] = False,
    output_format: Annotated[str, typer.Option(help="Agent audio format, e.g. pcm_44100.")] = "pcm_16000",
) -> None:
    """An ElevenLabs ConvAI simulator (REST signed URL + conversation socket)."""
    from voxgate.testing.elevenlabs_sim import run_elevenlabs_sim

    run_elevenlabs_sim(
        host=host,
        port=port,
        api_key=api_key,
        agent_id=agent_id,
        pace=pace,
        transcript=transcript,
        public=public,
        output_format=output_format,
    )


@simulate_app.command("llm")
def simulate_llm(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 9300,
    reply: Annotated[str, typer.Option(help="What the assistant always answers.")] = (
        "Hello! This is the simulated assistant. How can I help you today?"
    ),
    api_key: Annotated[str | None, typer.Option(help="Require this bearer key (default: none).")] = None,
    token_delay: Annotated[float, typer.Option(help="Seconds between streamed tokens.")] = 0.0,
    transcript: Annotated[str, typer.Option(help="What /v1/audio/transcriptions answers.")] = (
        "hello from the simulator"
    ),
) -> None:
    """An OpenAI-compatible REST simulator at http://HOST:PORT/v1 (chat, transcriptions, speech)."""
    from voxgate.testing.llm_sim import run_llm_sim

    run_llm_sim(
        host=host, port=port, reply=reply, api_key=api_key, token_delay_s=token_delay,
        transcript=transcript,
    )  # fmt: skip


_mount_optional()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":
    main()
