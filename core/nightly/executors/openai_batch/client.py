"""The Batch API's client, its limits and statuses, the remote listings resume reconciles against,
and the error text recorded on an OpenAIBatch row."""

import datetime as dt
from decimal import Decimal

import openai
from django.conf import settings

from core.fortunes.pricing import Tier, cost_estimate
from core.fortunes.providers import ProviderConfigError
from core.fortunes.providers.openai import OPENAI_KEY_MISSING, OPENAI_MODEL_MISSING, openai_client_get
from core.models import OpenAIBatch

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
# The Batch API's limits per input file; one model per file (every line of one call has the same).
MAX_REQUESTS_PER_FILE = 50_000
MAX_BYTES_PER_FILE = 200_000_000
METADATA_KEY = "fortuna_key"
FILENAME = "fortuna-{key}.jsonl"
HTTP_TIMEOUT = 300.0  # an upload or download of up to 200 MB
LIST_MARGIN = dt.timedelta(hours=1)  # clock skew between our created_at and the batch's
REMOTE_OPEN = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
REMOTE_DONE = frozenset({"completed", "expired", "cancelled"})

BATCH_API_NEEDS_OPENAI = "The Batch API needs FORTUNE_PROVIDER=openai; it is {provider!r}."
REMOTE_CALL_FAILED = "{step} failed: {error}"


def openai_batch_client() -> openai.OpenAI:
    """The SDK client of the Batch API calls (no SDK retries: a failed call is retried on the next poll)."""
    if settings.FORTUNE_PROVIDER != "openai":
        raise ProviderConfigError(BATCH_API_NEEDS_OPENAI.format(provider=settings.FORTUNE_PROVIDER))
    if not settings.OPENAI_API_KEY:
        raise ProviderConfigError(OPENAI_KEY_MISSING)
    if not settings.OPENAI_MODEL:
        raise ProviderConfigError(OPENAI_MODEL_MISSING)
    return openai_client_get(base_url=settings.OPENAI_BASE_URL or None, api_key=settings.OPENAI_API_KEY,
                             timeout=HTTP_TIMEOUT)


def openai_batch_open_dates() -> list[dt.date]:
    """Target dates with batches not yet collected: the dates a collecting caller must lock."""
    return sorted(set(OpenAIBatch.objects.filter(state__in=OpenAIBatch.OPEN_STATES)
                      .values_list("target_date", flat=True)))


def error_text(step: str, exc: Exception) -> str:
    return REMOTE_CALL_FAILED.format(step=step, error=f"{type(exc).__name__}: {exc}")[:500]


def cost(model: str, tier: Tier, tokens_in: int, tokens_out: int) -> Decimal:
    return cost_estimate(model=model, tier=tier, tokens_in=tokens_in, tokens_out=tokens_out)


def remote_batches(client: openai.OpenAI, *, since: dt.datetime) -> dict[str, object]:
    """metadata key -> batch, for our batches created since `since` (the list is newest first)."""
    found = {}
    floor = (since - LIST_MARGIN).timestamp()
    for batch in client.batches.list(limit=100):
        if batch.created_at < floor:
            break
        key = (batch.metadata or {}).get(METADATA_KEY)
        if key:
            found.setdefault(key, batch)
    return found


def remote_files(client: openai.OpenAI) -> dict[str, str]:
    """file name -> id of the uploaded batch input files."""
    return {f.filename: f.id for f in client.files.list(purpose="batch")}
