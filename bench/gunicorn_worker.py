"""gunicorn's gthread worker, sharing new connections evenly with its sibling workers (benchmarks only).

Stock gthread workers all wait on the one listening socket, and whichever wakes first takes the
connection; a keep-alive connection then stays with that process. Clients that reach gunicorn
directly with a few long-lived connections (a load generator, a client without a proxy) can land on
one worker, whose GIL then serves all of them while the other process idles. Behind a proxy that
pools its upstream connections this was not seen (docs/BENCHMARKS.md), so production (gunicorn.conf.py)
runs stock gthread; only bench/gunicorn.conf.py loads this worker, for the benchmarks and the tests
whose clients reach gunicorn directly (bench/api.py --balanced). It overrides gthread internals
(`accept`, `nr_conns`, `notify`) that gunicorn does not document: recheck it on every gunicorn upgrade
(tests/deploy/test_gunicorn_worker.py runs it against the pinned release).

Here each worker publishes its open-connection count in shared memory (a slot per worker, assigned
by the arbiter's pre_fork hook in bench/gunicorn.conf.py). A worker asked to accept while a live sibling
holds fewer connections leaves the connection in the backlog for that sibling, briefly: after
MAX_DEFER_SECONDS it accepts anyway, so a sibling that is alive but stuck never strands a client.
Everything else is gthread's own code.
"""

import time
from multiprocessing.sharedctypes import RawArray

from gunicorn.workers.gthread import ThreadWorker

SLOTS = 256  # more workers than this run unbalanced (as stock gthread), never fail
# A worker's loop refreshes its slot at least every second (gthread polls with a 1 s timeout);
# a slot older than this belongs to a dead or hung worker and is ignored.
STALE_AFTER_SECONDS = 3.0
MAX_DEFER_SECONDS = 0.01
DEFER_POLL_SECONDS = 0.0005  # the deferring worker yields the CPU while the sibling accepts

# Created in the arbiter when gunicorn loads this module, before it forks: every worker maps the same
# memory. Written without locks: each slot has one writer, and a torn read only delays a decision.
_counts = RawArray("i", SLOTS)
_beats = RawArray("d", SLOTS)  # time.monotonic() of the slot's last update; 0 = free


def slot_assign(worker, siblings) -> None:
    """pre_fork hook (arbiter): give the new worker the first slot no live sibling uses."""
    used = {getattr(sibling, "balance_slot", None) for sibling in siblings}
    worker.balance_slot = next((slot for slot in range(SLOTS) if slot not in used), None)
    if worker.balance_slot is not None:
        _counts[worker.balance_slot] = 0
        _beats[worker.balance_slot] = 0.0


def slot_publish(slot: int | None, connections: int, now: float) -> None:
    if slot is not None:
        _counts[slot] = connections
        _beats[slot] = now


def sibling_has_fewer(*, slot: int | None, connections: int, now: float) -> bool:
    """Whether a live worker other than `slot` holds fewer open connections than `connections`."""
    if slot is None:
        return False
    for other in range(SLOTS):
        beat = _beats[other]
        if other != slot and beat and now - beat < STALE_AFTER_SECONDS and _counts[other] < connections:
            return True
    return False


class BalancedThreadWorker(ThreadWorker):
    balance_slot: int | None = None
    _deferring_since: float | None = None

    def notify(self) -> None:
        super().notify()  # once per pass of the worker's main loop
        slot_publish(self.balance_slot, self.nr_conns, time.monotonic())

    def accept(self, listener) -> None:
        if self._defer(time.monotonic()):
            time.sleep(DEFER_POLL_SECONDS)
            return  # still in the backlog: the sibling's poller sees it too
        super().accept(listener)
        slot_publish(self.balance_slot, self.nr_conns, time.monotonic())

    def _defer(self, now: float) -> bool:
        if not sibling_has_fewer(slot=self.balance_slot, connections=self.nr_conns, now=now):
            self._deferring_since = None
            return False
        if self._deferring_since is None:
            self._deferring_since = now
        if now - self._deferring_since < MAX_DEFER_SECONDS:
            return True
        self._deferring_since = None
        return False
