"""The FCM HTTP v1 client: `POST {FCM_API_URL}/v1/projects/{id}/messages:send`, one request per token.

https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send
https://firebase.google.com/docs/cloud-messaging/send-message#rest (errors: ErrorCode in FcmError details)

The OAuth2 access token comes from google-auth's service-account credentials (the signed JWT grant to
the account's own `token_uri`, cached until near its expiry, refreshed under a lock); the sends go
through one httpx2 client (the openai SDK's own HTTP library, already a dependency) whose connection
pool the sender's threads share. google-auth's HTTP transport is an adapter over the same client, so one
library speaks HTTP and tests reach the stub FCM server (tests/stub_fcm) through exactly this path.
firebase-admin was the other candidate: its `messaging.send_each` is a thread pool over the same
endpoint, but it brings `requests`, google-api-core and google-cloud-firestore/storage with it, decides
its own retries (urllib3's, outside core/resilience.py) and hides the HTTP status and Retry-After
behind its exception classes.

HTTP v1 has no multicast: the legacy batch endpoints were shut down in 2024, so the sender sends one
request per device, concurrently (core/push/sender.py).
"""

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import google.auth.exceptions
import google.auth.transport
import httpx2
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from google.oauth2 import service_account

from core.fortunes.providers.base import retry_after_seconds
from core.limiter import RateLimiter
from core.resilience import RetryPolicy, call_with_retry_after

logger = logging.getLogger("fortuna.push")

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
USER_AGENT = "fortuna-push/1"

# Configuration errors: they name the variable and what is wrong, never the secret itself.
CREDENTIALS_FILE_MISSING = "FCM_CREDENTIALS names a file that cannot be read ({error})."
CREDENTIALS_NOT_JSON = "FCM_CREDENTIALS is not valid JSON (give the service account's JSON text or its file path)."
CREDENTIALS_NOT_SERVICE_ACCOUNT = (
    "FCM_CREDENTIALS must be a service account key (\"type\": \"service_account\") with client_email, "
    "private_key and token_uri; missing or wrong: {fields}."
)
CREDENTIALS_KEY_INVALID = "FCM_CREDENTIALS: the private_key cannot be read as a PEM RSA key."
PROJECT_ID_MISSING = "Set FCM_PROJECT_ID (the service account's JSON has no project_id)."
PUSH_OFF = "Push notifications are off: FCM_CREDENTIALS is not set (docs/CONFIGURATION.md)."
AUTH_FAILED = (
    "FCM refused the service account ({detail}). Check FCM_CREDENTIALS (a key revoked or deleted?), "
    "FCM_PROJECT_ID and the account's Firebase Cloud Messaging permission; nothing more is sent until it is fixed."
)


class FcmAuthError(Exception):
    """The credentials were refused (token endpoint or FCM itself): the run stops."""


@dataclass(frozen=True, slots=True)
class FcmConfig:
    project_id: str
    credentials_info: dict
    api_url: str
    timeout: float

    def __repr__(self) -> str:  # the key must never reach a log line or a traceback's locals
        return f"FcmConfig(project_id={self.project_id!r}, api_url={self.api_url!r})"


_REQUIRED = ("client_email", "private_key", "token_uri")


def fcm_config_load() -> FcmConfig | None:
    """The FCM configuration from settings, checked; None when FCM_CREDENTIALS is unset (push off)."""
    raw = settings.FCM_CREDENTIALS.strip()
    if not raw:
        return None
    if not raw.startswith("{"):
        try:
            raw = Path(raw).read_text()
        except OSError as exc:
            raise ImproperlyConfigured(CREDENTIALS_FILE_MISSING.format(error=exc.strerror)) from None
    try:
        info = json.loads(raw)
    except ValueError:
        raise ImproperlyConfigured(CREDENTIALS_NOT_JSON) from None
    if not isinstance(info, dict):
        raise ImproperlyConfigured(CREDENTIALS_NOT_JSON)
    wrong = [name for name in _REQUIRED if not isinstance(info.get(name), str) or not info[name]]
    if info.get("type") != "service_account":
        wrong.insert(0, "type")
    if wrong:
        raise ImproperlyConfigured(CREDENTIALS_NOT_SERVICE_ACCOUNT.format(fields=", ".join(wrong)))
    project_id = settings.FCM_PROJECT_ID or info.get("project_id") or ""
    if not project_id:
        raise ImproperlyConfigured(PROJECT_ID_MISSING)
    try:
        service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
    except ValueError:
        raise ImproperlyConfigured(CREDENTIALS_KEY_INVALID) from None
    return FcmConfig(project_id=project_id, credentials_info=info, api_url=settings.FCM_API_URL.rstrip("/"),
                     timeout=float(settings.FCM_TIMEOUT))


_said_off = threading.Event()


def fcm_say_off_once() -> None:
    """Log, once per process, that push is off for want of credentials."""
    if not _said_off.is_set():
        _said_off.set()
        logger.info(PUSH_OFF)


# --- google-auth's HTTP transport over httpx2 ----------------------------------------------------


