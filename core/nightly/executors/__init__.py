"""The executors, and the one factory that picks a night's. Their protocol and outcomes live in
core.nightly.outcomes, outside this package: the engine needs them, and some executors (the OpenAI
Batch API's) drive the engine, so here they would make an import circle."""

from collections.abc import Callable

from core.fortunes.providers import Provider
from core.limiter import account_limiter
from core.nightly.executors.inline import InlineExecutor
from core.nightly.executors.threads import ThreadExecutor, model_call
from core.nightly.guards import StopGuards
from core.nightly.options import BACKEND_CELERY, NightlyOptions
from core.nightly.outcomes import Executor
from core.resilience import RetryPolicy

ExecutorFactory = Callable[..., Executor]  # (*, provider, options, guards, run) -> executor


def executor_for(*, provider: Provider, options: NightlyOptions, guards: StopGuards, run=None) -> Executor:
    """The night's executor: Celery chunks for --backend celery (the one place that option is read;
    the workers call the model, or the local provider, with the same retries and shared limiter);
    else inline for the local provider, else a thread pool calling the model with retries under the
    account's limiter (core.limiter: shared in Redis with the web's on-demand path and any other
    process when REDIS_URL is set; while Redis is down, this process's share of it)."""
    if options.backend == BACKEND_CELERY:
        from core.nightly.executors.celery import CeleryExecutor  # loads the Celery app only when asked for

        return CeleryExecutor(run=run, options=options, guards=guards)
    if provider.name == "local":
        return InlineExecutor(provider=provider)
    call = model_call(provider=provider, policy=RetryPolicy.from_settings(max_attempts=options.max_attempts),
                      limiter=account_limiter(rpm=options.rpm, tpm=options.tpm), guards=guards)
    return ThreadExecutor(workers=options.workers, call=call)


def executor_check(*, options: NightlyOptions) -> None:
    """Before any lock or write: the executor can start (a Celery broker that is down raises
    CeleryBackendUnavailable, with nothing written)."""
    if options.backend == BACKEND_CELERY:
        from core.nightly.executors.celery import celery_backend_check  # loads the Celery app only when asked for

        celery_backend_check(rpm=options.rpm, tpm=options.tpm)
