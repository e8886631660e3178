"""`--collect-batches` (an hourly cron) while the night is between uploading a Batch API file and
creating its batch: both are real processes; the stub holds the night's batches.create until the
collector has finished. Exactly one OpenAI batch per file."""

import collections
import datetime as dt
import os
import subprocess
import sys

import pytest

from core.models import NightlyRun, OpenAIBatch
from core.nightly.dates import nightly_today
from core.nightly.executors.openai_batch import openai_batch_submit_ahead
from tests.commands.test_generate_daily_fortunes_process import ROOT, _database_url
from tests.factories import users_create_many
from tests.faults.reports import assert_reported, slack_env
from tests.nightly.helpers import eligible_ids, fortune_map
from tests.waiting import WAIT, wait_for

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True)]



def _command(stub, receiver, *args: str) -> subprocess.Popen:
    env = {**os.environ, **stub.env(), "DATABASE_URL": _database_url(), "DJANGO_SETTINGS_MODULE": "tests.settings",
           "PYTHONUNBUFFERED": "1", **slack_env(receiver)}
    return subprocess.Popen([sys.executable, "manage.py", "generate_daily_fortunes", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_collect_during_the_nights_submission_creates_one_batch_per_file(openai_settings, webhook_receiver):
    stub = openai_settings
    users_create_many(count=10, seed=17)
    base = nightly_today()  # the collector resumes against today: the night's file would still qualify
    ahead = base + dt.timedelta(days=2)
    # A batch the collector has work for: tonight's date, submitted two days ago, done.
    openai_batch_submit_ahead(target_date=base, base_date=base - dt.timedelta(days=2))
    stub.batch_configure(hold_next_creates=1, holding=True)  # the night's create: held; any other: not

    night = _command(stub, webhook_receiver, "--date", base.isoformat(), "--batch-ahead", "--workers", "2",
                     "--retry-cooldown", "0")
    try:
        wait_for(lambda: stub.batch_state()["counters"].get("creates_held") == 1,
                  what="the night's batches.create to be under way", proc=night)
        assert OpenAIBatch.objects.get(target_date=ahead).state == "uploaded"
        collect = _command(stub, webhook_receiver, "--collect-batches")
        collected_out, collected_err = collect.communicate(timeout=WAIT)
        stub.batch_configure(holding=False)
        night_out, night_err = night.communicate(timeout=WAIT)
    finally:
        for proc in (night, locals().get("collect")):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert collect.returncode == 0, collected_err[-2000:]
    assert night.returncode == 0, night_err[-2000:]

    batches = stub.batch_state()["batches"]
    per_file = collections.Counter(batch["input_file_id"] for batch in batches)
    assert per_file and set(per_file.values()) == {1}, per_file
    assert len(batches) == 2  # tonight's (collected) and the night's day-ahead one
    row = OpenAIBatch.objects.get(target_date=ahead)
    assert row.state == "submitted" and per_file[row.input_file_id] == 1
    # The collector did its own date's work, and left the night's date to the night.
    assert set(fortune_map(for_date=base)) == eligible_ids()
    assert f"{base}: batch api collect" in collected_out
    assert f"batch api collect {ahead}: skipped, a nightly run holds its lock" in collected_out
    assert_reported(webhook_receiver, NightlyRun.objects.order_by("pk"))  # the night's run; the collector has none