class _Response(google.auth.transport.Response):
    def __init__(self, response: httpx2.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self):
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class HttpxRequest(google.auth.transport.Request):
    """google-auth's transport interface (the documented extension point) on an httpx2 client."""

    def __init__(self, client: httpx2.Client) -> None:
        self._client = client

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        try:
            response = self._client.request(method, url, content=body, headers=headers,
                                            timeout=timeout if timeout is not None else httpx2.USE_CLIENT_DEFAULT)
        except httpx2.HTTPError as exc:
            raise google.auth.exceptions.TransportError(f"{type(exc).__name__}: {exc}") from exc
        return _Response(response)


# --- sending ----------------------------------------------------------------------------------


class Outcome:
    """Why a send ended (also the failure reasons counted per day on /ops/)."""

    SENT = "sent"
    UNREGISTERED = "unregistered"  # the app was uninstalled or the token expired: deactivate
    INVALID_TOKEN = "invalid_token"  # INVALID_ARGUMENT about message.token: deactivate
    SENDER_MISMATCH = "sender_id_mismatch"  # the token belongs to another Firebase project: deactivate
    INVALID_ARGUMENT = "invalid_argument"  # the message itself was refused
    QUOTA = "quota_exceeded"  # 429 after every retry
    UNAVAILABLE = "unavailable"  # 503/500 after every retry
    THIRD_PARTY_AUTH = "third_party_auth_error"  # APNs/web push credentials of the Firebase project
    CONNECTION = "connection"  # no answer (timeout, reset): maybe delivered, never resent
    HTTP_ERROR = "http_error"  # any other status
    NOT_SENT = "not_sent"  # the run stopped before this send was made: the claim is given back


DEACTIVATING = frozenset({Outcome.UNREGISTERED, Outcome.INVALID_TOKEN, Outcome.SENDER_MISMATCH})


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: str
    status: int | None = None
    message_id: str = ""
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.outcome == Outcome.SENT

    @property
    def deactivate(self) -> bool:
        return self.outcome in DEACTIVATING


_TOKEN_UNREACHABLE = "token_unreachable"  # the token endpoint did not answer: nothing was sent


class _Retryable(Exception):
    """A 429/5xx or a connection failure: worth another attempt (Retry-After honoured)."""

    def __init__(self, outcome: str, *, status: int | None, retry_after: float | None = None) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.status = status
        self.retry_after = retry_after


class _NotSent(Exception):
    """The stop event was set before the attempt: nothing was sent."""


class _Unauthenticated(Exception):
    """A 401 from messages:send: the access token is refused; refreshed once, then the run stops."""


