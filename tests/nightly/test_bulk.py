"""PostgreSQL's bulk statements against the plain ORM reference: the same data, the same outcome."""

import pytest
from django.db import connection, transaction

from core.fortunes.providers import Generated, get_provider
from core.models import FortuneGeneration, FortuneResult
from core.nightly import bulk
from core.nightly.plan import nightly_plan_pages
from core.nightly.store import GeneratedItem
from tests.factories import users_create_many
from tests.nightly.helpers import TARGET

pytestmark = pytest.mark.django_db

ON_POSTGRESQL = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL's statements need PostgreSQL; the ORM reference runs anyway"
)
IMPLEMENTATIONS = [
    pytest.param(bulk.ORM, id="orm"), pytest.param(bulk.POSTGRESQL, id="postgresql", marks=ON_POSTGRESQL),
]


def _items(page) -> list[GeneratedItem]:
    provider = get_provider(name="local")
    return [GeneratedItem(inp=group.inp, hash=digest, generated=provider.generate(group.inp))
            for digest, group in page.groups.items()]


def _generations() -> dict[str, tuple]:
    return {row[0]: row[1:] for row in FortuneGeneration.objects.values_list(
        "input_hash", "for_date", "content", "provider", "model", "tokens_in", "tokens_out")}


def _results() -> dict[int, tuple]:
    return {user_id: (digest, source) for user_id, digest, source in FortuneResult.objects.values_list(
        "user_id", "generation__input_hash", "source")}


@pytest.fixture
def scenario():
    """Users planned into items; one item's hash already stored (other content), one user already served."""
    users_create_many(count=12, seed=11)
    (page,) = nightly_plan_pages(target_date=TARGET, generator="local")
    items = _items(page)
    stored_before = FortuneGeneration.objects.create(
        input_hash=items[0].hash, for_date=TARGET, content={"stored": "before"}, provider="earlier", tokens_in=9
    )
    served_user = page.groups[items[-1].hash].user_ids[0]
    other = FortuneGeneration.objects.create(input_hash="o" * 64, for_date=TARGET, content={}, provider="earlier")
    FortuneResult.objects.create(user_id=served_user, for_date=TARGET, generation=other, source="on_demand")
    pairs_by_hash = {digest: group.user_ids for digest, group in page.groups.items()}
    keys = {digest: bulk.natal_key_of_input(group.inp) for digest, group in page.groups.items()}
    # A user planned with other birth data than they have now (changed since planning).
    changed_user = page.groups[items[1].hash].user_ids[0]
    keys_by_user = {user_id: "other|key" if user_id == changed_user else keys[digest]
                    for digest, user_ids in pairs_by_hash.items() for user_id in user_ids}
    return dict(items=items, pairs_by_hash=pairs_by_hash, served_user=served_user, stored_before=stored_before,
                keys_by_user=keys_by_user, changed_user=changed_user)


GONE_USER = 987654  # planned, then deleted before the write


