#!/usr/bin/env bash
# Idempotent setup for a fresh Debian machine: system packages, then a venv with voxgate in it.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(espeak-ng sox chromium postgresql nginx caddy redis-server haproxy)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[dev,local]'
# Silero VAD's packaged ONNX model: the package declares torch as a requirement for code the
# gateway never imports (it reads only the .onnx file), so it is installed without dependencies.
"$VENV/bin/python" -m pip install -q --no-deps 'silero-vad>=5.1'

# Node.js for the web packages (clients/) and their examples: Next.js 16 and Vite 7 need
# Node >= 20.19. Debian 13 ships it; on older releases install a newer nodejs first.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "setup: installing Debian packages: nodejs npm"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends nodejs npm
fi
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
  echo "setup: Node.js $(node -v) is too old: the web packages need >= 20.19" >&2
  exit 1
fi
# `npm ci` from the committed lock, only when the lock changed since the last install.
export NEXT_TELEMETRY_DISABLED=1
# clients/: the web packages; benchmarks/node_relay/: the Node `ws` relay `voxgate bench relay`
# measures against.
for dir in clients benchmarks/node_relay; do
  stamp=$dir/node_modules/.voxgate-ci-stamp  # the same stamp tests/support/node.py reads
  want="$(sha256sum $dir/package-lock.json $dir/package.json | sha256sum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: npm ci in $dir/"
    (cd $dir && npm ci --no-audit --no-fund)
    echo "$want" > "$stamp"
  fi
done
echo "setup: ready ($VENV, clients/node_modules, benchmarks/node_relay/node_modules)"
