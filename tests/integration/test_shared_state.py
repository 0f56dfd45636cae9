"""The shared-state seam on a real Redis: several `RedisShared` instances are several nodes.

Each instance has its own connections and node id, exactly as separate gateway processes
would; only the Redis server is shared. Lease times are a constructor argument, not a setting:
6 s here (renewed every 2 s, so a loaded machine that stalls the loop for a few seconds does
not lose a live node's leases), 1.5 s for a node meant to die, so its leases lapse soon.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from voxgate.gateway.limits import CircuitBreaker, LimitExceeded
from voxgate.gateway.shared import SharedUnavailable
from voxgate.gateway.shared_redis import RedisShared


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Wait until `check()` holds (polling; generous for a loaded machine)."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


class _FakeSessions:
    """What `start` reads from the gateway state: its sessions and whether it drains."""

    def __init__(self) -> None:
        self.sessions: dict[str, Any] = {}
        self.shutting_down = False


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[Callable[..., Awaitable[RedisShared]]]:
    made: list[RedisShared] = []

    async def make(*, start: bool = True, **kw: Any) -> RedisShared:
        options: dict[str, Any] = {"max_sessions": 100, "max_per_user": 3, "lease_s": 6.0}
        options.update(kw)
        node = RedisShared(kw.pop("url", redis_url), **options)
        made.append(node)
        if start:
            await node.start(_FakeSessions())  # type: ignore[arg-type]
        return node

    yield make
    for node in made:
        await node.close()


async def test_a_token_has_exactly_one_winner_across_nodes(nodes) -> None:
    a, b, c = await nodes(), await nodes(), await nodes()
    await a.put_token("vxs_race", '{"x": 1}', 30)
    takers = [(a, b, c)[i % 3].take_token("vxs_race") for i in range(20)]
    results = await asyncio.gather(*takers)
    assert sum(r is not None for r in results) == 1
    assert [r for r in results if r is not None] == ['{"x": 1}']
    assert await b.take_token("vxs_race") is None  # and it stays used


async def test_a_token_expires_by_its_ttl(nodes) -> None:
    a, b = await nodes(), await nodes()
    await a.put_token("vxs_short", "payload", 0.2)
    await asyncio.sleep(0.4)
    assert await b.take_token("vxs_short") is None


async def test_the_per_user_cap_holds_across_nodes_and_release_frees_it(nodes) -> None:
    a, b = await nodes(), await nodes()
    await a.acquire("l1", "alice", per_user=True)
    await b.acquire("l2", "alice", per_user=True)
    await a.acquire("l3", "alice", per_user=True)
    for node in (a, b):
        with pytest.raises(LimitExceeded, match="3 open sessions"):
            await node.acquire("l4", "alice", per_user=True)
    await b.acquire("l5", "bob", per_user=True)  # another user is not affected
    await b.release("l2", "alice")
    await a.acquire("l6", "alice", per_user=True)


async def test_the_global_cap_counts_every_node(nodes) -> None:
    a, b = await nodes(max_sessions=2), await nodes(max_sessions=2)
    await a.acquire("g1", "anon-1", per_user=False)
    await b.acquire("g2", "anon-2", per_user=False)
    with pytest.raises(LimitExceeded, match="limit of 2 concurrent sessions"):
        await a.acquire("g3", "anon-3", per_user=False)


async def test_concurrent_acquires_never_overshoot_the_cap(nodes) -> None:
    many = [await nodes() for _ in range(4)]
    attempts = [
        node.acquire(f"c{i}-{n}", "carol", per_user=True)
        for n, node in enumerate(many)
        for i in range(5)
    ]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    assert sum(r is None for r in results) == 3
    assert all(isinstance(r, LimitExceeded) for r in results if r is not None)


async def test_provider_credential_holds_count_towards_the_cap(nodes) -> None:
    a, b = await nodes(), await nodes()
    handle = await a.hold("dave", 60)
    await b.acquire("d1", "dave", per_user=True)
    await b.acquire("d2", "dave", per_user=True)
    with pytest.raises(LimitExceeded, match="1 of them provider credentials"):
        await a.acquire("d3", "dave", per_user=True)
    await b.unhold("dave", handle)
    await a.acquire("d3", "dave", per_user=True)


async def test_a_dead_nodes_leases_lapse_and_a_live_nodes_do_not(nodes) -> None:
    # `dead` never starts its heartbeat: like a node SIGKILLed right after admitting.
    dead = await nodes(start=False, lease_s=1.5)
    live = await nodes()
    await dead.acquire("x1", "erin", per_user=True)
    await dead.acquire("x2", "erin", per_user=True)
    await live.acquire("x3", "erin", per_user=True)
    with pytest.raises(LimitExceeded):
        await live.acquire("x4", "erin", per_user=True)
    began = time.monotonic()

    async def freed() -> bool:
        try:
            await live.acquire("x4", "erin", per_user=True)
        except LimitExceeded:
            return False
        return True

    await eventually(freed)
    assert time.monotonic() - began < 15  # within the lease, not forever
    # The live node's own lease (x3) is renewed past its 6 s lease: erin still holds x3 and
    # x4, so one more fits and then the cap holds again.
    await asyncio.sleep(7.0)
    await live.acquire("x5", "erin", per_user=True)
    with pytest.raises(LimitExceeded):
        await live.acquire("x6", "erin", per_user=True)


async def test_token_request_buckets_are_shared(nodes) -> None:
    a, b = await nodes(), await nodes()
    waits = [await node.take_rate("user:frank", 3) for node in (a, b, a)]
    assert waits == [0.0, 0.0, 0.0]
    refused = await b.take_rate("user:frank", 3)
    assert 0 < refused <= 20.0 + 1  # one request comes back every 20 s
    assert await a.take_rate("user:grace", 3) == 0.0  # one user's bucket is not another's


async def test_an_opened_breaker_reaches_every_node(nodes) -> None:
    a, b = await nodes(), await nodes()
    breakers = {"a": CircuitBreaker(failures=1, cooldown_s=30.0), "b": CircuitBreaker(1, 30.0)}
    breakers["a"].on_change = lambda opened, after: a.breaker_changed("openai", opened, after)
    b.on_breaker = lambda engine, opened, after: breakers["b"].apply_remote(opened, after)
    a.on_breaker = lambda engine, opened, after: breakers["a"].apply_remote(opened, after)
    b._restart_listener()  # the callback was set after start; the listener reads it per event
    await asyncio.sleep(0.3)  # let the listener subscribe before the news goes out

    async def b_state(want: str) -> bool:
        return breakers["b"].state == want

    # The listener may need a moment to subscribe; the news is repeated until it lands.
    async with asyncio.timeout(20):
        while breakers["b"].state != "open":
            breakers["a"].record(False)
            await asyncio.sleep(0.2)
    assert breakers["b"].allow() is False and breakers["b"].retry_after_s() > 20
    breakers["a"].record(True)  # a trial succeeded on node a: closed everywhere
    await eventually(lambda: b_state("closed"))
    # A node that starts while a breaker is open elsewhere opens its own at once.
    breakers["a"].record(False)
    await eventually(lambda: b_state("open"))
    late_breaker = CircuitBreaker(1, 30.0)
    late = RedisShared(a.url, max_sessions=10, max_per_user=3, lease_s=6.0)
    late.on_breaker = lambda engine, opened, after: late_breaker.apply_remote(opened, after)
    try:
        await late.start(_FakeSessions())  # type: ignore[arg-type]
        assert late_breaker.state == "open"
    finally:
        await late.close()


async def test_the_registry_lists_live_nodes_and_forgets_gone_ones(nodes) -> None:
    a, b = await nodes(), await nodes()
    listed = {n["node"] for n in await a.nodes()}
    assert listed == {a.node_id, b.node_id}
    await b.close()
    assert {n["node"] for n in await a.nodes()} == {a.node_id}
    crashed = await nodes()
    for task in crashed._tasks:  # its heartbeat stops, as if SIGKILLed: nothing cleans up
        task.cancel()

    async def forgotten() -> bool:
        return {n["node"] for n in await a.nodes()} == {a.node_id}

    await eventually(forgotten)


async def test_redis_outage_fails_closed_then_heals_without_a_restart(redis_factory) -> None:
    server = redis_factory()
    node = RedisShared(server.url, max_sessions=10, max_per_user=3, lease_s=6.0)
    other = RedisShared(server.url, max_sessions=10, max_per_user=3, lease_s=6.0)
    try:
        await node.start(_FakeSessions())  # type: ignore[arg-type]
        await other.start(_FakeSessions())  # type: ignore[arg-type]
        await node.acquire("held", "hana", per_user=True)
        server.stop()
        began = time.monotonic()
        with pytest.raises(SharedUnavailable, match=r"Redis at 127\.0\.0\.1:\d+"):
            await node.acquire("new", "hana", per_user=True)
        with pytest.raises(SharedUnavailable):
            await node.put_token("vxs_x", "p", 60)
        assert time.monotonic() - began < 10  # a prompt answer, not a hang
        await node.release("gone", "hana")  # never raises

        server.start()  # same port, empty: every lease was lost with it
        # The heartbeat re-asserts hana's lease without a restart ...
        async def reasserted() -> bool:
            try:
                await other.acquire("probe1", "hana", per_user=True)
                await other.acquire("probe2", "hana", per_user=True)
            except (SharedUnavailable, LimitExceeded):
                return False
            try:
                await other.acquire("probe3", "hana", per_user=True)
            except LimitExceeded:
                return True  # "held" counts again: the cap is whole
            finally:
                for probe in ("probe1", "probe2", "probe3"):
                    await other.release(probe, "hana")
            return False

        await eventually(reasserted, timeout=30)
        # ... and admissions work again.
        await node.acquire("after", "ivan", per_user=True)
    finally:
        await node.close()
        await other.close()


async def test_fail_open_admits_while_redis_is_away(redis_factory) -> None:
    server = redis_factory()
    node = RedisShared(server.url, max_sessions=10, max_per_user=3, lease_s=6.0, fail_open=True)
    try:
        await node.start(_FakeSessions())  # type: ignore[arg-type]
        server.stop()
        await node.acquire("open1", "jane", per_user=True)  # admitted without the shared caps
        assert await node.take_rate("user:jane", 1) == 0.0
        with pytest.raises(SharedUnavailable):  # a token can never be checked without Redis
            await node.take_token("vxs_unknowable")
        server.start()

        async def counted() -> bool:  # the fail-open lease is asserted once Redis is back
            try:
                return "open1" in await node._redis.zrange("vx:leases", 0, -1)
            except Exception:
                return False

        await eventually(counted, timeout=30)
    finally:
        await node.close()


class _Session:
    def __init__(self, sid: str) -> None:
        self.id = sid

    def info(self) -> dict[str, Any]:
        return {"sessionId": self.id, "userId": "u-" + self.id, "started": True}


async def test_the_directory_lists_thousands_of_sessions(nodes) -> None:
    a = await nodes(max_sessions=5000, lease_s=30.0)
    b = await nodes(max_sessions=5000, lease_s=30.0)
    for i in range(1200):
        await a.acquire(f"lease{i}", f"user{i}", per_user=False)
        a.attach(f"lease{i}", _Session(f"s{i}"))  # type: ignore[arg-type]
    await a._heartbeat()
    listed = await b.sessions()
    assert len(listed) == 1200 and {s["node"] for s in listed} == {a.node_id}
    assert (await b.session("s7"))["userId"] == "u-s7"
