"""Response helpers shared by the API views: JSON errors and HTTP caching of fortunes."""

import hashlib

from django.utils.cache import patch_vary_headers
from rest_framework.response import Response

from core.models import FortuneResult
from core.services.fortunes import StoredFortune
from core.throttles import seconds_until_kst_midnight

# A profile edit replaces today's fortune, so clients may reuse a response only briefly.
FORTUNE_MAX_AGE = 300


def error_response(*, status: int, detail: str, code: str, retry_after: int | None = None) -> Response:
    headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else None
    response = Response({"detail": detail, "code": code}, status=status, headers=headers)
    response["Cache-Control"] = "no-store"
    return response


def fortune_etag(fortune: StoredFortune | FortuneResult) -> str:
    raw = f"{fortune.generation_id}:{fortune.for_date.isoformat()}:{fortune.source}"
    return '"' + hashlib.sha256(raw.encode()).hexdigest()[:32] + '"'


def etag_matches(*, if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = [tag.strip() for tag in if_none_match.split(",")]
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in candidates)


def with_fortune_cache_headers(response: Response, *, etag: str) -> Response:
    response["ETag"] = etag
    response["Cache-Control"] = f"private, max-age={min(FORTUNE_MAX_AGE, seconds_until_kst_midnight())}"
    patch_vary_headers(response, ("Authorization", "Cookie"))
    return response