def _run(impl: bulk.OrmBulk, *, items, pairs_by_hash, served_user, stored_before, keys_by_user, changed_user) -> dict:
    """Every operation on the scenario; the outcome, then everything rolled back."""
    hashes = [item.hash for item in items]
    with transaction.atomic():
        impl.flush_begin()
        found_before = impl.generation_ids(hashes=[*hashes, "u" * 64])
        inserted = impl.generations_insert(items=items, provider="local", model="m",
                                           prepared=impl.generations_prepare(items=items))
        ids = impl.generation_ids(hashes=hashes)
        pairs = [(user_id, ids[digest]) for digest, user_ids in pairs_by_hash.items() for user_id in user_ids]
        keyed = [(user_id, generation_id, keys_by_user[user_id]) for user_id, generation_id in pairs]
        written = impl.results_insert(pairs=[*keyed, (GONE_USER, ids[items[0].hash], None)], for_date=TARGET,
                                      replace=False, source="batch")
        after_insert = _results()
        replaced = impl.results_insert(pairs=pairs[:3] + [(served_user, ids[items[0].hash])], for_date=TARGET,
                                       replace=True, source="batch")
        outcome = dict(
            found_before=found_before == {items[0].hash: stored_before.pk},
            inserted_known=all(ids[digest] == pk for digest, pk in inserted.items()),
            inserted_new_only=items[0].hash not in inserted,
            generations=_generations(), after_insert=after_insert, after_replace=_results(),
            written=written, replaced=replaced,
        )
        transaction.set_rollback(True)
    return outcome


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_each_implementation_does_what_the_store_promises(impl, scenario):
    outcome = _run(impl, **scenario)
    items, served = scenario["items"], scenario["served_user"]
    assert outcome["found_before"] and outcome["inserted_known"] and outcome["inserted_new_only"]
    generations = outcome["generations"]
    assert set(generations) == {item.hash for item in items} | {"o" * 64}
    assert generations[items[0].hash][1:3] == ({"stored": "before"}, "earlier")  # an existing hash is kept
    for item in items[1:]:
        assert generations[item.hash] == (TARGET, item.generated.content.as_json(), "local", "m",
                                          item.generated.tokens_in, item.generated.tokens_out)
    users = [user_id for user_ids in scenario["pairs_by_hash"].values() for user_id in user_ids]
    # The served user's row is left alone; the deleted and the changed user are skipped and named.
    assert outcome["written"] == bulk.ResultsWritten(stored=len(users) - 2, gone=[GONE_USER],
                                                     changed=[scenario["changed_user"]])
    assert scenario["changed_user"] not in outcome["after_insert"]
    assert outcome["after_insert"][served] == ("o" * 64, "on_demand")
    assert outcome["replaced"].stored == 4  # without a natal key a row is checked for its user only
    assert outcome["after_replace"][served] == (items[0].hash, "batch")


@ON_POSTGRESQL
def test_postgresql_statements_give_the_orm_references_outcome(scenario):
    assert _run(bulk.POSTGRESQL, **scenario) == _run(bulk.ORM, **scenario)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_lookups_span_more_hashes_than_one_batch(impl):
    stored = FortuneGeneration.objects.bulk_create(
        [FortuneGeneration(input_hash=f"{n:064x}", for_date=TARGET, content={}, provider="local") for n in range(3)]
    )
    hashes = [f"{n:064x}" for n in range(bulk.LOOKUP_BATCH + 500)][::-1]
    expected = {generation.input_hash: generation.pk for generation in FortuneGeneration.objects.all()}
    assert impl.generation_ids(hashes=hashes) == expected == bulk.ORM.generation_ids(hashes=hashes)
    assert len(expected) == len(stored)


@ON_POSTGRESQL
@pytest.mark.django_db(transaction=True)  # SET LOCAL lasts to the end of the outermost transaction
def test_a_postgresql_flush_commits_without_waiting_for_the_wal_only_inside_its_transaction():
    def setting() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            return cursor.fetchone()[0]

    before = setting()
    with transaction.atomic():
        bulk.POSTGRESQL.flush_begin()
        assert setting() == "off"
    assert setting() == before != "off"


def test_copy_fields_escape_what_would_end_a_field_or_a_row():
    assert bulk._copy_field("a\\b\tc\nd\re") == "a\\\\b\\tc\\nd\\re"
    assert bulk._copy_field(None) == "\\N"
    assert bulk._copy_field(7) == "7"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_awkward_characters_round_trip_through_each_implementation(impl, scenario):
    item = scenario["items"][1]
    awkward = item.generated.content.model_copy(update={"advice": 'tab\there, "quote", back\\slash\nnew line \r'})
    odd = GeneratedItem(inp=item.inp, hash="a" * 64, generated=Generated(content=awkward, tokens_in=1, tokens_out=2))
    impl.generations_insert(items=[odd], provider="local", model="", prepared=impl.generations_prepare(items=[odd]))
    assert FortuneGeneration.objects.get(input_hash="a" * 64).content == awkward.as_json()
