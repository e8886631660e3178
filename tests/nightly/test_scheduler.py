"""The scheduler and its job table without a database: fake pages, lookup, executor and writer."""

from decimal import Decimal
from types import SimpleNamespace

import pytest

from core.fortunes.providers import Generated, ProviderError
from core.fortunes.providers.base import FailureReason
from core.nightly.guards import STOP_BUDGET, STOP_PROVIDER_DOWN, StopGuards, StopToken
from core.nightly.jobs import InvalidTransition, JobState, JobTable
from core.nightly.outcomes import Deferred, Stored
from core.nightly.plan import InputGroup, PlanPage
from core.nightly.scheduler import Scheduler
from core.nightly.store import Flush
from core.resilience import Attempted
from tests.fakes import FakeClock

NOW = 1000.0


def fake_input(digest: str) -> SimpleNamespace:
    """An input with just the natal fields the scheduler reads (its year is the hash, for the natal key)."""
    return SimpleNamespace(year=digest, month="", day="", hour=None, gender="")


def page(**groups: list[int]) -> PlanPage:
    """A page whose input hashes are the keyword names."""
    return PlanPage(groups={digest: InputGroup(inp=fake_input(digest), user_ids=list(users))
                            for digest, users in groups.items()},
                    users=sum(len(users) for users in groups.values()), already_present=0, unplannable=[])


def ok(tokens: int = 0) -> Attempted:
    return Attempted(generated=Generated(content=None, tokens_in=tokens, tokens_out=tokens), error=None, attempts=1)


def failure(reason: str, *, retryable: bool = True) -> Attempted:
    return Attempted(generated=None, error=ProviderError(reason, reason=reason, retryable=retryable), attempts=1)


class FakeExecutor:
    """A thread pool stand-in: outcomes come from `answer` at once, or wait until released."""

    inline = False
    stores = False

    def __init__(self, answer=None) -> None:
        self.answer = answer
        self.submitted: list[str] = []
        self.held: list[str] = []
        self.ready: list[tuple[str, Attempted]] = []

    def submit(self, digest, inp, user_ids):
        self.submitted.append(digest)
        if self.answer is None:
            self.held.append(digest)
        else:
            self.ready.append((digest, self.answer(digest, self.submitted.count(digest))))
        return None

    def deliver(self, digest: str, outcome: Attempted) -> None:
        self.held.remove(digest)
        self.ready.append((digest, outcome))

    def results(self, *, timeout, gather=0.0):
        ready, self.ready = self.ready, []
        return ready

    def close(self):
        pass


class FakeWriter:
    """Stores flushes, giving each new hash the next id; `hold` keeps them unwritten."""

    def __init__(self, *, hold: bool = False, changed: set[int] = frozenset(), gone: set[int] = frozenset()) -> None:
        self.hold = hold
        self.changed = set(changed)  # users whose birth data changed since planning (reported once)
        self.gone = set(gone)  # users deleted since planning
        self.outstanding = 0
        self.queue: list[Flush] = []
        self.written: list[Flush] = []
        self.ids: dict[str, int] = {}
        self.rows: dict[int, int] = {}  # user_id -> generation_id

    def submit(self, flush: Flush) -> None:
        self.outstanding += 1
        self.queue.append(flush)

    def done(self, *, wait: bool = False) -> list[Flush]:
        if self.hold and not wait:
            return []
        finished, self.queue = self.queue, []
        for flush in finished:
            for item in flush.items:
                flush.ids[item.hash] = self.ids.setdefault(item.hash, len(self.ids) + 1)
            pairs = list(flush.reused) + [(u, flush.ids[d]) for d, users in flush.waiting.items() for u in users]
            flush.gone = [row[0] for row in pairs if row[0] in self.gone]
            flush.changed = [row[0] for row in pairs if row[0] in self.changed]
            self.changed -= set(flush.changed)
            pairs = [row for row in pairs if row[0] not in self.gone and row[0] not in flush.changed]
            self.rows.update((row[0], row[1]) for row in pairs)
            flush.stored = len(pairs)
        self.outstanding -= len(finished)
        self.written += finished
        return finished

    def close(self) -> None:
        pass


