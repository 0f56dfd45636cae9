"""docs/deployment.md's nginx configuration, as shipped in deploy/nginx.conf, in front of a live
gateway: Debian's nginx with TLS on an ephemeral port, a whole spoken session through it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.procs import free_port
from voxgate.client import ProtocolFailure, VoxgateClient

ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SECRET = "nginx-deployment-test-jwt-secret-0123456789abcdef"


def site_config(tls_port: int, http_port: int, gateway_port: int, cert: Path, key: Path) -> str:
    """The shipped file with only its addresses and certificate paths changed."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    replacements = {
        "    listen [::]:80;\n": "",
        "    listen [::]:443 ssl;\n": "",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{tls_port} ssl;",
        "/etc/letsencrypt/live/voice.example.com/fullchain.pem": str(cert),
        "/etc/letsencrypt/live/voice.example.com/privkey.pem": str(key),
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{gateway_port};",
    }
    for old, new in replacements.items():
        assert old in text, f"deploy/nginx.conf no longer contains {old!r}"
        text = text.replace(old, new)
    return text


@contextlib.contextmanager
def running_nginx(workdir: Path, site: str, port: int) -> Iterator[None]:
    if not os.path.exists(NGINX):
        pytest.fail("nginx is not installed: run scripts/setup.sh (it installs Debian's nginx)")
    (workdir / "voxgate.conf").write_text(site)
    temp = {name: workdir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
    user = "user root;\n" if os.geteuid() == 0 else ""
    (workdir / "main.conf").write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {workdir}/nginx.pid;\n"
        f"error_log {workdir}/error.log warn;\nevents {{ worker_connections 256; }}\n"
        "http {\n  access_log off;\n"
        + "".join(f"  {name}_temp_path {path};\n" for name, path in temp.items()
                  if name != "body")
        + f"  client_body_temp_path {temp['body']};\n  include {workdir}/voxgate.conf;\n}}\n"
    )  # fmt: skip
    proc = subprocess.Popen(
        [NGINX, "-e", str(workdir / "error.log"), "-p", str(workdir), "-c", str(workdir / "main.conf")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        for _ in range(100):
            if proc.poll() is not None:
                log = (workdir / "error.log").read_text() if (workdir / "error.log").exists() else ""
                pytest.fail(f"nginx exited: {proc.stdout.read().decode() if proc.stdout else ''}{log}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            import time

            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def self_signed(workdir: Path) -> tuple[Path, Path, ssl.SSLContext]:
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key, ssl.create_default_context(cafile=str(cert))


def test_the_guide_ships_the_tested_file() -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text()
    assert (ROOT / "deploy" / "nginx.conf").read_text() in guide
    assert (ROOT / "deploy" / "Caddyfile").read_text() in guide
    assert (ROOT / "deploy" / "voxgate.service").read_text() in guide


async def test_a_session_through_nginx_with_tls(make_settings, gateway_factory, tmp_path) -> None:
    cert, key, context = self_signed(tmp_path)
    tls_port, http_port = free_port(), free_port()
    # An explicit allowlist (another site) and auth on: the page's own origin is then accepted
    # only because nginx passes the Host it was reached under, port included.
    settings = make_settings(
        engine="cascade", auth="jwt", jwt_secret=SECRET, allowed_origins=["https://app.example.com"]
    )
    async with gateway_factory(settings) as gw:
        token = gw.state.authenticator.mint_jwt("alice")
        site = site_config(tls_port, http_port, gw.port, cert, key)
        with running_nginx(tmp_path, site, tls_port):
            base = f"https://127.0.0.1:{tls_port}"
            async with httpx.AsyncClient(base_url=base, verify=context) as http:
                health = await http.get("/health")
                assert health.status_code == 200 and health.json()["store"] == "ok"
                page = await http.get("/")
                assert page.status_code == 200 and "voxgate" in page.text.lower()
            async with httpx.AsyncClient() as plain:
                redirect = await plain.get(f"http://127.0.0.1:{http_port}/ws")
                assert redirect.status_code == 301
                assert redirect.headers["location"].startswith("https://127.0.0.1")
            # The page's own origin is accepted: nginx passed the Host (with its port) through.
            url = f"wss://127.0.0.1:{tls_port}/ws"
            async with VoxgateClient(url, token=token, origin=base, ssl=context) as client:
                ready = await client.start(binary=True)
                assert ready["engine"] == "cascade"
                await client.user_message("hello through the proxy")
                reply = await client.collect_reply(timeout=60)
                assert reply.assistant_text and len(reply.audio) > 24000  # > 0.5 s of speech
                await asyncio.sleep(2.0)  # the socket stays up while quiet
                await client.ping("still-there")
                assert (await client.wait_for("pong", timeout=10))["id"] == "still-there"
                await client.user_message("and a second turn")
                assert (await client.collect_reply(timeout=60)).assistant_text
                await client.stop()
            # Another site's page is refused, by the same check, through the proxy.
            async with VoxgateClient(url, token=token, origin="https://evil.example", ssl=context) as client:
                with pytest.raises(ProtocolFailure):
                    await client.start()
                assert client.close_code == 4403


CADDY = shutil.which("caddy") or "/usr/bin/caddy"


def caddy_config(tls_port: int, http_port: int, gateway_port: int) -> str:
    """deploy/Caddyfile with its own address, a local CA instead of Let's Encrypt (never
    installed into the machine's trust store), and no admin endpoint (a fixed port shared by
    parallel tests)."""
    text = (ROOT / "deploy" / "Caddyfile").read_text()
    replacements = {
        "{\n\tservers {": f"{{\n\tadmin off\n\tskip_install_trust\n\thttp_port {http_port}\n\thttps_port {tls_port}\n"
                          "\tauto_https disable_redirects\n\tservers {",
        "voice.example.com {": f"127.0.0.1:{tls_port} {{\n\ttls internal",
        "reverse_proxy 127.0.0.1:8000": f"reverse_proxy 127.0.0.1:{gateway_port}",
    }
    for old, new in replacements.items():
        assert old in text, f"deploy/Caddyfile no longer contains {old!r}"
        text = text.replace(old, new)
    return text


@contextlib.contextmanager
def running_caddy(workdir: Path, config: str) -> Iterator[subprocess.Popen[bytes]]:
    if not os.path.exists(CADDY):
        pytest.fail("caddy is not installed: run scripts/setup.sh (it installs Debian's caddy)")
    (workdir / "Caddyfile").write_text(config)
    env = {**os.environ, "HOME": str(workdir), "XDG_DATA_HOME": str(workdir / "data"),
           "XDG_CONFIG_HOME": str(workdir / "config")}  # fmt: skip
    proc = subprocess.Popen(
        [CADDY, "run", "--config", str(workdir / "Caddyfile"), "--adapter", "caddyfile"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def caddy_ready(proc: subprocess.Popen[bytes], root: Path, port: int) -> bool:
    if proc.poll() is not None:
        pytest.fail(f"caddy exited: {proc.stdout.read().decode() if proc.stdout else ''}")
    if not root.exists():
        return False
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


async def test_a_session_through_caddy_with_tls(make_settings, gateway_factory, tmp_path) -> None:
    tls_port, http_port = free_port(), free_port()
    settings = make_settings(
        engine="cascade", auth="jwt", jwt_secret=SECRET, allowed_origins=["https://app.example.com"]
    )
    async with gateway_factory(settings) as gw:
        config = caddy_config(tls_port, http_port, gw.port)
        with running_caddy(tmp_path, config) as proc:
            root = tmp_path / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
            for _ in range(150):
                if await asyncio.to_thread(caddy_ready, proc, root, tls_port):
                    break
                await asyncio.sleep(0.1)
            context = ssl.create_default_context(cafile=str(root))
            token = gw.state.authenticator.mint_jwt("alice")
            base = f"https://127.0.0.1:{tls_port}"
            async with httpx.AsyncClient(base_url=base, verify=context) as http:
                assert (await http.get("/health")).status_code == 200
            url = f"wss://127.0.0.1:{tls_port}/ws"
            async with VoxgateClient(url, token=token, origin=base, ssl=context) as client:
                await client.start(binary=True)
                await client.user_message("hello through caddy")
                reply = await client.collect_reply(timeout=60)
                assert reply.assistant_text and len(reply.audio) > 24000
                await client.stop()
