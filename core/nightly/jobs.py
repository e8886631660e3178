"""The job table of one run: input hash -> Job, each in exactly one state.

    QUEUED ──> GENERATED ──> WRITING ──> STORED (leaves the table)
       │  ├──> STORED (an executor that stores itself: a Celery chunk)
       │  ├──> DEFERRED (handed to the OpenAI Batch API; kept, so later users of the input join it)
       │  └──> FAILED ──(retry round)──> QUEUED
       └─────> ABANDONED (stopped before its result came; the next run retries its users)

A stored job leaves the table: from then on the database is its record, and a later user with the
same input finds it through the "already stored?" lookup. So the table holds only the work in
flight, the writer's backlog and the failures, never the whole run.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from core.fortunes.inputs import GenerationInput
from core.fortunes.providers import Generated, ProviderError


class JobState(StrEnum):
    QUEUED = "queued"  # planned; with an executor, submitted and awaiting its result
    GENERATED = "generated"  # result in hand, waiting for the next flush
    WRITING = "writing"  # handed to the writer, no generation id yet
    STORED = "stored"
    FAILED = "failed"
    ABANDONED = "abandoned"
    DEFERRED = "deferred"


_NEXT = {
    JobState.QUEUED: frozenset({JobState.GENERATED, JobState.FAILED, JobState.ABANDONED, JobState.STORED,
                                JobState.DEFERRED}),
    JobState.GENERATED: frozenset({JobState.WRITING}),
    JobState.WRITING: frozenset({JobState.STORED}),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.STORED: frozenset(),
    JobState.ABANDONED: frozenset(),
    JobState.DEFERRED: frozenset(),
}
INVALID_TRANSITION = "job {hash}: {current} -> {new} is not a transition"
DUPLICATE_JOB = "job {hash} is already in the table"


class UserFailure(StrEnum):
    """Why users got no fortune though no generation failed: the failure sample's reasons beside the
    provider's (core.fortunes.providers.base.FailureReason)."""

    INVALID_BIRTH_DATA = "invalid_birth_data"  # natal pillars could not be computed
    USER_DELETED = "user_deleted"  # deleted (or no longer eligible) before their row was written
    INPUT_CHANGED = "input_changed"  # birth data changed before their row was written


class InvalidTransition(RuntimeError):
    pass


@dataclass(slots=True, eq=False)
class Job:
    hash: str
    inp: GenerationInput | None
    user_ids: list[int]
    state: JobState = JobState.QUEUED
    generated: Generated | None = None
    error: ProviderError | None = None
    # Users who asked for this input after its users were handed on (to the writer, WRITING; or to an
    # executor that stores itself, QUEUED): their result rows need its generation id, which comes back
    # with the outcome; user_ids itself is the writer's or the executor's by then and must not change.
    late: list[int] | None = None


class JobTable:
    def __init__(self, *, executor_stores: bool = False) -> None:
        # The executor stores the results of the users it was given (Celery): users joining a queued
        # job are late, linked by the engine once the generation id comes back.
        self._late_states = (JobState.WRITING, JobState.QUEUED) if executor_stores else (JobState.WRITING,)
        self._jobs: dict[str, Job] = {}
        self._generated: list[Job] = []  # the GENERATED jobs in arrival order: the next flush
        self.queued = 0
        self.failed_users = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(self._jobs.values())

    def get(self, digest: str) -> Job | None:
        return self._jobs.get(digest)

    def in_state(self, state: JobState) -> list[Job]:
        return [job for job in self._jobs.values() if job.state is state]

    @property
    def generated_count(self) -> int:
        return len(self._generated)

    def _move(self, job: Job, new: JobState) -> None:
        if new not in _NEXT[job.state]:
            raise InvalidTransition(INVALID_TRANSITION.format(hash=job.hash[:12], current=job.state, new=new))
        if job.state is JobState.QUEUED:
            self.queued -= 1
        elif job.state is JobState.FAILED:
            self.failed_users -= len(job.user_ids)
        if new is JobState.QUEUED:
            self.queued += 1
        elif new is JobState.FAILED:
            self.failed_users += len(job.user_ids)
        job.state = new

    def add(self, *, digest: str, inp: GenerationInput | None, user_ids: list[int]) -> Job:
        if digest in self._jobs:
            raise InvalidTransition(DUPLICATE_JOB.format(hash=digest[:12]))
        job = self._jobs[digest] = Job(hash=digest, inp=inp, user_ids=user_ids)
        self.queued += 1
        return job

    def join(self, job: Job, user_ids: list[int]) -> None:
        """More users need the job's input: they share its generation, whatever its state."""
        if job.state in self._late_states:
            if job.late is None:
                job.late = []
            job.late.extend(user_ids)
            return
        if job.state is JobState.FAILED:
            self.failed_users += len(user_ids)
        job.user_ids.extend(user_ids)

    def generated(self, job: Job, generated: Generated) -> None:
        self._move(job, JobState.GENERATED)
        job.generated = generated
        self._generated.append(job)

    def failed(self, job: Job, error: ProviderError | None) -> None:
        if job.late:  # they fail with it, and a retry round submits them with the rest
            job.user_ids.extend(job.late)
            job.late = None
        self._move(job, JobState.FAILED)
        job.error = error

    def deferred(self, job: Job) -> None:
        self._move(job, JobState.DEFERRED)

    def abandoned(self, job: Job) -> None:
        self._move(job, JobState.ABANDONED)

    def abandon_queued(self) -> int:
        """Give up every QUEUED job: a result still delivered for one is ignored from now on."""
        jobs = self.in_state(JobState.QUEUED)
        for job in jobs:
            self._move(job, JobState.ABANDONED)
        return len(jobs)

    def requeue(self, job: Job) -> None:
        self._move(job, JobState.QUEUED)
        job.error = None

    def take_generated(self) -> list[Job]:
        """Every GENERATED job, now WRITING: the caller hands them to the writer."""
        jobs, self._generated = self._generated, []
        for job in jobs:
            self._move(job, JobState.WRITING)
        return jobs

    def stored(self, digest: str) -> Job:
        """The writer (or the executor) stored the job's generation: it leaves the table (the caller
        keeps `late`)."""
        job = self._jobs[digest]
        self._move(job, JobState.STORED)
        del self._jobs[digest]
        return job
