import http.client
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from bench import gunicorn_worker as balance
from tests.deploy.server import BASE_DIR, free_port

BENCH_CONFIG = "bench/gunicorn.conf.py"  # the only config that loads the balanced worker


@pytest.fixture(autouse=True)
def _free_slots():
    for slot in range(balance.SLOTS):
        balance._counts[slot], balance._beats[slot] = 0, 0.0
    yield
    for slot in range(balance.SLOTS):
        balance._counts[slot], balance._beats[slot] = 0, 0.0


def _worker(slot, connections=0):
    worker = balance.BalancedThreadWorker.__new__(balance.BalancedThreadWorker)  # no gunicorn set-up
    worker.balance_slot, worker.nr_conns = slot, connections
    return worker


def test_slots_go_to_new_workers_first_free_first():
    a, b, c = SimpleNamespace(), SimpleNamespace(), SimpleNamespace()
    balance.slot_assign(a, [])
    balance.slot_assign(b, [a])
    assert (a.balance_slot, b.balance_slot) == (0, 1)
    balance.slot_assign(c, [b])  # a died: its slot is reused
    assert c.balance_slot == 0


def test_only_a_live_sibling_with_fewer_connections_makes_a_worker_wait():
    now = 100.0
    balance.slot_publish(0, 2, now)
    assert not balance.sibling_has_fewer(slot=0, connections=2, now=now)  # itself does not count
    balance.slot_publish(1, 2, now)
    assert not balance.sibling_has_fewer(slot=0, connections=2, now=now)  # equal: both may accept
    balance.slot_publish(1, 1, now)
    assert balance.sibling_has_fewer(slot=0, connections=2, now=now)
    assert not balance.sibling_has_fewer(slot=0, connections=2, now=now + balance.STALE_AFTER_SECONDS)  # dead
    assert not balance.sibling_has_fewer(slot=None, connections=2, now=now)  # no slot: plain gthread


def test_a_deferred_connection_is_accepted_after_the_cap_even_if_the_sibling_never_takes_it():
    balance.slot_publish(1, 0, 50.0)  # a sibling that stays alive and idle but never accepts
    worker = _worker(slot=0, connections=3)
    assert worker._defer(50.0)
    assert worker._defer(50.0 + balance.MAX_DEFER_SECONDS / 2)
    assert not worker._defer(50.0 + balance.MAX_DEFER_SECONDS * 1.5)
    balance.slot_publish(1, 3, 50.1)
    assert not worker._defer(50.1)  # balanced again: accept at once


def test_keep_alive_connections_are_shared_by_both_workers():
    # Clients straight to gunicorn: stock gthread often gave all ten to one process (docs/BENCHMARKS.md).
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "tests.deploy.pid_app:application", "--config", BENCH_CONFIG,
         "--bind", f"127.0.0.1:{port}", "--workers", "2", "--access-logfile", "/dev/null"],
        cwd=BASE_DIR, env=os.environ,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        pids = _served_by(port=port, connections=10)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert len(set(pids)) == 2, pids
    assert min(pids.count(pid) for pid in set(pids)) >= 3, pids  # 5 and 5 when each waits its turn


def _served_by(*, port: int, connections: int) -> list[str]:
    deadline = time.monotonic() + 30
    workers = set()
    while len(workers) < 2:  # both workers booted and published their slots
        assert time.monotonic() < deadline, "gunicorn did not start two workers"
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/", headers={"Connection": "close"})
            workers.add(conn.getresponse().read().decode())
            conn.close()
        except OSError:
            time.sleep(0.1)
    time.sleep(1.5)  # every worker's loop has published its slot since
    clients = [http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(connections)]
    for client in clients:
        client.connect()
        time.sleep(0.05)  # one at a time: each new connection goes to whichever worker has fewer
    pids = []
    for client in clients:
        client.request("GET", "/")
        pids.append(client.getresponse().read().decode())
        client.request("GET", "/")  # keep-alive: the same process answers again
        assert client.getresponse().read().decode() == pids[-1]
        client.close()
    return pids


def test_gunicorn_accepts_the_bench_config():
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "tests.deploy.pid_app:application", "--config", BENCH_CONFIG,
         "--check-config"],
        cwd=BASE_DIR, env=os.environ, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr + result.stdout