def guards(*, budget: str = "0", workers: int = 1, clock=None) -> StopGuards:
    return StopGuards(stop=StopToken(), deadline=NOW + 3600, max_runtime_minutes=60, budget=Decimal(budget),
                      workers=workers, model="priced-model", clock=clock or FakeClock(NOW))


def scheduler(pages, *, executor, writer=None, stored=None, clock=None, **kwargs) -> Scheduler:
    stored = stored or {}
    clock = clock or FakeClock(NOW)
    kwargs.setdefault("guards", guards(clock=clock))
    return Scheduler(pages=pages, lookup=lambda hashes: {h: stored[h] for h in hashes if h in stored},
                     executor=executor, writer=writer or FakeWriter(), max_in_flight=100, clock=clock, **kwargs)


def test_users_sharing_an_input_across_pages_share_one_generation():
    executor = FakeExecutor(answer=None)
    writer = FakeWriter()
    run = scheduler([], executor=executor, writer=writer)
    run.take_page(page(a=[1, 2], b=[3]))
    run.take_page(page(a=[4], c=[5]))
    assert sorted(executor.submitted) == ["a", "b", "c"]
    assert run.table.get("a").user_ids == [1, 2, 4]
    for digest in ("a", "b", "c"):
        executor.deliver(digest, ok())
    run.finish_in_flight()
    run.flush_all()
    assert writer.rows == {1: 1, 2: 1, 4: 1, 3: writer.ids["b"], 5: writer.ids["c"]}
    assert (run.tally.generations, run.tally.stored_users, len(run.table)) == (3, 5, 0)


def test_an_input_already_stored_is_reused_without_a_request():
    executor = FakeExecutor(answer=lambda digest, n: ok())
    writer = FakeWriter()
    run = scheduler([page(a=[1], old=[2, 3])], executor=executor, writer=writer, stored={"old": 77})
    run.run()
    assert executor.submitted == ["a"]
    assert writer.rows == {1: writer.ids["a"], 2: 77, 3: 77}
    assert run.tally.reused_users == 2


class DeferringExecutor:
    """The OpenAI Batch API's submission, inline: every input deferred; those in `sent` were already."""

    inline = True
    stores = False

    def __init__(self, *, sent: set[str]) -> None:
        self.sent = sent
        self.submitted: list[str] = []

    def submit(self, digest, inp, user_ids):
        self.submitted.append(digest)
        return Deferred(submitted=digest not in self.sent)

    def results(self, *, timeout, gather=0.0):
        return []

    def close(self):
        pass


def test_deferred_inputs_are_kept_so_later_users_join_and_are_counted_sent_or_not():
    executor = DeferringExecutor(sent={"open"})
    writer = FakeWriter()
    run = scheduler([page(a=[1, 2], open=[3], old=[4]), page(a=[5], open=[6, 7], b=[8])], executor=executor,
                    writer=writer, stored={"old": 9})
    tally = run.run()
    assert executor.submitted == ["a", "open", "b"]  # once each, the stored one never
    assert (tally.deferred_users, tally.deferred_unsent_users, tally.reused_users) == (7, 3, 1)
    assert {job.hash: job.state for job in run.table} == {d: JobState.DEFERRED for d in ("a", "open", "b")}
    assert all(job.inp is None and job.user_ids == [] for job in run.table)  # kept without input or users
    assert writer.rows == {4: 9} and tally.generations == 0


def test_late_joiners_of_a_generation_with_the_writer_get_its_id():
    executor = FakeExecutor(answer=lambda digest, n: ok())
    writer = FakeWriter(hold=True)
    run = scheduler([], executor=executor, writer=writer)
    run.take_page(page(a=[1]))
    run.flush()
    assert run.table.get("a").state is JobState.WRITING
    run.take_page(page(a=[2, 3]))  # with the writer: no id yet, so they wait on the job
    assert run.table.get("a").late == [2, 3] and run.table.get("a").user_ids == [1]
    writer.hold = False
    run.flush_all()
    assert executor.submitted == ["a"]
    assert writer.rows == {1: 1, 2: 1, 3: 1}
    assert len(run.table) == 0 and run.tally.stored_users == 3


