"""Shared fixtures: a real ``avatar serve`` process on a free loopback port, one server shared by the tests
that only talk to a default one, and the test lanes (markers set from what a test uses; ``--quick``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The small LLM keeps whole-loop tests quick; one test runs the default model end to end.
FAST = {"llm.model": "smollm2-135m"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProc:
    proc: subprocess.Popen
    port: int
    data_dir: Path
    output: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def log(self) -> str:
        return "".join(self.output)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)


def start_server(data_dir: Path, overrides: dict | None = None, args: list[str] | None = None,
                 timeout: float = 300, port: int | None = None) -> ServerProc:
    port = port or free_port()
    cmd = [sys.executable, "-m", "avatar", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    for key, value in (overrides or {}).items():
        cmd += ["--set", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    cmd += args or []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    server = ServerProc(proc, port, data_dir)
    threading.Thread(target=lambda: server.output.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            time.sleep(0.2)
            raise RuntimeError(f"avatar serve exited with {proc.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.3)
    server.kill()
    raise RuntimeError(f"avatar serve did not become healthy in {timeout} s:\n{server.log()}")


@pytest.fixture
def server_factory(tmp_path):
    """``server_factory(overrides={"llm.model": "smollm2-135m"}, data_dir=None)`` -> ServerProc."""
    started: list[ServerProc] = []

    def factory(overrides: dict | None = None, data_dir: Path | None = None, args: list[str] | None = None,
                port: int | None = None):
        server = start_server(data_dir or tmp_path / "data", overrides, args, port=port)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def _shared_server_process(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("shared_server") / "data", FAST)
    yield server
    server.stop()


@pytest.fixture
def shared_server(_shared_server_process) -> ServerProc:
    """One real ``avatar serve`` for the whole run: the fast model (FAST), every other setting at its default.

    For tests that only connect clients to a default server. They must stay independent of one another: no
    overrides, no restart or kill, no reading its log for their own lines, no counts of sessions, turns or
    metrics (other tests move them), each conversation its own session. Otherwise use ``server_factory``."""
    server = _shared_server_process
    if server.proc.poll() is not None:
        pytest.fail(f"the shared server exited with {server.proc.returncode} during an earlier test:\n"
                    f"{server.log()[-6000:]}")
    return server


# -- lanes -------------------------------------------------------------------------------------------------
# Markers are set here from what a test uses, so a new test lands in the right lane without anyone marking it:
#   server:  starts a real server of its own: uses server_factory, or a fixture or test body that calls
#            start_server / start_command (a few that start one through a command are marked by hand)
#   shared_server: talks to the one shared server (shared_server); quick lane included
#   browser: drives headless Chromium (the browser fixture, or marked by hand)
#   rtmp:    needs the local nginx-rtmp server (tests.rtmp_server.RtmpServer)
#   slow:    about 4 s or more on an idle 2-core machine, with the model loads it alone needs (marked by
#            hand)
# ``pytest --quick`` (``bash scripts/test.sh --quick``) leaves out what QUICK_LEAVES_OUT names: what remains
# starts at most one real server, the shared one.
QUICK_LEAVES_OUT = ("slow", "browser", "rtmp", "server")
_STARTS_A_SERVER = {"start_server", "start_command"}
_SHARED = {"shared_server", "_shared_server_process"}


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true",
                     help="the quick lane: leave out tests marked " + ", ".join(QUICK_LEAVES_OUT) +
                          " (at most one real server starts: the shared one)")


def _names(function, seen: set | None = None) -> set[str]:
    """Global and attribute names a function uses: its nested functions and the helpers it calls from the
    tests package included."""
    seen = set() if seen is None else seen
    function = getattr(function, "__wrapped__", function)
    code = getattr(function, "__code__", None)
    if code is None or code in seen:
        return set()
    seen.add(code)
    names: set[str] = set()
    codes = [code]
    while codes:
        current = codes.pop()
        names |= set(current.co_names)
        codes += [c for c in current.co_consts if isinstance(c, types.CodeType)]
    for name in list(names):
        helper = getattr(function, "__globals__", {}).get(name)
        if isinstance(helper, types.FunctionType) and helper.__module__.startswith("tests."):
            names |= _names(helper, seen)
    return names


def _uses(item) -> set[str]:
    """Names used by the test function and by every fixture it needs (but the shared server's)."""
    functions = [getattr(item, "function", None)]
    functions += [d.func for name, defs in item._fixtureinfo.name2fixturedefs.items() if name not in _SHARED
                  for d in defs]
    seen: set = set()
    return set().union(*(_names(f, seen) for f in functions if f is not None))


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers set here
def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures, names = set(item.fixturenames), _uses(item)
        if "server_factory" in fixtures or names & _STARTS_A_SERVER:
            item.add_marker(pytest.mark.server)
        if "shared_server" in fixtures:
            item.add_marker(pytest.mark.shared_server)
        if "browser" in fixtures:
            item.add_marker(pytest.mark.browser)
        if "RtmpServer" in names:
            item.add_marker(pytest.mark.rtmp)
    if config.getoption("quick"):
        keep, leave = [], []
        for item in items:
            (leave if any(item.get_closest_marker(m) for m in QUICK_LEAVES_OUT) else keep).append(item)
        if leave:
            config.hook.pytest_deselected(items=leave)
            items[:] = keep
