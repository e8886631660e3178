"""Benchmark of the morning push (send_fortune_notifications) through the stub FCM server. Not a test.

    createdb -h 127.0.0.1 -U postgres fortuna_bench
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/fortuna_bench .venv/bin/python bench/push.py --users 100000

N users (default 100,000) are due at once, each with one device and today's fortune. In the same run:

  ceiling  the stub's own ceiling: a bare loop of messages:send requests (one httpx2 client, a thread pool
           of --concurrency, a bearer token fetched once, no database), --ceiling-requests of them;
  sender   the command as a process of its own (`--concurrency`, `--rate 0`, `--page-size`): its wall time,
           the run's sent count, pushes/s, and the ratio to the ceiling.

The database is WIPED (users, fortunes, runs, devices, deliveries): it refuses unless its name contains "bench".
"""

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, batch_django_setup, settle, wipe  # noqa: E402

batch_django_setup()

import datetime as dt  # noqa: E402

import httpx2  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402
from google.oauth2 import service_account  # noqa: E402

from core.models import FortuneGeneration, FortuneResult, PushDelivery, PushDevice, PushRun, User  # noqa: E402
from core.push.fcm import SCOPE, HttpxRequest  # noqa: E402
from tests.stub_fcm.server import service_account_info, stub_process  # noqa: E402

BATCH = 5000


def seed(*, users: int) -> None:
    """`users` due users (notify_at 00:00), one device and today's fortune each, bulk-inserted."""
    started = time.perf_counter()
    today = timezone.localdate()
    generation = FortuneGeneration.objects.create(
        input_hash=f"bench-push-{today}", for_date=today, provider="local",
        content={"summary": "차분하게 하루를 정리하면 좋은 결과가 따릅니다.",
                 "overall": {"score": 72, "text": "좋은 날"}})
    for start in range(0, users, BATCH):
        batch = [User(username=f"push{n}", password="!", email="", gender="F", birth_date_solar=dt.date(1990, 1, 1),
                      notify_at=dt.time(0, 0)) for n in range(start, min(users, start + BATCH))]
        User.objects.bulk_create(batch, batch_size=BATCH)
    ids = list(User.objects.order_by("pk").values_list("pk", flat=True))
    for start in range(0, len(ids), BATCH):
        chunk = ids[start:start + BATCH]
        PushDevice.objects.bulk_create([PushDevice(user_id=i, token=f"bench-token-{i:09d}-" + "x" * 120,
                                                   platform="android") for i in chunk], batch_size=BATCH)
        FortuneResult.objects.bulk_create([FortuneResult(user_id=i, for_date=today, generation=generation,
                                                         source="batch") for i in chunk], batch_size=BATCH)
    print(f"  seeded {users:,} due users with a device and a fortune in {time.perf_counter() - started:.1f} s")
    if connection.vendor == "postgresql":
        settle()


def wipe_push() -> None:
    PushDelivery.objects.all().delete()
    PushRun.objects.all().delete()
    PushDevice.objects.all().delete()
    wipe()


def ceiling(*, stub, account: dict, requests: int, concurrency: int) -> float:
    """Messages per second the stub answers to a bare client loop (no database, no claims, no retries)."""
    with httpx2.Client(limits=httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
                       timeout=30) as client:
        credentials = service_account.Credentials.from_service_account_info(account, scopes=[SCOPE])
        credentials.refresh(HttpxRequest(client))
        headers = {"Authorization": f"Bearer {credentials.token}", "Content-Type": "application/json; charset=utf-8"}
        url = f"{stub.base_url}/v1/projects/{account['project_id']}/messages:send"
        form = json.dumps({"message": {"token": "ceiling-" + "x" * 140, "notification": {
            "title": "오늘의 운세 · 72점", "body": "차분하게 하루를 정리하면 좋은 결과가 따릅니다."},
            "data": {"kind": "daily_fortune", "date": "2026-12-07", "score": "72"}}}, ensure_ascii=False).encode()

        def one(_: int) -> int:
            return client.post(url, content=form, headers=headers).status_code

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            codes = list(pool.map(one, range(requests)))
        elapsed = time.perf_counter() - started
    assert codes.count(200) == requests, f"{requests - codes.count(200)} ceiling requests failed"
    return requests / elapsed


def sender(*, stub, account: dict, concurrency: int, page_size: int) -> dict:
    env = {**os.environ, "DATABASE_URL": settings.DATABASE_URL, "DEBUG": "0", "SECRET_KEY": "bench-only-secret-key",
           "LOG_LEVEL": "warning", "FCM_CREDENTIALS": json.dumps(account), "FCM_API_URL": stub.base_url,
           "SLACK_WEBHOOK_URL": "", "DISCORD_WEBHOOK_URL": ""}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    argv = [sys.executable, "manage.py", "send_fortune_notifications", "--concurrency", str(concurrency),
            "--rate", "0", "--page-size", str(page_size)]
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    run = PushRun.objects.order_by("-pk").first()
    return {"wall": wall, "code": done.returncode, "run": run, "out": (done.stdout + done.stderr).strip()[-500:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the stub's answer latency")
    parser.add_argument("--ceiling-requests", type=int, default=20_000)
    args = parser.parse_args()
    if "bench" not in connection.settings_dict["NAME"]:
        sys.exit("refusing: the database name must contain 'bench' (it is wiped)")
    print(f"push benchmark: {args.users:,} due users, concurrency {args.concurrency}, page {args.page_size}, "
          f"stub latency {args.latency_ms:g} ms, {connection.vendor}, {os.cpu_count()} CPUs")
    wipe_push()
    seed(users=args.users)
    with stub_process(latency_ms=args.latency_ms, record=False) as stub:
        account = service_account_info(token_uri=stub.token_uri, project_id="fortuna-bench")
        top = ceiling(stub=stub, account=account, requests=args.ceiling_requests, concurrency=args.concurrency)
        print(f"  stub ceiling (bare httpx2 loop, {args.ceiling_requests:,} requests): {top:,.0f} messages/s")
        stub.reset(config=False)
        result = sender(stub=stub, account=account, concurrency=args.concurrency, page_size=args.page_size)
        counters = stub.counters()
    run = result["run"]
    if result["code"] != 0 or run is None:
        print(f"  the sender failed (exit {result['code']}): {result['out']}")
        return 1
    seconds = (run.finished_at - run.started_at).total_seconds()
    print(f"  sender: {run.sent:,} sent ({counters.get('sent', 0):,} at the stub), {run.failed} failed, "
          f"{run.pages} pages; command wall {result['wall']:.1f} s, run {seconds:.1f} s")
    print(f"  pushes/s: {run.sent / result['wall']:,.0f} over the command's wall time, {run.sent / seconds:,.0f} "
          f"over the run; {run.sent / seconds / top:.0%} of the stub's ceiling")
    return 0


if __name__ == "__main__":
    sys.exit(main())
