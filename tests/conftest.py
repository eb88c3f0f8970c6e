"""Shared fixtures: a real ``avatar serve`` process on a free loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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


# The small LLM keeps whole-loop tests quick; one test runs the default model end to end.
FAST = {"llm.model": "smollm2-135m"}
