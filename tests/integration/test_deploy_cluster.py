"""deploy/docker-compose.yml and deploy/haproxy.cfg agree with each other and with voxgate.

Docker is not on the test machine, so the compose file is not brought up here; what can be
checked without it is: every gateway's environment is settings voxgate accepts (and
`voxgate serve` would start with), each gateway is a server in the HAProxy file on the port the
gateways listen on, and HAProxy itself accepts its file. The HAProxy file is run for real by
tests/e2e/test_cluster.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from voxgate.cli import check_serve_settings
from voxgate.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
SETTING_NAMES = {
    alias for field in Settings.model_fields.values()
    for alias in field.validation_alias.choices  # type: ignore[union-attr]
}  # fmt: skip


def _gateways() -> dict[str, dict[str, str]]:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    return {
        name: {k: str(v) for k, v in service["environment"].items()}
        for name, service in services.items()
        if name.startswith("gw")
    }


def _filled(value: str) -> str:
    """Compose's `${NAME:?msg}` / `${NAME:-default}` with made-up values for the required."""
    value = re.sub(r"\$\{VOXGATE_JWT_SECRET:\?[^}]*\}", "k" * 8 + "0123456789abcdefghijklmnopqrstuvwxyz", value)
    value = re.sub(r"\$\{POSTGRES_PASSWORD:\?[^}]*\}", "pw", value)
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_every_gateway_runs_with_its_environment_and_shares_one_state() -> None:
    gateways = _gateways()
    assert sorted(gateways) == ["gw1", "gw2", "gw3"]
    names = set()
    for name, env in gateways.items():
        unknown = {k for k in env if k.startswith("VOXGATE_") and k not in SETTING_NAMES}
        assert not unknown, f"{name}: not voxgate settings: {unknown}"
        settings = Settings(_env_file=None, **{k: _filled(v) for k, v in env.items()})  # type: ignore[arg-type]
        settings = settings.model_copy(update={"host": "0.0.0.0"})  # the image's VOXGATE_HOST
        assert check_serve_settings(settings) is None
        assert settings.redis_url == "redis://redis:6379/0"
        assert settings.database_url.startswith("postgresql+asyncpg://")
        names.add(settings.node_name)
    assert names == {"gw1", "gw2", "gw3"}


def test_haproxy_routes_to_every_gateway_and_accepts_its_file(tmp_path: Path) -> None:
    text = HAPROXY_CFG.read_text()
    servers = re.findall(r"^\s*server (\S+) (\S+):(\d+) check$", text, re.M)
    assert [(name, host, port) for name, host, port in servers] == [
        (gw, gw, "8000") for gw in sorted(_gateways())
    ]
    assert "option httpchk GET /health" in text and "balance leastconn" in text
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        pytest.fail("haproxy is not installed: run scripts/setup.sh")
    # The service names resolve only inside compose's network: check the file with addresses.
    local = tmp_path / "haproxy.cfg"
    local.write_text(re.sub(r"(server gw\d) gw\d:", r"\1 127.0.0.1:", text))
    checked = subprocess.run([haproxy, "-c", "-f", str(local)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
