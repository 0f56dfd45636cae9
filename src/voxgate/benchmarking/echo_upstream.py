"""A minimal OpenAI Realtime GA upstream that echoes input audio straight back as output audio.

It speaks just enough of the GA protocol (session and audio events) for the voxgate OpenAI engine and for OpenAI
clients: `session.created` on connect, `session.updated` for `session.update`, and every
`input_audio_buffer.append` comes back at once as one `response.output_audio.delta` with the
same base64 audio and the GA ids (`response_id`, `item_id`, `output_index`, `content_index`).
No VAD, no model: the echo is the "provider" whose cost is identical on every measured path.

    python -m voxgate.benchmarking.echo_upstream [--port 0]   # prints "PORT <n>"
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

import orjson
from websockets.asyncio.server import ServerConnection, serve

from voxgate.benchmarking._run import run
from voxgate.benchmarking.procs import announce_port, raise_fd_limit

#: The exact bytes voxgate's engine (and the benchmark's OpenAI-speaking client) send; frames in
#: any other shape take the general path (a full JSON parse).
APPEND_PREFIX = '{"type":"input_audio_buffer.append","audio":"'
_connections = itertools.count(1)


def _session(config: dict[str, object] | None = None) -> dict[str, object]:
    session: dict[str, object] = {
        "type": "realtime",
        "object": "realtime.session",
        "id": "sess_bench",
        "model": "gpt-realtime",
        "output_modalities": ["audio"],
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None},
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"},
        },
    }
    if config:
        session.update(config)
    return session


async def handle(ws: ServerConnection) -> None:
    conn = next(_connections)
    events = itertools.count(1)
    delta_head = (
        f'{{"type":"response.output_audio.delta","response_id":"resp_bench_{conn}",'
        f'"item_id":"item_bench_{conn}","output_index":0,"content_index":0,"event_id":"event_'
    )
    send = ws.send
    await send(orjson.dumps({"type": "session.created", "event_id": "event_0",
                             "session": _session()}).decode())  # fmt: skip
    prefix_len = len(APPEND_PREFIX)
    async for raw in ws:
        if isinstance(raw, bytes):
            raw = raw.decode()
        if raw.startswith(APPEND_PREFIX) and raw.endswith('"}'):
            audio = raw[prefix_len:-2]
        else:
            event = orjson.loads(raw)
            etype = event.get("type")
            if etype == "input_audio_buffer.append":
                audio = event.get("audio", "")
            else:
                await _control(ws, event, etype, events)
                continue
        await send(f'{delta_head}{next(events)}","delta":"{audio}"}}')


async def _control(ws: ServerConnection, event: dict, etype: object, events: itertools.count) -> None:  # type: ignore[type-arg]
    """The few non-audio events a client may send; answered in GA shape, never an error."""
    eid = f"event_{next(events)}"
    if etype == "session.update":
        reply = {"type": "session.updated", "event_id": eid, "session": _session(event.get("session"))}
    elif etype == "input_audio_buffer.commit":
        reply = {"type": "input_audio_buffer.committed", "event_id": eid, "item_id": "item_in"}
    elif etype == "input_audio_buffer.clear":
        reply = {"type": "input_audio_buffer.cleared", "event_id": eid}
    elif etype == "response.create":
        response: dict[str, object] = {"id": "resp_bench", "object": "realtime.response", "status": "completed",
                    "output": [], "usage": None}  # fmt: skip
        await ws.send(orjson.dumps({"type": "response.created", "event_id": eid,
                                    "response": {**response, "status": "in_progress"}}).decode())  # fmt: skip
        reply = {"type": "response.done", "event_id": f"event_{next(events)}", "response": response}
    else:
        return
    await ws.send(orjson.dumps(reply).decode())


async def main(
    stop: asyncio.Event, host: str = "127.0.0.1", port: int = 0, deflate: bool = False
) -> None:
    raise_fd_limit()
    async with serve(
        handle, host, port, compression="deflate" if deflate else None, max_size=None,
        ping_interval=None, backlog=4096,
    ) as server:  # fmt: skip
        announce_port(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        await stop.wait()
        server.close(close_connections=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--deflate", action="store_true",
        help="accept permessage-deflate when a client offers it (voxgate's engine does)",
    )  # fmt: skip
    args = parser.parse_args()
    run(lambda stop: main(stop, args.host, args.port, args.deflate))


if __name__ == "__main__":
    cli()
