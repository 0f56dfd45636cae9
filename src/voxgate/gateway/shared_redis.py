"""The shared state on Redis: several gateway processes behave as one gateway.

Every change that more than one node may make at once is one Redis command or one Lua script
(which Redis runs alone), so there is no read-modify-write race between nodes: a token is
taken with GETDEL (one winner), a session slot is counted and taken in one script, a rate
bucket is refilled and spent in one script. Times inside scripts come from Redis's own clock
(`TIME`), so nodes with skewed clocks still agree on when a lease lapses.

Keys (prefix `vx:`): `token:<t>` (a session token, PX its TTL); `leases` (zset: lease id ->
lapse time, the global cap); `user:<id>` (zset: the user's leases and provider-credential
holds); `rate:<key>` (hash: a token bucket); `directory` (zset: session id -> lapse time) and
`session:<id>` (its info as JSON); `nodes` / `node:<id>` (the registry); `breaker:<engine>`
(an open breaker, PX its remaining cooldown). Nodes talk on the channel `events`: "end this
session" and "this breaker opened/closed". Redis Cluster is not supported (the scripts touch
keys they compute); one Redis, or a replicated pair behind Sentinel's address, is.

Redis trouble (`SharedUnavailable`): conversations in progress never touch Redis, so they go on;
new admissions fail closed with a sentence, or in fail-open mode are admitted without the
shared checks (their leases are asserted once Redis is back). The heartbeat retries with
backoff; the first one that gets through re-asserts every lease this node holds and restarts
the event listener, with no restart of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from voxgate.gateway.limits import LimitExceeded
from voxgate.gateway.shared import (
    LEASE_S,
    GatewayState,
    LiveSession,
    SharedState,
    SharedUnavailable,
    _iso,
)

log = logging.getLogger("voxgate.shared")

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_EXTEND = """
local function extend(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
local function holds_in(members)
  local n = 0
  for _, m in ipairs(members) do
    if string.sub(m, 1, 5) == 'hold:' then n = n + 1 end
  end
  return n
end
"""

#: ARGV: prefix, lease_ms, lease_id, user_id, per_user ('1'/'0'), max_total, max_per_user
#: -> {0} taken; {1, total} the server is full; {2, count, holds} the user is at their cap.
_ACQUIRE = _NOW_MS + _EXTEND + """
local p, lease, lid, uid = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local lk = p .. 'leases'
redis.call('ZREMRANGEBYSCORE', lk, '-inf', now)
local total = redis.call('ZCARD', lk)
if total >= tonumber(ARGV[6]) then return {1, total, 0} end
if ARGV[5] == '1' then
  local uk = p .. 'user:' .. uid
  redis.call('ZREMRANGEBYSCORE', uk, '-inf', now)
  local members = redis.call('ZRANGE', uk, 0, -1)
  if #members >= tonumber(ARGV[7]) then return {2, #members, holds_in(members)} end
  redis.call('ZADD', uk, now + lease, lid)
  extend(uk, lease)
end
redis.call('ZADD', lk, now + lease, lid)
return {0, 0, 0}
"""

#: ARGV: prefix, user_id, hold_ms, handle, max_per_user -> like _ACQUIRE.
_HOLD = _NOW_MS + _EXTEND + """
local uk = ARGV[1] .. 'user:' .. ARGV[2]
local ms = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', uk, '-inf', now)
local members = redis.call('ZRANGE', uk, 0, -1)
if #members >= tonumber(ARGV[5]) then return {2, #members, holds_in(members)} end
redis.call('ZADD', uk, now + ms, ARGV[4])
extend(uk, ms)
return {0, 0, 0}
"""

#: ARGV: prefix, key, capacity, rate per ms -> {1, '0'} spent; {0, seconds until one is back}.
_RATE = _NOW_MS + """
local k = ARGV[1] .. 'rate:' .. ARGV[2]
local cap, rate = tonumber(ARGV[3]), tonumber(ARGV[4])
local b = redis.call('HMGET', k, 'tokens', 'stamp')
local tokens = tonumber(b[1]) or cap
local stamp = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - stamp) * rate)
local ok, wait = 0, 0
if tokens >= 1 then tokens = tokens - 1; ok = 1 else wait = (1 - tokens) / rate / 1000 end
redis.call('HSET', k, 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', k, math.ceil((cap - tokens) / rate) + 1000)
return {ok, tostring(wait)}
"""

#: ARGV: prefix, lease_ms, node_id, node_json, n, then n x (lease_id, user_id or '',
#: session_id or '', info_json). Renews (or re-asserts after an outage) every lease this node
#: holds, its directory entries and its registry entry, unconditionally. -> Redis time (ms).
_HEARTBEAT = _NOW_MS + _EXTEND + """
local p, lease = ARGV[1], tonumber(ARGV[2])
local lapse = now + lease
redis.call('ZADD', p .. 'nodes', lapse, ARGV[3])
redis.call('SET', p .. 'node:' .. ARGV[3], ARGV[4], 'PX', lease)
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  local lid, uid, sid, info = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  redis.call('ZADD', p .. 'leases', lapse, lid)
  if uid ~= '' then
    local uk = p .. 'user:' .. uid
    redis.call('ZADD', uk, lapse, lid)
    extend(uk, lease)
  end
  if sid ~= '' then
    redis.call('ZADD', p .. 'directory', lapse, sid)
    redis.call('SET', p .. 'session:' .. sid, info, 'PX', lease)
  end
end
return now
"""

#: ARGV: prefix, lease_ms, session_id, info_json: one directory entry, at once.
_ENTRY = _NOW_MS + """
local p, lease = ARGV[1], tonumber(ARGV[2])
redis.call('ZADD', p .. 'directory', now + lease, ARGV[3])
redis.call('SET', p .. 'session:' .. ARGV[3], ARGV[4], 'PX', lease)
return now
"""

#: ARGV: prefix, set ('directory' or 'nodes'), item prefix ('session:' or 'node:')
#: -> the JSON of every unlapsed entry.
_LIST = _NOW_MS + """
local p = ARGV[1]
local z = p .. ARGV[2]
redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
local ids = redis.call('ZRANGE', z, 0, -1)
local out = {}
-- MGET in chunks: unpack() of thousands of keys overflows Lua's stack.
for first = 1, #ids, 500 do
  local keys = {}
  for n = first, math.min(first + 499, #ids) do keys[#keys + 1] = p .. ARGV[3] .. ids[n] end
  for _, value in ipairs(redis.call('MGET', unpack(keys))) do out[#out + 1] = value end
end
return out
"""

_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError)


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, *_ERRORS)


@dataclass(slots=True)
class _Lease:
    user_id: str
    per_user: bool
    session: LiveSession | None = None


class RedisShared(SharedState):
    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        max_sessions: int,
        max_per_user: int,
        fail_open: bool = False,
        node_id: str | None = None,
        lease_s: float = LEASE_S,
        op_timeout_s: float = 2.0,
        prefix: str = "vx:",
    ) -> None:
        super().__init__(node_id)
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        parts = urlsplit(url)
        self.where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        self.max_sessions = max_sessions
        self.max_per_user = max_per_user
        self.fail_open = fail_open
        self.lease_s = lease_s
        self.renew_s = lease_s / 3
        self.op_timeout_s = op_timeout_s
        self.prefix = prefix
        self.channel = prefix + "events"
        # One retry: the first command on a connection Redis dropped (a restart) fails, the
        # retry opens a fresh one. No backoff here: admissions must answer promptly.
        common: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": op_timeout_s,
            "retry": Retry(NoBackoff(), 1),
        }
        self._redis = aioredis.from_url(url, socket_timeout=op_timeout_s, **common)
        # The listener blocks on reads; it gets its own client without a read timeout.
        self._sub_redis = aioredis.from_url(url, **common)
        self._scripts = {
            name: self._redis.register_script(text)
            for name, text in (
                ("acquire", _ACQUIRE), ("hold", _HOLD), ("rate", _RATE),
                ("heartbeat", _HEARTBEAT), ("list", _LIST), ("entry", _ENTRY),
            )
        }  # fmt: skip
        self._leases: dict[str, _Lease] = {}
        self._state: GatewayState | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        #: False while the heartbeat cannot reach Redis.
        self.healthy = True
        self._closing = False
        self._generation = 0

    # --- plumbing -------------------------------------------------------------------------
    def _unavailable(self) -> SharedUnavailable:
        return SharedUnavailable(
            f"the gateway's shared state (Redis at {self.where}) cannot be reached, so new "
            "sessions cannot be admitted right now; try again shortly"
        )

    async def _run(self, coro: Any) -> Any:
        """Await one Redis operation within the operation timeout; `SharedUnavailable`."""
        try:
            async with asyncio.timeout(self.op_timeout_s * 2):
                return await coro
        except _redis_errors() as exc:
            log.debug("Redis operation failed: %r", exc)
            raise self._unavailable() from None

    async def start(self, state: GatewayState) -> None:
        self._state = state
        try:
            await self._heartbeat()
            await self._load_breakers()
        except SharedUnavailable as exc:
            # Start anyway: the heartbeat keeps trying, and nothing in progress needs Redis.
            self.healthy = False
            log.warning("%s; this node keeps retrying", exc.message)
        self._tasks.append(asyncio.create_task(self._renew_loop(), name="voxgate-shared-renew"))
        self._restart_listener()

    async def close(self) -> None:
        self._closing = True
        tasks = [*self._tasks, *self._background]
        if self._listener is not None:
            tasks.append(self._listener)
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a cancellation redis-py swallows mid-read ends at the loop's next turn
            # (`_closing`), not never.
            await asyncio.wait(tasks, timeout=self.op_timeout_s * 2)
        with contextlib.suppress(*_redis_errors(), SharedUnavailable):
            p = self.prefix
            pipe = self._redis.pipeline(transaction=True)
            for lease_id, lease in self._leases.items():
                self._forget(pipe, lease_id, lease)
            pipe.zrem(p + "nodes", self.node_id)
            pipe.delete(p + "node:" + self.node_id)
            await self._run(pipe.execute())
        self._leases.clear()
        for client in (self._redis, self._sub_redis):
            with contextlib.suppress(Exception):
                await client.aclose()

    # --- tokens ---------------------------------------------------------------------------
    async def put_token(self, token: str, payload: str, ttl_s: float) -> None:
        ms = max(1, round(ttl_s * 1000))
        await self._run(self._redis.set(self.prefix + "token:" + token, payload, px=ms, nx=True))

    async def take_token(self, token: str) -> str | None:
        value = await self._run(self._redis.getdel(self.prefix + "token:" + token))
        return value if isinstance(value, str) else None

    # --- caps -------------------------------------------------------------------------------
    async def acquire(self, lease_id: str, user_id: str, *, per_user: bool) -> None:
        try:
            answer = await self._run(
                self._scripts["acquire"](
                    args=[
                        self.prefix, round(self.lease_s * 1000), lease_id, user_id,
                        "1" if per_user else "0", self.max_sessions, self.max_per_user,
                    ]
                )
            )  # fmt: skip
        except SharedUnavailable:
            if not self.fail_open:
                raise
            log.warning("Redis unreachable: admitting %s without the shared caps (fail-open)", user_id)
            answer = [0, 0, 0]
        self._check(answer)
        self._leases[lease_id] = _Lease(user_id, per_user)

    def _check(self, answer: list[Any]) -> None:
        verdict = int(answer[0])
        if verdict == 1:
            raise LimitExceeded(
                f"the server is at its limit of {self.max_sessions} concurrent sessions; "
                "try again later"
            )
        if verdict == 2:
            holds = int(answer[2])
            extra = f", {holds} of them provider credentials minted recently" if holds else ""
            raise LimitExceeded(
                f"you already have {self.max_per_user} open sessions (the per-user limit{extra}); "
                "close one first"
            )

    def attach(self, lease_id: str, session: LiveSession) -> None:
        lease = self._leases.get(lease_id)
        if lease is None:
            return
        lease.session = session
        # The directory shows the session at once, not at the next heartbeat.
        self._spawn(self._publish_entry(session))

    async def _publish_entry(self, session: LiveSession) -> None:
        info = orjson.dumps({**session.info(), "node": self.node_id}).decode()
        with contextlib.suppress(SharedUnavailable):
            await self._run(
                self._scripts["entry"](
                    args=[self.prefix, round(self.lease_s * 1000), session.id, info]
                )
            )

    async def release(self, lease_id: str, user_id: str) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            lease = _Lease(user_id, True)
        with contextlib.suppress(SharedUnavailable):
            pipe = self._redis.pipeline(transaction=True)
            self._forget(pipe, lease_id, lease)
            await self._run(pipe.execute())

    def _forget(self, pipe: Any, lease_id: str, lease: _Lease) -> None:
        p = self.prefix
        pipe.zrem(p + "leases", lease_id)
        pipe.zrem(p + "user:" + lease.user_id, lease_id)
        if lease.session is not None:
            pipe.zrem(p + "directory", lease.session.id)
            pipe.delete(p + "session:" + lease.session.id)

    async def hold(self, user_id: str, seconds: float) -> str:
        handle = "hold:" + uuid.uuid4().hex
        try:
            answer = await self._run(
                self._scripts["hold"](
                    args=[self.prefix, user_id, round(seconds * 1000), handle, self.max_per_user]
                )
            )
        except SharedUnavailable:
            if not self.fail_open:
                raise
            return handle
        self._check(answer)
        return handle

    async def unhold(self, user_id: str, handle: str) -> None:
        with contextlib.suppress(SharedUnavailable):
            await self._run(self._redis.zrem(self.prefix + "user:" + user_id, handle))

    # --- rate limits ----------------------------------------------------------------------
    async def take_rate(self, key: str, per_min: int) -> float:
        try:
            ok, wait = await self._run(
                self._scripts["rate"](args=[self.prefix, key, per_min, per_min / 60_000.0])
            )
        except SharedUnavailable:
            if self.fail_open:
                return 0.0
            raise
        return 0.0 if int(ok) == 1 else max(1e-3, float(wait))

    # --- directory ------------------------------------------------------------------------
    async def _list(self, zset: str, item: str) -> list[dict[str, Any]]:
        raw = await self._run(self._scripts["list"](args=[self.prefix, zset, item]))
        return [orjson.loads(text) for text in raw or () if text]

    async def sessions(self) -> list[dict[str, Any]]:
        return await self._list("directory", "session:")

    async def session(self, session_id: str) -> dict[str, Any] | None:
        text = await self._run(self._redis.get(self.prefix + "session:" + session_id))
        return orjson.loads(text) if text else None

    async def end_session(self, session_id: str, reason: str) -> bool:
        info = await self.session(session_id)
        if info is None:
            return False
        node = info.get("node")
        if node == self.node_id:
            if self.on_end_session is not None:
                self.on_end_session(session_id, reason)
            return True
        message = {"type": "end", "node": node, "session": session_id, "reason": reason}
        receivers = await self._run(self._redis.publish(self.channel, orjson.dumps(message)))
        return int(receivers or 0) > 0

    async def drain_node(self, node: str) -> bool:
        if node == self.node_id:
            return await super().drain_node(node)
        if node not in {n.get("node") for n in await self.nodes()}:
            return False
        message = {"type": "drain", "node": node}
        receivers = await self._run(self._redis.publish(self.channel, orjson.dumps(message)))
        return int(receivers or 0) > 0

    # --- breakers -------------------------------------------------------------------------
    def breaker_changed(self, engine: str, opened: bool, retry_after_s: float) -> None:
        self._spawn(self._tell_breaker(engine, opened, retry_after_s))

    async def _tell_breaker(self, engine: str, opened: bool, retry_after_s: float) -> None:
        key = self.prefix + "breaker:" + engine
        message = {
            "type": "breaker", "node": self.node_id, "engine": engine,
            "opened": opened, "retryAfter": retry_after_s,
        }  # fmt: skip
        with contextlib.suppress(SharedUnavailable):
            pipe = self._redis.pipeline(transaction=True)
            if opened:
                pipe.set(key, str(retry_after_s), px=max(1, round(retry_after_s * 1000)))
            else:
                pipe.delete(key)
            pipe.publish(self.channel, orjson.dumps(message))
            await self._run(pipe.execute())

    async def _load_breakers(self) -> None:
        """A node that starts while a breaker is open elsewhere opens its own too."""
        if self.on_breaker is None:
            return
        try:
            async with asyncio.timeout(self.op_timeout_s * 2):
                match = self.prefix + "breaker:*"
                keys = [k async for k in self._redis.scan_iter(match=match, count=100)]
        except _redis_errors():
            raise self._unavailable() from None
        for key in keys:
            pttl = await self._run(self._redis.pttl(key))
            if isinstance(pttl, int) and pttl > 0:
                self.on_breaker(key[len(self.prefix) + len("breaker:"):], True, pttl / 1000)

    # --- nodes ----------------------------------------------------------------------------
    async def nodes(self) -> list[dict[str, Any]]:
        return await self._list("nodes", "node:")

    def _node_info(self) -> dict[str, Any]:
        state = self._state
        return {
            "node": self.node_id,
            "startedAt": _iso(self.started_at),
            "sessions": len(state.sessions) if state else 0,
            "draining": bool(state and state.shutting_down),
        }

    async def _heartbeat(self) -> None:
        args: list[Any] = [
            self.prefix, round(self.lease_s * 1000), self.node_id,
            orjson.dumps(self._node_info()).decode(), len(self._leases),
        ]  # fmt: skip
        for lease_id, lease in list(self._leases.items()):
            session = lease.session
            info = orjson.dumps({**session.info(), "node": self.node_id}).decode() if session else ""
            args += [
                lease_id, lease.user_id if lease.per_user else "",
                session.id if session else "", info,
            ]  # fmt: skip
        args[4] = (len(args) - 5) // 4
        await self._run(self._scripts["heartbeat"](args=args))

    async def _renew_loop(self) -> None:
        delay = 0.25
        while not self._closing:
            if self.healthy:
                await asyncio.sleep(self.renew_s)
            try:
                await self._heartbeat()
            except SharedUnavailable as exc:
                if self.healthy:
                    log.warning("%s; retrying with backoff", exc.message)
                self.healthy = False
                await asyncio.sleep(delay)
                delay = min(self.renew_s, delay * 2)
                continue
            except Exception:
                log.exception("shared-state heartbeat failed")
                continue
            if not self.healthy:
                log.warning(
                    "Redis at %s is reachable again: %d lease(s) re-asserted",
                    self.where, len(self._leases),
                )  # fmt: skip
                self.healthy = True
                self._restart_listener()
                with contextlib.suppress(SharedUnavailable):
                    await self._load_breakers()
            delay = 0.25

    # --- events from other nodes ---------------------------------------------------------
    def _restart_listener(self) -> None:
        if self._closing:
            return
        if self._listener is not None:
            self._listener.cancel()
        self._generation += 1
        self._listener = asyncio.create_task(
            self._listen(self._generation), name="voxgate-shared-listen"
        )

    async def _listen(self, generation: int) -> None:
        def current() -> bool:  # a replaced listener stops even if a read ate its cancellation
            return not self._closing and generation == self._generation

        delay = 0.25
        while current():
            try:
                async with self._sub_redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    delay = 0.25
                    while current():
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=1.0
                        )
                        if message is not None:
                            self._on_event(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("event listener lost Redis (%r); resubscribing", exc)
                await asyncio.sleep(delay)
                delay = min(self.renew_s, delay * 2)

    def _on_event(self, data: Any) -> None:
        try:
            event = orjson.loads(data)
        except (orjson.JSONDecodeError, TypeError):
            return
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "end" and event.get("node") == self.node_id:
            if self.on_end_session is not None:
                self.on_end_session(str(event.get("session")), str(event.get("reason") or "admin"))
        elif kind == "drain" and event.get("node") == self.node_id:
            if self.on_drain is not None:
                self.on_drain()
        elif kind == "breaker" and event.get("node") != self.node_id:
            if self.on_breaker is not None:
                self.on_breaker(
                    str(event.get("engine")), bool(event.get("opened")),
                    float(event.get("retryAfter") or 0.0),
                )  # fmt: skip

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


__all__ = ["RedisShared"]
