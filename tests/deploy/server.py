"""Start the web service exactly as Railway does (the Procfile's web line) and call it over HTTP.

Shared by the end-to-end tests and bench/api.py.
"""

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent.parent
PROCFILE = BASE_DIR / "Procfile"

PROCFILE_NO_PROCESS = "The Procfile has no {process!r} line."
SERVER_EXITED = "gunicorn exited with code {code} before answering HTTP. Its log:\n{log}"
SERVER_NOT_READY = "gunicorn did not answer HTTP within {seconds} s. Its log:\n{log}"

# Railway's proxy terminates TLS and says so in this header; SECURE_PROXY_SSL_HEADER trusts it.
PROXY_HEADERS = {"X-Forwarded-Proto": "https"}
# Only what a process needs from the calling environment: everything Django reads is set explicitly.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")


def procfile_command(*, process: str = "web") -> str:
    for line in PROCFILE.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() == process:
            return command.strip()
    raise LookupError(PROCFILE_NO_PROCESS.format(process=process))


def procfile_argv(*, port: int, process: str = "web") -> list[str]:
    """The Procfile line as argv, $PORT expanded, run by this interpreter's gunicorn."""
    argv = shlex.split(procfile_command(process=process).replace("$PORT", str(port)))
    if argv[0] == "gunicorn":
        argv = [sys.executable, "-m", "gunicorn", *argv[1:]]
    return argv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url_for(settings_dict: dict) -> str:
    """A DATABASE_URL another process can use to open the same (test) database."""
    engine = settings_dict["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    if engine.endswith("postgresql"):
        user = settings_dict.get("USER") or ""
        password = settings_dict.get("PASSWORD") or ""
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = settings_dict.get("HOST") or "127.0.0.1"
        port = settings_dict.get("PORT") or 5432
        return f"postgres://{auth}{host}:{port}/{settings_dict['NAME']}"
    raise ValueError(f"no DATABASE_URL form for {engine}")


def production_env(*, database_url: str, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The variables a Railway web deployment has: DEBUG off, a real SECRET_KEY, hosts from env."""
    env = {name: os.environ[name] for name in _INHERITED if name in os.environ}
    env.update(
        DJANGO_SETTINGS_MODULE="fortuna_api.settings",
        DEBUG="0",
        SECRET_KEY="e2e-" + "k" * 60,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        CSRF_TRUSTED_ORIGINS="https://127.0.0.1",
        DATABASE_URL=database_url,
        PORT=str(port),
        WEB_CONCURRENCY="2",
        FORTUNE_PROVIDER="local",
        LOG_LEVEL="warning",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # a redirect is an answer to assert on, not to follow


_opener = urllib.request.build_opener(_NoRedirect)


@dataclass
class WebServer:
    process: subprocess.Popen
    port: int
    log_path: Path
    env: dict[str, str] = field(repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(
        self, path: str, *, token: str | None = None, method: str = "GET", headers: dict[str, str] | None = None,
        timeout: float = 30, data: bytes | None = None,
    ) -> Response:
        all_headers = dict(PROXY_HEADERS)
        if token:
            all_headers["Authorization"] = f"Token {token}"
        all_headers.update(headers or {})
        req = urllib.request.Request(self.base_url + path, method=method, headers=all_headers, data=data)
        try:
            with _opener.open(req, timeout=timeout) as resp:
                return Response(resp.status, dict(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return Response(exc.code, dict(exc.headers.items()), exc.read())


def web_server_start(
    *, env: dict[str, str], log_path: Path, port: int | None = None, extra_args: tuple[str, ...] = (),
    ready_timeout: float = 60, ready_path: str = "/healthz", source_dir: Path = BASE_DIR,
) -> WebServer:
    """Start gunicorn from the Procfile and return once it answers HTTP (any status) on ready_path.

    extra_args go after the Procfile's flags, so they win (the benchmark compares worker classes);
    source_dir is the tree it serves (the benchmark runs another revision beside this one).
    """
    port = port or free_port()
    env = {**env, "PORT": str(port)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*procfile_argv(port=port), *extra_args], cwd=source_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = WebServer(process=process, port=port, log_path=log_path, env=env)
    deadline = time.monotonic() + ready_timeout
    while True:
        code = process.poll()
        if code is not None:
            raise RuntimeError(SERVER_EXITED.format(code=code, log=server.log()[-4000:]))
        try:
            server.request(ready_path, timeout=2)
            return server
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            web_server_stop(server)
            raise RuntimeError(SERVER_NOT_READY.format(seconds=ready_timeout, log=server.log()[-4000:]))
        time.sleep(0.1)


def web_server_stop(server: WebServer, *, timeout: float = 30) -> int:
    """SIGTERM (what Railway sends), then SIGKILL if gunicorn has not exited in time."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode
