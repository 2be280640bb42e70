#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine, then the npm dependencies:
#   - PyTorch 1.13 from Debian (python3-torch, at /usr/bin/python3): the v1 TCPStore dialect
#   - PyTorch 2.x (CPU) into .venv-torch with pip: the v2 dialect
#   - etcd-server and redis-server from Debian: the etcd and redis backend tests start real servers
#   - chromium from Debian (/usr/bin/chromium): the dashboard's browser test drives it headless
# Safe to re-run: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
if ! /usr/bin/python3 -c "import torch" >/dev/null 2>&1; then apt_packages+=(python3-torch); fi
# Real etcd (binary /usr/bin/etcd) and Redis servers for the etcd and redis backend tests.
if ! command -v etcd >/dev/null 2>&1 && [ ! -x /usr/bin/etcd ]; then apt_packages+=(etcd-server); fi
if ! command -v redis-server >/dev/null 2>&1; then apt_packages+=(redis-server); fi
if [ ! -x /usr/bin/chromium ]; then apt_packages+=(chromium); fi

if [ ${#apt_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages: ${apt_packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
  else
    echo "setup: missing Debian packages: ${apt_packages[*]}; install them with: sudo apt-get install -y ${apt_packages[*]}" >&2
  fi
fi

if ! .venv-torch/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing PyTorch 2.x into .venv-torch"
  rm -rf .venv-torch
  if ! { python3 -m venv .venv-torch && .venv-torch/bin/pip install -q torch; }; then
    echo "setup: could not install PyTorch 2.x into .venv-torch; the PyTorch 2.x interop tests will fail" >&2
  fi
fi

npm ci --no-audit --no-fund
