"""A stub server (tests.stub_openai, tests.stub_fcm) in a process of its own: its command line from
keyword options, the wait for the READY line it prints once it listens, and its stop by pid."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STUB_START_FAILED = "{module} did not print READY within {timeout:g} s (exit code {code})"

T = TypeVar("T", bound="ServerProcess")


class ServerProcess:
    """The process side of a stub: mixed into each stub's client class."""

    proc: subprocess.Popen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stub_argv(module: str, cli_args: dict[str, Any]) -> list[str]:
    """`python -m module` with --flag value per option (a bool is a bare flag, a list repeats it)."""
    argv = [sys.executable, "-m", module]
    for key, value in cli_args.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif isinstance(value, list | tuple):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def stub_start(module: str, make: Callable[[subprocess.Popen, str], T], *, startup_timeout: float = 15.0,
               **cli_args: Any) -> T:
    """Start the stub `module` on a free port, stopped with this process, and wait until it listens;
    `make(proc, base_url)` builds the stub's client."""
    cli_args.setdefault("port", 0)
    cli_args.setdefault("parent_pid", os.getpid())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(stub_argv(module, cli_args), cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    deadline = time.monotonic() + startup_timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("READY "):
            return make(proc, line.split()[1])
    code = proc.poll()
    make(proc, "").stop()
    raise RuntimeError(STUB_START_FAILED.format(module=module, timeout=startup_timeout, code=code))


def stub_serve(server, *, parent_pid: int | None, path: str = "") -> int:
    """The stub's side: serve until SIGTERM or SIGINT, or until the process that started it is gone
    (a killed test run must not leave stubs behind); READY and the base URL are printed once it listens."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    print(f"READY http://{host}:{port}{path}", flush=True)
    while not stop.wait(1.0):
        if parent_pid and os.getppid() != parent_pid:
            break
    server.shutdown()
    server.server_close()
    return 0
