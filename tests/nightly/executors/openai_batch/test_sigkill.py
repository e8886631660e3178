"""The Batch API services in a real process killed by SIGKILL at a step boundary, then resumed here."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from core.models import FortuneGeneration, FortuneResult, OpenAIBatch
from core.nightly.executors.openai_batch import openai_batch_collect, openai_batch_submit_ahead
from tests.commands.test_generate_daily_fortunes_process import ROOT, _database_url
from tests.factories import users_create_many
from tests.nightly.executors.openai_batch.test_day_ahead import AHEAD, _hash_users
from tests.nightly.helpers import BASE, eligible_ids, fortune_map

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True)]

SCRIPT = """
import datetime as dt, os, signal
import django
django.setup()
from core.nightly.executors import openai_batch
from tests.nightly.executors.openai_batch.crash import crash_patches

for target, name, value in crash_patches({point!r}, lambda: os.kill(os.getpid(), signal.SIGKILL)):
    setattr(target, name, value)
openai_batch.{call}(**{kwargs})
"""


def _killed_at(stub, *, point: str, call: str, kwargs: str) -> None:
    env = {**os.environ, **stub.env(), "DATABASE_URL": _database_url(), "DJANGO_SETTINGS_MODULE": "tests.settings"}
    script = textwrap.dedent(SCRIPT.format(point=point, call=call, kwargs=kwargs))
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr


@pytest.fixture
def users(openai_settings):
    return users_create_many(count=20, seed=8)


@pytest.mark.parametrize("point", ["uploaded", "created"])
def test_sigkill_between_upload_and_create_then_resume_creates_one_batch(users, openai_settings, point):
    kwargs = f"dict(target_date=dt.date.fromisoformat({AHEAD.isoformat()!r}), base_date=dt.date.fromisoformat(" \
             f"{BASE.isoformat()!r}))"
    _killed_at(openai_settings, point=point, call="openai_batch_submit_ahead", kwargs=kwargs)
    assert OpenAIBatch.objects.get().state == ("planned" if point == "uploaded" else "uploaded")

    again = openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    assert again.batches_created == 0 and again.already_submitted == len(users)
    assert openai_settings.batch_state()["counters"]["batches_created"] == 1
    openai_batch_collect()
    assert set(fortune_map(for_date=AHEAD)) == eligible_ids()


def test_sigkill_mid_collect_then_resume_stores_everyone_once(users, openai_settings):
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    _killed_at(openai_settings, point="stored_page", call="openai_batch_collect", kwargs="dict(page_size=4)")
    assert 0 < FortuneResult.objects.filter(for_date=AHEAD).count() < len(users)
    openai_batch_collect()
    assert set(fortune_map(for_date=AHEAD)) == eligible_ids()
    assert FortuneResult.objects.filter(for_date=AHEAD).count() == len(users)
    assert FortuneGeneration.objects.filter(for_date=AHEAD).count() == len(_hash_users(users))
