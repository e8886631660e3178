import datetime as dt

import pytest
from django.db import OperationalError, connection

from core import resilience
from core.fortunes.providers import Generated, get_provider
from core.models import FortuneGeneration, FortuneResult
from core.nightly import store
from core.nightly.plan import nightly_plan_pages
from core.nightly.store import (
    Flush,
    GeneratedItem,
    ResultWriter,
    fortune_results_write_many,
    generations_store_many,
    nightly_output_store,
    nightly_output_write,
)
from core.services.users import user_delete, user_update_birth_data
from tests.factories import user_create, users_create_many
from tests.nightly.helpers import TARGET, fortune_map

pytestmark = pytest.mark.django_db


def _items(users_page):
    provider = get_provider(name="local")
    return [
        GeneratedItem(inp=group.inp, hash=digest, generated=provider.generate(group.inp))
        for digest, group in users_page.groups.items()
    ]


def test_generations_are_stored_once_per_hash_and_ids_come_back(django_assert_max_num_queries):
    users_create_many(count=6, seed=1)
    (page,) = nightly_plan_pages(target_date=TARGET, generator="local")
    items = _items(page)
    with django_assert_max_num_queries(4):
        ids = generations_store_many(items=items, provider="local", model="")
    assert set(ids) == {item.hash for item in items}
    again = generations_store_many(items=items, provider="local", model="")
    assert again == ids
    assert FortuneGeneration.objects.count() == len(items)


def test_results_insert_never_overwrites_unless_replace():
    user = user_create()
    (page,) = nightly_plan_pages(target_date=TARGET, generator="local")
    (item,) = _items(page)
    ids = generations_store_many(items=[item], provider="local", model="")
    other = FortuneGeneration.objects.create(input_hash="x" * 64, for_date=TARGET, content={}, provider="local")

    fortune_results_write_many(pairs=[(user.pk, ids[item.hash])], for_date=TARGET)
    fortune_results_write_many(pairs=[(user.pk, other.pk)], for_date=TARGET)
    assert fortune_map() == {user.pk: ids[item.hash]}

    fortune_results_write_many(pairs=[(user.pk, other.pk)], for_date=TARGET, replace=True)
    assert fortune_map() == {user.pk: other.pk}
    assert FortuneResult.objects.count() == 1


def test_one_flush_stores_results_for_waiting_and_reused_users(django_assert_max_num_queries):
    twins = [user_create() for _ in range(3)]
    (page,) = nightly_plan_pages(target_date=TARGET, generator="local")
    (item,) = _items(page)
    with django_assert_max_num_queries(8):  # independent of the number of users
        ids, stored = nightly_output_store(items=[item], reused=[], waiting={item.hash: [t.pk for t in twins[:2]]},
                                         for_date=TARGET, provider="local", model="")
    _, stored_reused = nightly_output_store(items=[], reused=[(twins[2].pk, ids[item.hash])], waiting={},
                                          for_date=TARGET, provider="local", model="")
    assert (stored, stored_reused) == (2, 1)
    assert fortune_map() == {t.pk: ids[item.hash] for t in twins}


# --- the writer thread ------------------------------------------------------------------------------
# transaction=True: the writer thread's own connection must see the users (committed data).

