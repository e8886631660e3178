"""Data builders for the ops tests (and the ops screenshots)."""

import datetime as dt
import itertools
from decimal import Decimal

from django.utils import timezone

from core.models import FortuneGeneration, FortuneResult, NightlyRun, User

_hashes = itertools.count(1)


def generation_create(*, for_date: dt.date) -> FortuneGeneration:
    return FortuneGeneration.objects.create(
        input_hash=f"ops-test-{next(_hashes):055d}", for_date=for_date, content={"summary": "test"}, provider="local",
    )


def fortunes_create(*, users: list[User], for_date: dt.date, source: str = FortuneResult.Source.BATCH) -> None:
    generation = generation_create(for_date=for_date)
    FortuneResult.objects.bulk_create(
        FortuneResult(user=user, for_date=for_date, generation=generation, source=source) for user in users
    )


def run_create(*, target_date: dt.date, **fields) -> NightlyRun:
    now = timezone.now()
    defaults = {
        "base_date": target_date - dt.timedelta(days=1), "status": NightlyRun.Status.SUCCEEDED, "provider": "openai",
        "model": "gpt-4o-mini", "workers": 8, "hostname": "worker-1", "pid": 4242,
        "started_at": now - dt.timedelta(minutes=10), "heartbeat_at": now - dt.timedelta(minutes=1),
    }
    defaults.update(fields)
    if defaults["status"] != NightlyRun.Status.RUNNING:
        defaults.setdefault("finished_at", defaults["heartbeat_at"])
    return NightlyRun.objects.create(target_date=target_date, **defaults)


def history_create(*, nights: int, end: dt.date, eligible: int = 1000, seed: int = 0) -> list[NightlyRun]:
    """One plausible finished run per night, ending at `end` (for history pages and screenshots)."""
    runs = []
    for n in range(nights):
        day = end - dt.timedelta(days=nights - 1 - n)
        failed = (n * 7 + seed) % 13 if n % 5 else 0
        generated = eligible - failed
        tokens_in, tokens_out = generated * 420, generated * 610
        started = timezone.make_aware(dt.datetime.combine(day - dt.timedelta(days=1), dt.time(22, 0)))
        runs.append(run_create(
            target_date=day, status=NightlyRun.Status.PARTIAL if failed else NightlyRun.Status.SUCCEEDED,
            eligible=eligible, generated=generated, generations=generated // 3, failed=failed,
            llm_requests=generated // 3 + failed, tokens_in=tokens_in, tokens_out=tokens_out,
            estimated_cost=(Decimal(tokens_in) * Decimal("0.15") + Decimal(tokens_out) * Decimal("0.6")) / 10**6,
            started_at=started, heartbeat_at=started + dt.timedelta(seconds=300 + 11 * n % 120),
            failure_sample=[{"reason": "timeout", "error": "Request timed out.", "input": "", "count": failed,
                             "user_ids": []}] if failed else [],
        ))
    return runs
