"""Shared fixtures: isolated settings, an in-loop gateway on an ephemeral port, test speech."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from voxgate.config import Settings

#: Fixtures shared by several folders: a throwaway PostgreSQL server.
pytest_plugins = ["tests.support.postgres", "tests.support.redis"]

_ISOLATED_PREFIXES = ("VOXGATE_", "OPENAI_", "ELEVENLABS_")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's provider keys or voxgate settings."""
    for name in list(os.environ):
        if name.startswith(_ISOLATED_PREFIXES):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for one test: a private SQLite file, loopback, no .env file."""

    def factory(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'voxgate.db'}",
            "shutdown_deadline_s": 5.0,
        }
        base.update(overrides)
        return Settings(_env_file=None, **base)  # type: ignore[call-arg]

    return factory


@pytest.fixture
async def gateway_factory() -> AsyncIterator[Callable[..., Any]]:
    """`async with gateway_factory(settings) as gw:` — a real gateway in this event loop."""
    from voxgate.testing.gateway import running_gateway

    yield running_gateway
