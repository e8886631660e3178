"""Running a night on the celery executor in a test, as the nightly service does (it holds the lock,
and nightly_run_target creates the NightlyRun and drives the engine; these helpers do the same)."""

import time
from collections import Counter

from core.fortunes.providers import get_provider
from core.models import FortuneResult, NightlyRun, User
from core.nightly.dates import nightly_targets
from core.nightly.executors.celery import CeleryExecutor
from core.nightly.guards import StopGuards, StopToken
from core.nightly.lock import nightly_lock
from core.nightly.options import BACKEND_CELERY, NightlyOptions
from core.nightly.run import nightly_run_target
from tests.factories import user_create, users_create_many
from tests.nightly.helpers import BASE


def users_with_shared_inputs(*, distinct: int, twins: int, seed: int = 5) -> list[User]:
    """`distinct` users with varied birth data, then `twins` more sharing the first ones' inputs."""
    users = users_create_many(count=distinct, seed=seed)
    for n in range(twins):
        twin = users[n % distinct]
        users.append(user_create(birth_date_solar=twin.birth_date_solar, birth_time=twin.birth_time,
                                 gender=twin.gender))
    return users


def celery_factory(*, stale_seconds: float = 60.0, poll_seconds: float = 0.2):
    """executor_for's celery branch, with the test's stale cut-off and poll interval."""

    def factory(*, provider, options, guards, run):
        return CeleryExecutor(run=run, options=options, guards=guards, stale_seconds=stale_seconds,
                              poll_seconds=poll_seconds)

    return factory


def celery_run(*, chunk_size: int = 5, stop: StopToken | None = None, runtime: float = 120.0,
               stale_seconds: float = 60.0, poll_seconds: float = 0.2, **option_kwargs) -> NightlyRun:
    options = NightlyOptions(base_date=BASE, max_runtime_minutes=runtime / 60, backend=BACKEND_CELERY,
                             chunk_size=chunk_size, **option_kwargs)
    provider = get_provider(name=options.provider_name)
    target = nightly_targets(base_date=BASE, catch_up_allowed=False)[0]
    with nightly_lock(target_date=target.target_date):
        return nightly_run_target(
            target=target, options=options, provider=provider, stop=stop or StopToken(),
            deadline=time.monotonic() + runtime,
            executor=celery_factory(stale_seconds=stale_seconds, poll_seconds=poll_seconds),
        )


def celery_executor(run: NightlyRun, *, chunk_size: int = 4, poll_seconds: float = 0) -> CeleryExecutor:
    """An executor for an existing run (its chunks' dispatch bookkeeping, read directly)."""
    guards = StopGuards(stop=StopToken(), deadline=time.monotonic() + 60, max_runtime_minutes=1)
    options = NightlyOptions(base_date=BASE, backend=BACKEND_CELERY, chunk_size=chunk_size)
    return CeleryExecutor(run=run, options=options, guards=guards, poll_seconds=poll_seconds)


def stored_triples(*, for_date) -> set[tuple[int, str, str]]:
    """(user, date, input hash) of every stored fortune for for_date."""
    return set(FortuneResult.objects.filter(for_date=for_date).values_list(
        "user_id", "for_date", "generation__input_hash"))


def duplicates(*, for_date) -> int:
    counts = Counter(FortuneResult.objects.filter(for_date=for_date).values_list("user_id", flat=True))
    return sum(n - 1 for n in counts.values() if n > 1)