def test_abandon_on_stop_ignores_a_result_delivered_late():
    clock = FakeClock(NOW, step=0.1)  # the grace period runs out while the main thread waits
    executor = FakeExecutor(answer=None)
    writer = FakeWriter()
    run = scheduler([], executor=executor, writer=writer, clock=clock, grace_seconds=1.0)
    run.take_page(page(a=[1], b=[2]))
    executor.deliver("a", ok())
    run.guards.stop.request("test stop", interrupted=True)
    run.drain(timeout=0)  # a arrives; b is still out
    run.finish_in_flight()
    assert run.table.get("b").state is JobState.ABANDONED and run.table.queued == 0
    executor.deliver("b", ok())  # the stuck call answers after all, behind newer work
    run.take_page(page(c=[3]))
    executor.deliver("c", ok())
    run.drain(timeout=0)
    run.flush_all()
    assert run.table.get("b").state is JobState.ABANDONED and run.table.generated_count == 0
    assert writer.rows == {1: 1, 3: 2}
    assert run.failed_users == 0  # abandoned users are neither stored nor failed: the next run retries them


def test_the_retry_round_resubmits_transient_failures_only():
    answers = {
        "a": [failure(FailureReason.SERVER_ERROR), ok()],
        "b": [failure(FailureReason.BAD_REQUEST, retryable=False)],
    }
    executor = FakeExecutor(answer=lambda digest, n: answers[digest][n - 1])
    writer = FakeWriter()
    notes = []
    run = scheduler([page(a=[1, 2], b=[3])], executor=executor, writer=writer, on_note=notes.append)
    run.run()
    assert executor.submitted == ["a", "b", "a"]
    assert writer.rows == {1: 1, 2: 1}
    assert run.failed_users == 1 and run.table.get("b").state is JobState.FAILED
    assert notes == ["retry round for 1 generations after 0 s"]


def test_a_cost_budget_stops_taking_pages(settings):
    settings.FORTUNE_PRICES = {"priced-model": {"standard": (Decimal("1"), Decimal("1"))}}
    executor = FakeExecutor(answer=lambda digest, n: ok(tokens=1000))
    run = scheduler([page(a=[1]), page(b=[2]), page(c=[3])], executor=executor, guards=guards(budget="0.003"))
    run.run()
    assert executor.submitted == ["a", "b"]  # a costs $0.002, b reaches $0.004 >= $0.003
    assert run.guards.reason == STOP_BUDGET.format(cost=Decimal("0.004000"), budget=Decimal("0.003"))
    assert not run.guards.interrupted
    assert run.tally.stored_users == 2


def test_an_unusable_provider_trips_the_breaker():
    executor = FakeExecutor(answer=lambda digest, n: failure(FailureReason.CONNECTION))
    pages = [page(**{f"h{n}": [n]}) for n in range(30)]
    run = scheduler(pages, executor=executor)
    run.run()
    assert len(executor.submitted) == 10
    assert run.guards.reason == STOP_PROVIDER_DOWN.format(count=10, reason=FailureReason.CONNECTION)
    assert run.failed_users == 10


def test_plan_only_counts_what_a_run_would_do_without_a_backend():
    plan = Scheduler(pages=[page(a=[1, 2], old=[3]), page(a=[4], b=[5], old=[6])],
                     lookup=lambda hashes: {"old": 9} if "old" in hashes else {},
                     estimate=lambda inp: (10, 20)).plan()
    assert (plan.to_generate, plan.planned, plan.reused_users) == (6, 2, 2)
    assert (plan.tokens_in, plan.tokens_out) == (20, 40)
    assert plan.sample_user_ids == [1, 3, 5, 6]


def test_the_job_table_refuses_a_transition_that_is_not_one():
    table = JobTable()
    job = table.add(digest="a", inp=None, user_ids=[1])
    table.failed(job, None)
    assert table.failed_users == 1
    with pytest.raises(InvalidTransition):
        table.generated(job, ok().generated)
    with pytest.raises(InvalidTransition):
        table.add(digest="a", inp=None, user_ids=[2])
    table.requeue(job)
    assert (table.failed_users, table.queued) == (0, 1)


