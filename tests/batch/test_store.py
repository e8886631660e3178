import pytest

from core.batch.plan import batch_plan_pages
from core.batch.store import GeneratedItem, batch_output_store, fortune_results_store_many, generations_store_many
from core.fortunes.providers import get_provider
from core.models import FortuneGeneration, FortuneResult
from tests.batch.helpers import TARGET, fortune_map
from tests.factories import user_create, users_create_many

pytestmark = pytest.mark.django_db


def _items(users_page):
    provider = get_provider(name="local")
    return [
        GeneratedItem(inp=group.inp, hash=digest, generated=provider.generate(group.inp))
        for digest, group in users_page.groups.items()
    ]


def test_generations_are_stored_once_per_hash_and_ids_come_back(django_assert_max_num_queries):
    users_create_many(count=6, seed=1)
    (page,) = batch_plan_pages(target_date=TARGET, generator="local")
    items = _items(page)
    with django_assert_max_num_queries(4):
        ids = generations_store_many(items=items, provider="local", model="")
    assert set(ids) == {item.hash for item in items}
    again = generations_store_many(items=items, provider="local", model="")
    assert again == ids
    assert FortuneGeneration.objects.count() == len(items)


def test_results_insert_never_overwrites_unless_replace():
    user = user_create()
    (page,) = batch_plan_pages(target_date=TARGET, generator="local")
    (item,) = _items(page)
    ids = generations_store_many(items=[item], provider="local", model="")
    other = FortuneGeneration.objects.create(input_hash="x" * 64, for_date=TARGET, content={}, provider="local")

    fortune_results_store_many(pairs=[(user.pk, ids[item.hash])], for_date=TARGET)
    fortune_results_store_many(pairs=[(user.pk, other.pk)], for_date=TARGET)
    assert fortune_map() == {user.pk: ids[item.hash]}

    fortune_results_store_many(pairs=[(user.pk, other.pk)], for_date=TARGET, replace=True)
    assert fortune_map() == {user.pk: other.pk}
    assert FortuneResult.objects.count() == 1


def test_one_flush_stores_results_for_waiting_and_reused_users(django_assert_max_num_queries):
    twins = [user_create() for _ in range(3)]
    (page,) = batch_plan_pages(target_date=TARGET, generator="local")
    (item,) = _items(page)
    with django_assert_max_num_queries(8):  # independent of the number of users
        ids, stored = batch_output_store(items=[item], reused=[], waiting={item.hash: [t.pk for t in twins[:2]]},
                                         for_date=TARGET, provider="local", model="")
    _, stored_reused = batch_output_store(items=[], reused=[(twins[2].pk, ids[item.hash])], waiting={},
                                          for_date=TARGET, provider="local", model="")
    assert (stored, stored_reused) == (2, 1)
    assert fortune_map() == {t.pk: ids[item.hash] for t in twins}
