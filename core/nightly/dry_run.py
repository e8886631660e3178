"""--dry-run: what a real night would do, through the same engine in plan-only mode (no executor, no
writer), and (day-ahead on) what it would submit to the OpenAI Batch API and cost each way. Nothing is
written and no provider is called."""

from django.conf import settings

from core.fortunes.pricing import Tier, cost_estimate
from core.fortunes.prompt import estimate_tokens
from core.fortunes.providers import get_provider
from core.nightly.dates import nightly_targets
from core.nightly.executors.openai_batch import openai_batch_ahead_plan
from core.nightly.night import NightReport, nightly_locks, prices_check
from core.nightly.options import NightlyOptions
from core.nightly.plan import nightly_plan_counts, nightly_plan_pages, nightly_user_check
from core.nightly.scheduler import Scheduler
from core.nightly.store import stored_lookup
from core.nightly.summary import DryRunReport


def nightly_plan(*, options: NightlyOptions) -> NightReport:
    """What a real night would do, through the same scheduler in plan-only mode, and (day-ahead on)
    what it would submit for base+2 and cost each way: nothing written, no provider called."""
    provider = get_provider(name=options.provider_name)
    prices_check(provider=provider, options=options)
    estimate = None if provider.name == "local" else estimate_tokens
    with nightly_locks(base_date=options.base_date, ahead=options.ahead):
        if options.user_id is not None:
            nightly_user_check(user_id=options.user_id)
        reports = []
        for target in nightly_targets(base_date=options.base_date, catch_up_allowed=options.user_id is None):
            counts = nightly_plan_counts(target_date=target.target_date, user_id=options.user_id)
            pages = nightly_plan_pages(
                target_date=target.target_date, generator=provider.generator, force=options.force,
                nonce="dry-run" if options.force else "", user_id=options.user_id, page_size=options.page_size,
                compute_stale_natal=True, language=settings.FORTUNE_LANGUAGE,
            )
            tally = Scheduler(pages=pages, lookup=stored_lookup, estimate=estimate).plan()
            reports.append(DryRunReport(
                target=target, eligible=counts.eligible, already_present=counts.already_present,
                to_generate=tally.to_generate, generations=tally.planned, reused=tally.reused_users,
                unplannable=len(tally.unplannable), tokens_in=tally.tokens_in, tokens_out=tally.tokens_out,
                estimated_cost=cost_estimate(model=provider.model, tier=Tier.STANDARD, tokens_in=tally.tokens_in,
                                             tokens_out=tally.tokens_out),
                sample_user_ids=tally.sample_user_ids, provider=provider.generator,
            ))
        lines = []
        if options.ahead:
            lines.append(openai_batch_ahead_plan(base_date=reports[-1].target.base_date, user_id=options.user_id))
        return NightReport(plans=reports, lines=lines)