def _error_fields(response: httpx2.Response) -> tuple[str, str, bool]:
    """(google.rpc status, FCM ErrorCode, whether a BadRequest field violation names message.token)."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return "", "", False
    status, code, token_field = str(error.get("status", "")), "", False
    for detail in error.get("details") or []:
        if not isinstance(detail, dict):
            continue
        if detail.get("@type", "").endswith("FcmError"):
            code = str(detail.get("errorCode", ""))
        for violation in detail.get("fieldViolations") or []:
            if isinstance(violation, dict) and str(violation.get("field", "")).endswith("token"):
                token_field = True
    return status, code, token_field


def _classify(response: httpx2.Response) -> SendResult:
    """A non-2xx answer as a final outcome, or raise _Retryable / _Unauthenticated / FcmAuthError."""
    status = response.status_code
    rpc_status, code, token_field = _error_fields(response)
    if status == 401:
        raise _Unauthenticated(rpc_status or "UNAUTHENTICATED")
    if code == "UNREGISTERED" or (status == 404 and not code):
        return SendResult(Outcome.UNREGISTERED, status=status)
    if code == "SENDER_ID_MISMATCH":
        return SendResult(Outcome.SENDER_MISMATCH, status=status)
    if code == "THIRD_PARTY_AUTH_ERROR":
        return SendResult(Outcome.THIRD_PARTY_AUTH, status=status)
    if status == 403:  # PERMISSION_DENIED without an FCM code: the service account may not send
        raise FcmAuthError(AUTH_FAILED.format(detail=f"HTTP 403 {rpc_status or 'PERMISSION_DENIED'}"))
    if status == 429 or code == "QUOTA_EXCEEDED":
        raise _Retryable(Outcome.QUOTA, status=status, retry_after=retry_after_seconds(response.headers))
    if status >= 500 or code in ("UNAVAILABLE", "INTERNAL"):
        raise _Retryable(Outcome.UNAVAILABLE, status=status, retry_after=retry_after_seconds(response.headers))
    if status == 400 or code == "INVALID_ARGUMENT":
        return SendResult(Outcome.INVALID_TOKEN if token_field else Outcome.INVALID_ARGUMENT, status=status)
    return SendResult(Outcome.HTTP_ERROR, status=status)


class FcmClient:
    """Thread-safe: one per sender process (or Celery worker task), shared by its sending threads."""

    def __init__(self, *, config: FcmConfig, max_connections: int = 32, policy: RetryPolicy | None = None,
                 stop: threading.Event | None = None, before_attempt: Callable[[], object] | None = None) -> None:
        self.config = config
        self.url = f"{config.api_url}/v1/projects/{config.project_id}/messages:send"
        self.policy = policy or RetryPolicy(max_attempts=settings.FCM_MAX_ATTEMPTS,
                                            max_retry_after=float(settings.FCM_MAX_RETRY_AFTER))
        self.stop = stop or threading.Event()
        self._before_attempt = before_attempt  # the rate limiter's slot
        self._client = httpx2.Client(
            timeout=config.timeout, headers={"User-Agent": USER_AGENT},
            limits=httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        self._credentials = service_account.Credentials.from_service_account_info(
            config.credentials_info, scopes=[SCOPE])
        self._auth_request = HttpxRequest(self._client)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "FcmClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def access_token(self, *, refused: str | None = None) -> str:
        """The cached OAuth2 token, fetched or refreshed (under the lock) when absent, near expiry, or when
        it is the `refused` one (threads refused the same token at once: one refresh for all of them)."""
        with self._lock:
            if not self._credentials.valid or (refused is not None and self._credentials.token == refused):
                try:
                    self._credentials.refresh(self._auth_request)
                except google.auth.exceptions.RefreshError as exc:
                    raise FcmAuthError(AUTH_FAILED.format(detail=_refresh_detail(exc))) from None
                except google.auth.exceptions.TransportError as exc:
                    raise _Retryable(_TOKEN_UNREACHABLE, status=None) from exc
            return self._credentials.token

    def send(self, *, token: str, notification: dict, data: dict[str, str]) -> SendResult:
        """One message to one registration token, with the retry policy for 429/5xx/connection errors
        (Retry-After honoured, up to FCM_MAX_RETRY_AFTER). Raises FcmAuthError when the credentials
        are refused; every other answer is a SendResult."""
        body = json.dumps({"message": {"token": token, "notification": notification, "data": data}},
                          ensure_ascii=False).encode()
        attempts = 0
        refreshed = False
        uncertain = False  # a request went out and no answer came back: it may have been delivered

        def attempt() -> SendResult:
            nonlocal attempts, refreshed, uncertain
            if self.stop.is_set():
                raise _NotSent
            attempts += 1
            if self._before_attempt is not None:
                self._before_attempt()
                if self.stop.is_set():
                    raise _NotSent
            bearer = self.access_token()
            try:
                response = self._client.post(self.url, content=body, headers={
                    "Authorization": f"Bearer {bearer}", "Content-Type": "application/json; charset=utf-8"})
            except httpx2.HTTPError as exc:
                uncertain = True
                raise _Retryable(Outcome.CONNECTION, status=None) from exc
            if response.is_success:
                return SendResult(Outcome.SENT, status=response.status_code,
                                  message_id=str(response.json().get("name", "")))
            try:
                return _classify(response)
            except _Unauthenticated:
                if refreshed:
                    raise FcmAuthError(AUTH_FAILED.format(detail="HTTP 401 after a fresh access token")) from None
                refreshed = True
                self.access_token(refused=bearer)
                raise _Retryable(Outcome.HTTP_ERROR, status=401, retry_after=0.0) from None

        try:
            result = call_with_retry_after(
                attempt, policy=self.policy, retryable=lambda exc: isinstance(exc, _Retryable),
                retry_after=lambda exc: getattr(exc, "retry_after", None), stop=self.stop,
                what="FCM send",
            )
        except (_Retryable, _NotSent) as exc:
            outcome = exc.outcome if isinstance(exc, _Retryable) else Outcome.NOT_SENT
            if outcome in (Outcome.NOT_SENT, _TOKEN_UNREACHABLE):
                # Nothing went out on the last try (stopped, or no access token): the claim may be given
                # back, unless an earlier try may have arrived — that one is never sent again.
                outcome = Outcome.CONNECTION if uncertain else Outcome.NOT_SENT
            return SendResult(outcome, status=getattr(exc, "status", None), attempts=attempts)
        return SendResult(result.outcome, status=result.status, message_id=result.message_id, attempts=attempts)


def _refresh_detail(exc: google.auth.exceptions.RefreshError) -> str:
    """The token endpoint's error code (e.g. invalid_grant), never its request or the key."""
    args = exc.args
    if len(args) > 1 and isinstance(args[1], dict):
        return f"token endpoint: {args[1].get('error', 'refused')}"
    return "token endpoint refused the grant"


def fcm_client_build(*, config: FcmConfig, concurrency: int, rate_per_second: int,
                     stop: threading.Event | None = None) -> FcmClient:
    """A client whose every attempt first takes a slot of an in-process limiter at `rate_per_second`."""
    stop = stop or threading.Event()
    before = None
    if rate_per_second:
        limiter = RateLimiter(rate_per_second * 60, burst=max(1, min(concurrency, rate_per_second)))

        def before() -> None:
            limiter.acquire(stop=stop)

    return FcmClient(config=config, max_connections=concurrency, stop=stop, before_attempt=before)
