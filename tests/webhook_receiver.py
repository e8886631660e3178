"""A local webhook receiver for tests: a stdlib HTTP server in a thread that records every request.

    with WebhookReceiver() as receiver:
        receiver.respond("/slack", 500, 200)          # first request 500, then 200, then the default
        settings.SLACK_WEBHOOK_URL = receiver.url("/slack")
        ...
        assert receiver.json("/slack")[-1]["text"]

Works for a command run as a subprocess too: it only needs the URL.
"""

import json
import threading
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    def json(self):
        return json.loads(self.body)


class _Handler(BaseHTTPRequestHandler):
    # Without it every keep-alive reply stalls ~40 ms (headers and body go out in two writes).
    disable_nagle_algorithm = True
    server: "_Server"

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        receiver = self.server.receiver
        status, headers, reply = receiver._next_response(self.path)
        receiver._record(
            ReceivedRequest(
                method="POST", path=self.path, headers=dict(self.headers.items()), body=body, status=status
            )
        )
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status != 204:
            self.send_header("Content-Type", "application/json" if reply.startswith(b"{") else "text/plain")
            self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        if reply:
            self.wfile.write(reply)

    def log_message(self, format, *args) -> None:  # quiet test output
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: "WebhookReceiver"


class WebhookReceiver:
    def __init__(self, *, default_status: int = 200) -> None:
        self.default_status = default_status
        self.requests: list[ReceivedRequest] = []
        self._scripts: dict[str | None, deque[tuple[int, dict[str, str]]]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._received = threading.Condition(self._lock)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- control ----------------------------------------------------------------------------
    def start(self) -> "WebhookReceiver":
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="webhook-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def respond(self, path: str | None, *statuses: int, headers: dict[str, str] | None = None) -> None:
        """Queue answers for requests to `path` (None = any path without a script of its own)."""
        with self._lock:
            for status in statuses:
                self._scripts[path].append((status, dict(headers or {})))

    # --- what arrived -----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the receiver first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    def received(self, path: str | None = None) -> list[ReceivedRequest]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def json(self, path: str | None = None) -> list:
        return [r.json() for r in self.received(path)]

    def wait_for(self, count: int, *, path: str | None = None, timeout: float = 10.0) -> list[ReceivedRequest]:
        """Block until `count` requests (to `path`) have arrived, or the timeout passes."""
        with self._received:
            self._received.wait_for(
                lambda: len([r for r in self.requests if path is None or r.path == path]) >= count, timeout
            )
        return self.received(path)

    # --- used by the handler ----------------------------------------------------------------
    def _next_response(self, path: str) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            script = self._scripts.get(path) or self._scripts.get(None)
            status, headers = script.popleft() if script else (self.default_status, {})
        # Slack answers "ok", Discord 204 with no body; a JSON error body otherwise.
        if status == 204:
            reply = b""
        else:
            reply = b"ok" if status < 300 else json.dumps({"error": status}).encode()
        return status, headers, reply

    def _record(self, request: ReceivedRequest) -> None:
        with self._received:
            self.requests.append(request)
            self._received.notify_all()


@pytest.fixture
def webhook_receiver():
    """A started receiver, stopped after the test. Load this module as a pytest plugin to use it."""
    with WebhookReceiver() as receiver:
        yield receiver
