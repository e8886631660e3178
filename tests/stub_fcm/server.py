"""A Firebase Cloud Messaging (HTTP v1) stub for tests and benchmarks: real HTTP, in a process of its own.

    python -m tests.stub_fcm --port 0 --latency-ms 5

prints ``READY http://127.0.0.1:PORT`` once listening and serves until SIGTERM.

* ``POST /token``: Google's OAuth2 token endpoint for the service-account JWT grant
  (``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT``). It checks the grant's
  shape and the JWT's claims (``aud`` Google's token endpoint, the FCM ``scope``, ``iss``), not its signature, and
  answers ``{"access_token", "expires_in", "token_type"}``. ``auth_fail`` answers ``400 invalid_grant``.
* ``POST /v1/projects/{id}/messages:send``: needs a bearer token this stub issued (``revoke_tokens``
  refuses every one: 401 UNAUTHENTICATED); answers ``{"name": "projects/{id}/messages/N"}``.
  Faults per registration token: ``token_faults`` {token: [fault, ...]} consumed one per request
  (then success), ``prefix_faults`` {prefix: fault} forever. Faults: ``UNREGISTERED`` (404),
  ``INVALID_ARGUMENT`` (400 with a BadRequest field violation on message.token), ``INVALID_PAYLOAD``
  (400 without one), ``SENDER_ID_MISMATCH`` (403), ``429`` (QUOTA_EXCEEDED with Retry-After),
  ``503`` (UNAVAILABLE with Retry-After), ``PERMISSION_DENIED`` (403 without an FCM code).
  Error bodies follow https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode .
* Control: ``POST /_stub/config``, ``POST /_stub/reset``, ``GET /_stub/counters``,
  ``GET /_stub/messages`` (every accepted message, in order, unless ``record`` is off).

Standard library only, so it starts in well under a second and needs no Django.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from tests.stub_process import ServerProcess, stub_serve, stub_start

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
# google-auth signs the grant for Google's token endpoint whatever the account's token_uri, as Google expects.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SEND_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")
FAULTS = ("UNREGISTERED", "INVALID_ARGUMENT", "INVALID_PAYLOAD", "SENDER_ID_MISMATCH", "429", "503",
          "PERMISSION_DENIED")
DEFAULT_CONFIG: dict[str, Any] = {
    "latency_ms": 0.0,
    "auth_fail": False,
    "revoke_tokens": False,
    "token_faults": {},
    "prefix_faults": {},
    "retry_after": 1.0,  # seconds, on 429 and 503; null = no header
    "expires_in": 3600,
    "record": True,
}
CONFIG_UNKNOWN_KEY = "unknown config key(s): {keys}"
CONFIG_BAD_FAULT = "unknown fault(s) {faults}; allowed: {allowed}"


def _fcm_error(http: int, status: str, message: str, *, code: str | None = None,
               token_violation: bool = False) -> dict:
    details: list[dict] = []
    if code:
        details.append({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code})
    if token_violation:
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [
            {"field": "message.token", "description": "Invalid registration token"}]})
    return {"error": {"code": http, "message": message, "status": status, "details": details}}


FAULT_ANSWERS: dict[str, tuple[int, dict]] = {
    "UNREGISTERED": (404, _fcm_error(404, "NOT_FOUND", "Requested entity was not found.", code="UNREGISTERED")),
    "INVALID_ARGUMENT": (400, _fcm_error(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM "
                                         "registration token", code="INVALID_ARGUMENT", token_violation=True)),
    "INVALID_PAYLOAD": (400, _fcm_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.",
                                        code="INVALID_ARGUMENT")),
    "SENDER_ID_MISMATCH": (403, _fcm_error(403, "PERMISSION_DENIED", "SenderId mismatch",
                                           code="SENDER_ID_MISMATCH")),
    "429": (429, _fcm_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", code="QUOTA_EXCEEDED")),
    "503": (503, _fcm_error(503, "UNAVAILABLE", "The service is currently unavailable.", code="UNAVAILABLE")),
    "PERMISSION_DENIED": (403, _fcm_error(403, "PERMISSION_DENIED", "Permission 'cloudmessaging.messages.create' "
                                          "denied")),
}


def config_check(config: dict) -> None:
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(CONFIG_UNKNOWN_KEY.format(keys=", ".join(unknown)))
    faults = [f for seq in config.get("token_faults", {}).values() for f in seq]
    faults += list(config.get("prefix_faults", {}).values())
    bad = sorted({f for f in faults if f not in FAULTS})
    if bad:
        raise ValueError(CONFIG_BAD_FAULT.format(faults=", ".join(bad), allowed=", ".join(FAULTS)))


class StubState:
    def __init__(self, config: dict) -> None:
        self.lock = threading.Lock()
        self.defaults = json.loads(json.dumps(config))
        self.reset(config=True)

    def reset(self, *, config: bool) -> None:
        with self.lock:
            if config:
                self.config = json.loads(json.dumps(self.defaults))
            self.tokens: set[str] = set()
            self.counters: Counter = Counter()
            self.messages: list[dict] = []
            self.seq = 0

    def configure(self, cfg: dict) -> dict:
        merged = {**self.config, **cfg}
        config_check(merged)
        with self.lock:
            self.config = merged
            return dict(merged)

    def issue_token(self) -> str:
        with self.lock:
            self.counters["token_requests"] += 1
            token = f"stub-access-{len(self.tokens) + 1}-{time.monotonic_ns()}"
            self.tokens.add(token)
            return token

    def fault_for(self, registration_token: str) -> str | None:
        with self.lock:
            queue = self.config["token_faults"].get(registration_token)
            if queue:
                return queue.pop(0)
            for prefix, fault in self.config["prefix_faults"].items():
                if registration_token.startswith(prefix):
                    return fault
        return None


def _jwt_claims(assertion: str) -> dict | None:
    try:
        payload = assertion.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None


class StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each keep-alive answer waits ~40 ms (docs: FACTS.md)
    server: StubHTTPServer

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        state = self.server.state
        if self.path == "/_stub/counters":
            with state.lock:
                self._reply(200, dict(state.counters))
        elif self.path == "/_stub/messages":
            with state.lock:
                self._reply(200, list(state.messages))
        elif self.path == "/_stub/config":
            self._reply(200, state.config)
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        state = self.server.state
        body = self._body()
        if self.path == "/token":
            return self._token(body)
        if match := SEND_PATH.match(self.path):
            return self._send(match.group(1), body)
        if self.path == "/_stub/config":
            try:
                return self._reply(200, state.configure(json.loads(body or b"{}")))
            except ValueError as exc:
                return self._reply(400, {"error": str(exc)})
        if self.path == "/_stub/reset":
            state.reset(config=bool(json.loads(body or b"{}").get("config", True)))
            return self._reply(200, {"ok": True})
        self._reply(404, {"error": "not found"})

    def _token(self, body: bytes) -> None:
        state = self.server.state
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        claims = _jwt_claims(form.get("assertion", ""))
        if state.config["auth_fail"]:
            with state.lock:
                state.counters["token_refused"] += 1
            return self._reply(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        if (form.get("grant_type") != JWT_GRANT or not claims or claims.get("aud") != GOOGLE_TOKEN_AUDIENCE
                or SCOPE not in str(claims.get("scope", "")).split() or not claims.get("iss")):
            with state.lock:
                state.counters["token_bad_grant"] += 1
            return self._reply(400, {"error": "invalid_request", "error_description": "Bad JWT grant."})
        self._reply(200, {"access_token": state.issue_token(), "expires_in": state.config["expires_in"],
                          "token_type": "Bearer"})

    def _send(self, project: str, body: bytes) -> None:
        state = self.server.state
        config = state.config
        if config["latency_ms"]:
            time.sleep(config["latency_ms"] / 1000)
        bearer = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        if config["revoke_tokens"] or config["auth_fail"] or bearer not in state.tokens:
            with state.lock:
                state.counters["send_401"] += 1
            return self._reply(401, _fcm_error(401, "UNAUTHENTICATED", "Request had invalid authentication "
                                               "credentials."))
        try:
            message = json.loads(body)["message"]
            token = message["token"]
        except (ValueError, KeyError, TypeError):
            return self._reply(400, FAULT_ANSWERS["INVALID_PAYLOAD"][1])
        fault = state.fault_for(token)
        if fault is not None:
            status, answer = FAULT_ANSWERS[fault]
            headers = {}
            if fault in ("429", "503") and config["retry_after"] is not None:
                headers["Retry-After"] = f"{config['retry_after']:g}"
            with state.lock:
                state.counters[f"fault_{fault}"] += 1
            return self._reply(status, answer, headers)
        with state.lock:
            state.seq += 1
            n = state.seq
            state.counters["sent"] += 1
            if config["record"]:
                state.messages.append({"n": n, "project": project, **message})
        self._reply(200, {"name": f"projects/{project}/messages/{n}"})


class StubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], state: StubState) -> None:
        super().__init__(address, StubHandler)
        self.state = state

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed mid-request (the SIGKILL tests) is expected; anything else is printed.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.stub_fcm")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--no-record", action="store_true", help="do not keep accepted messages (benchmarks)")
    parser.add_argument("--parent-pid", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = {**DEFAULT_CONFIG, "latency_ms": args.latency_ms, "record": not args.no_record}
    server = StubHTTPServer((args.host, args.port), StubState(config))
    return stub_serve(server, parent_pid=args.parent_pid, path="")


# --- clients for tests and benchmarks ----------------------------------------------------------------


class StubClient:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token_uri = f"{self.base_url}/token"

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ValueError(f"stub {method} {path}: HTTP {exc.code} {exc.read().decode(errors='replace')}") from None

    def configure(self, **cfg: Any) -> dict:
        return self._call("POST", "/_stub/config", cfg)

    def reset(self, *, config: bool = True) -> None:
        self._call("POST", "/_stub/reset", {"config": config})

    def counters(self) -> dict:
        return self._call("GET", "/_stub/counters")

    def messages(self) -> list[dict]:
        return self._call("GET", "/_stub/messages")


class StubProcess(StubClient, ServerProcess):
    def __init__(self, proc: subprocess.Popen, base_url: str) -> None:
        super().__init__(base_url)
        self.proc = proc


def start_stub_process(*, startup_timeout: float = 15.0, latency_ms: float = 0.0, record: bool = True) -> StubProcess:
    return stub_start("tests.stub_fcm", StubProcess, startup_timeout=startup_timeout, latency_ms=latency_ms,
                      no_record=not record)


@contextlib.contextmanager
def stub_process(**kwargs: Any) -> Iterator[StubProcess]:
    stub = start_stub_process(**kwargs)
    try:
        yield stub
    finally:
        stub.stop()


# --- a throwaway service account (tests and the benchmark) ---------------------------------------------


def service_account_info(*, token_uri: str, project_id: str = "fortuna-test") -> dict:
    """A service-account key with a freshly generated RSA key, whose token_uri is the stub's."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "stub-key-1",
        "private_key": pem,
        "client_email": f"fortuna-push@{project_id}.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