def test_users_whose_birth_data_changed_mid_run_are_planned_again_and_deleted_ones_counted():
    executor = FakeExecutor(answer=lambda digest, n: ok())
    writer = FakeWriter(changed={2}, gone={3})
    replanned = []

    def replan(user_ids):
        replanned.append(list(user_ids))
        return [page(new=user_ids)]  # their input as it is now

    run = scheduler([page(a=[1, 2], b=[3])], executor=executor, writer=writer, replan=replan).run()
    assert replanned == [[2]]
    assert writer.rows == {1: writer.ids["a"], 2: writer.ids["new"]}  # never a row from the old input
    assert (run.gone, run.changed, run.replanned, run.stored_users) == ([3], [], 1, 2)


class StoringExecutor(FakeExecutor):
    """An executor that stores the generation and its given users' rows itself (as a Celery chunk does)."""

    stores = True

    def __init__(self, answer=None) -> None:
        super().__init__(answer)
        self.given: dict[str, list[int]] = {}

    def submit(self, digest, inp, user_ids):
        self.given.setdefault(digest, []).extend(user_ids)
        return super().submit(digest, inp, user_ids)


def test_an_executor_that_stores_gets_the_users_it_was_given_and_the_engine_links_later_ones():
    executor = StoringExecutor(answer=None)
    writer = FakeWriter()
    run = scheduler([page(a=[1, 2]), page(a=[3], b=[4])], executor=executor, writer=writer)
    for p in run.pages:
        run.take_page(p)
    assert executor.given == {"a": [1, 2], "b": [4]}
    executor.deliver("a", Stored(generation_id=70, users=2, attempts=1, tokens_in=5, tokens_out=5))
    executor.deliver("b", Stored(generation_id=71, users=1, attempts=2))
    run.finish_in_flight()
    run.flush_all()
    assert writer.rows == {3: 70}  # only the user who joined after submission, linked by the engine
    tally = run.tally
    assert (tally.stored_users, tally.generations, tally.requests) == (4, 2, 3)
    assert len(run.table) == 0


def test_a_failed_job_of_a_storing_executor_takes_its_late_users_into_the_retry_round():
    answers = {"a": [failure(FailureReason.SERVER_ERROR), Stored(generation_id=9, users=3)]}
    executor = StoringExecutor(answer=None)
    run = scheduler([page(a=[1]), page(a=[2, 3])], executor=executor, retry_cooldown=0.0)
    for p in run.pages:
        run.take_page(p)
    executor.deliver("a", answers["a"][0])
    run.finish_in_flight()
    assert run.failed_users == 3  # the late users fail with their input
    executor.answer = lambda digest, n: answers[digest][n - 1]
    run.retry_round()
    assert executor.given["a"] == [1, 1, 2, 3]  # resubmitted with every user
    assert run.failed_users == 0 and run.tally.stored_users == 3


def test_a_deferred_input_stays_in_the_table_so_later_users_join_it():
    class DeferringExecutor(FakeExecutor):
        inline = True

        def submit(self, digest, inp, user_ids):
            self.submitted.append(digest)
            return Deferred()

    executor = DeferringExecutor()
    run = scheduler([page(a=[1, 2], b=[3]), page(a=[4])], executor=executor)
    run.run()
    assert executor.submitted == ["a", "b"]  # one line per input, whatever the pages
    assert run.tally.deferred_users == 4
    assert {job.hash: job.state for job in run.table} == {"a": JobState.DEFERRED, "b": JobState.DEFERRED}


def test_users_an_executor_store_skipped_are_counted_and_the_changed_ones_planned_again():
    executor = StoringExecutor(answer=None)
    replanned = []

    def replan(user_ids):
        replanned.extend(user_ids)
        return [page(b=list(user_ids))]

    run = scheduler([page(a=[1, 2, 3])], executor=executor, replan=replan)
    for p in run.pages:
        run.take_page(p)
    executor.deliver("a", Stored(generation_id=5, users=1, gone=(2,), changed=(3,)))
    run.finish_in_flight()
    executor.answer = lambda digest, n: Stored(generation_id=6, users=1)
    run.replan_changed()
    assert run.tally.gone == [2]
    assert replanned == [3] and run.tally.replanned == 1
    assert executor.given["b"] == [3] and run.tally.stored_users == 2