@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("threaded", [True, False])
def test_writer_stores_each_flush_and_reports_ids_and_counts(threaded):
    users = users_create_many(count=8, seed=3)
    (page,) = nightly_plan_pages(target_date=TARGET, generator="local")
    items = _items(page)
    first, second = items[: len(items) // 2], items[len(items) // 2 :]
    writer = ResultWriter(for_date=TARGET, provider="local", model="", replace=False, threaded=threaded)
    try:
        flushes = [Flush(items=part, reused=[], waiting={i.hash: page.groups[i.hash].user_ids for i in part})
                   for part in (first, second)]
        for flush in flushes:
            writer.submit(flush)
        done = writer.done(wait=True)
    finally:
        writer.close()
    assert done == flushes and writer.outstanding == 0
    stored_ids = dict(FortuneGeneration.objects.values_list("input_hash", "id"))
    assert {h: i for f in done for h, i in f.ids.items()} == stored_ids
    assert sum(f.stored for f in done) == len(users)
    assert set(fortune_map()) == {u.pk for u in users}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("threaded", [True, False])
def test_a_writer_failure_is_raised_to_the_caller_and_never_hangs(monkeypatch, threaded):
    users_create_many(count=4, seed=5)
    (page,) = nightly_plan_pages(target_date=TARGET, generator="local")
    items = _items(page)

    def broken(**kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store, "nightly_output_write", broken)
    writer = ResultWriter(for_date=TARGET, provider="local", model="", replace=False, threaded=threaded)
    try:
        with pytest.raises(RuntimeError, match="disk on fire"):
            # More flushes than the queue holds: a dead writer must not leave submit() blocked.
            for _ in range(store.WRITER_QUEUE + 3):
                writer.submit(Flush(items=items, reused=[], waiting={}))
            writer.done(wait=True)
    finally:
        writer.close()
    assert FortuneGeneration.objects.count() == 0


def test_generations_with_awkward_characters_round_trip():
    user_create()
    (page,) = nightly_plan_pages(target_date=TARGET, generator="local")
    (item,) = _items(page)
    awkward = item.generated.content.model_copy(update={"advice": 'tab\there, "quote", back\\slash\nnew line \r'})
    ids = generations_store_many(items=[GeneratedItem(inp=item.inp, hash=item.hash, generated=Generated(
        content=awkward, tokens_in=1, tokens_out=2))], provider="local", model="")
    stored = FortuneGeneration.objects.get(pk=ids[item.hash])
    assert stored.content == awkward.as_json()
    assert (stored.tokens_in, stored.tokens_out) == (1, 2)


def test_ids_come_back_without_insert_returning(monkeypatch):
    # SQLite before 3.35 has no RETURNING: every id then comes from the look-up.
    monkeypatch.setattr(type(connection.features), "can_return_rows_from_bulk_insert", False)
    users_create_many(count=4, seed=6)
    (page,) = nightly_plan_pages(target_date=TARGET, generator="local")
    items = _items(page)
    ids = generations_store_many(items=items, provider="local", model="")
    assert ids == dict(FortuneGeneration.objects.values_list("input_hash", "id"))
    assert set(ids) == {item.hash for item in items}


def test_a_flush_skips_users_deleted_or_changed_since_planning_and_names_them():
    users = users_create_many(count=6, seed=8)
    (page,) = nightly_plan_pages(target_date=TARGET, generator="local")
    items = _items(page)
    waiting = {digest: group.user_ids for digest, group in page.groups.items()}
    gone, changed = users[0].pk, users[1]
    user_delete(user=users[0])  # DELETE /me between planning and writing
    user_update_birth_data(user=changed, data={"birth_date_solar": dt.date(1950, 1, 1)
                                               if changed.birth_date_solar != dt.date(1950, 1, 1)
                                               else dt.date(1960, 6, 6)})  # PATCH /me
    written = nightly_output_write(items=items, reused=[], waiting=waiting, for_date=TARGET, provider="local", model="")
    assert (written.results.gone, written.results.changed) == ([gone], [changed.pk])
    assert set(fortune_map()) == {user.pk for user in users[2:]}
    assert written.results.stored == 4


@pytest.mark.django_db(transaction=True)  # the retry needs the writer outside any transaction
@pytest.mark.parametrize("threaded", [True, False])
def test_a_flush_that_meets_a_broken_connection_is_written_on_the_next_attempt(monkeypatch, threaded):
    users_create_many(count=4, seed=5)
    (page,) = nightly_plan_pages(target_date=TARGET, generator="local")
    items = _items(page)
    real, calls = store.nightly_output_write, []

    def once_broken(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real(**kwargs)

    monkeypatch.setattr(store, "nightly_output_write", once_broken)
    monkeypatch.setattr(resilience.database, "DB_BASE_DELAY", 0.01)
    writer = ResultWriter(for_date=TARGET, provider="local", model="", replace=False, threaded=threaded)
    try:
        writer.submit(Flush(items=items, reused=[], waiting={i.hash: page.groups[i.hash].user_ids for i in items}))
        (flush,) = writer.done(wait=True)
    finally:
        writer.close()
    assert len(calls) == 2 and flush.stored == 4 and len(fortune_map()) == 4
