"""The `/api` routes fuzzed from the gateway's own OpenAPI spec with schemathesis: no input, valid
or not, with or without credentials, may produce a 5xx.

The gateway is real (uvicorn on an ephemeral port, both provider simulators behind it, so
`direct` credentials take their full path). Hypothesis runs in a worker thread with the
synchronous `requests` transport schemathesis uses, while the gateway keeps serving in the
test's event loop. The example budget is bounded so the module stays well under a minute.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from voxgate.testing.elevenlabs_sim import ElevenLabsSim
from voxgate.testing.openai_sim import OpenAISimulator

SECRET = "fuzz-test-jwt-secret-0123456789abcdef"
OPENAI_KEY = "sk-test-fuzz-openai-0123456789"
XI_KEY = "xi-test-fuzz-elevenlabs-0123456789"
EXAMPLES_PER_MODE = 60


def _token(sub: str, **claims: Any) -> str:
    return jwt.encode(
        {"sub": sub, "exp": int(time.time()) + 3600, **claims}, SECRET, algorithm="HS256"
    )


def _fuzz(spec: dict[str, Any], base_url: str) -> list[tuple[str, str, int]]:
    """Run the bounded fuzz; returns (method, path, status) of every call for the report."""
    schema = schemathesis.openapi.from_dict(spec).include(path_regex=r"^/api/")
    strategy = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )
    auths = st.sampled_from(
        [
            {"Authorization": f"Bearer {_token('root', admin=True)}"},
            {"Authorization": f"Bearer {_token('alice')}"},
            {"Authorization": "Bearer vxs_not-a-real-session-token"},
            {},
        ]
    )
    seen: list[tuple[str, str, int]] = []

    @settings(
        max_examples=EXAMPLES_PER_MODE * 2,
        deadline=None,
        database=None,
        derandomize=True,  # the same inputs on every run: a failure reproduces
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy, auth=auths)
    def fuzz(case: schemathesis.Case, auth: dict[str, str]) -> None:
        response = case.call(base_url=base_url, headers=auth, timeout=15)
        seen.append((case.method, case.path, response.status_code))
        case.validate_response(response, checks=[not_a_server_error])

    fuzz()
    return seen


async def test_api_routes_fuzzed_from_openapi_never_5xx(make_settings, gateway_factory) -> None:
    async with (
        OpenAISimulator(keys={OPENAI_KEY}) as openai_sim,
        ElevenLabsSim(api_key=XI_KEY) as xi_sim,
    ):
        gateway_settings = make_settings(
            auth="jwt",
            jwt_secret=SECRET,
            allowed_engines=["openai", "elevenlabs"],
            openai_api_key=OPENAI_KEY,
            openai_api_base=openai_sim.api_base,
            elevenlabs_api_key=XI_KEY,
            elevenlabs_agent_id="agent_sim",
            elevenlabs_api_base=xi_sim.api_base,
            token_requests_per_min=100_000,  # fuzz the endpoint's logic, not its rate limit
        )
        async with gateway_factory(gateway_settings) as gw:
            async with httpx.AsyncClient(base_url=gw.http_url) as http:
                spec = (await http.get("/api/openapi.json")).json()
            assert "/api/realtime/session" in spec["paths"]
            seen = await asyncio.wait_for(asyncio.to_thread(_fuzz, spec, gw.http_url), 120)
            async with httpx.AsyncClient(base_url=gw.http_url) as http:
                assert (await http.get("/health")).status_code == 200
    # The fuzz must actually have reached the routes, authenticated and not.
    paths = {path for _, path, _ in seen}
    statuses = {status for _, _, status in seen}
    assert "/api/realtime/session" in paths and len(paths) >= 3, paths
    assert 200 in statuses and 401 in statuses, statuses
    assert all(status < 500 for _, _, status in seen)
