"""The served-fortune view (core.models.ServedFortune) against the same read through FortuneResult."""

import datetime as dt
import json

import pytest
from django.db import DatabaseError, transaction
from django.db.models import TextField
from django.db.models.functions import Cast

from core.models import FortuneGeneration, FortuneResult, ServedFortune
from tests.factories import users_create_many

pytestmark = pytest.mark.django_db

DAY = dt.date(2026, 12, 2)
COLUMNS = ("id", "user_id", "for_date", "generation_id", "source", "generated_at", "content_json")


def _through_the_tables():
    return set(
        FortuneResult.objects.values_list(
            "id", "user_id", "for_date", "generation_id", "source", "generation__created_at",
            Cast("generation__content", TextField()),
        )
    )


def _fortunes_store():
    """Results over two days: some users share a generation, one holds an on-demand one of its own."""
    users = users_create_many(count=5, seed=3)
    shared = FortuneGeneration.objects.create(
        input_hash="a" * 64, for_date=DAY, provider="local",
        content={"summary": "함께 쓰는 운세", "lucky": {"number": 7}, "quote": 'say "hi"\n'},
    )
    own = FortuneGeneration.objects.create(
        input_hash="b" * 64, for_date=DAY, provider="openai", content={"summary": "혼자", "list": [1, 2.5, None]},
        created_at=dt.datetime(2026, 12, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
    )
    later = FortuneGeneration.objects.create(
        input_hash="c" * 64, for_date=DAY + dt.timedelta(days=1), provider="local", content={"summary": "내일"},
    )
    for user in users[:3]:
        FortuneResult.objects.create(user=user, for_date=DAY, generation=shared, source="batch")
    FortuneResult.objects.create(user=users[3], for_date=DAY, generation=own, source="on_demand")
    FortuneResult.objects.create(user=users[0], for_date=DAY + dt.timedelta(days=1), generation=later, source="batch")
    return users


def test_the_view_holds_every_result_once_with_its_generation():
    _fortunes_store()
    served = set(ServedFortune.objects.values_list(*COLUMNS))
    assert served == _through_the_tables()
    assert len(served) == FortuneResult.objects.count() == 5


def test_content_comes_back_as_json_text_of_what_was_stored():
    _fortunes_store()
    for row in ServedFortune.objects.all():
        assert isinstance(row.content_json, str)
        assert json.loads(row.content_json) == FortuneGeneration.objects.get(pk=row.generation_id).content


def test_the_view_follows_every_write():
    users = _fortunes_store()
    result = FortuneResult.objects.get(user=users[3], for_date=DAY)
    replacement = FortuneGeneration.objects.create(input_hash="d" * 64, for_date=DAY, provider="local",
                                                   content={"summary": "다시"})
    FortuneResult.objects.filter(pk=result.pk).update(generation=replacement, source="batch")
    FortuneResult.objects.filter(user=users[1]).delete()
    assert set(ServedFortune.objects.values_list(*COLUMNS)) == _through_the_tables()
    assert ServedFortune.objects.get(pk=result.pk).generation_id == replacement.pk
    assert not ServedFortune.objects.filter(user_id=users[1].pk).exists()


def test_it_cannot_be_written_through():
    users = _fortunes_store()
    with pytest.raises(DatabaseError), transaction.atomic():
        ServedFortune.objects.filter(user_id=users[0].pk).delete()
    assert set(ServedFortune.objects.values_list(*COLUMNS)) == _through_the_tables()
