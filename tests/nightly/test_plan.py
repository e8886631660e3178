import datetime as dt

import pytest

from core.fortunes.providers import get_provider
from core.models import User
from core.nightly.plan import (
    USER_INACTIVE,
    USER_NO_BIRTH_DATE,
    USER_NOT_FOUND,
    UserNotEligible,
    nightly_plan_counts,
    nightly_plan_pages,
    nightly_user_check,
)
from core.nightly.store import GeneratedItem, nightly_output_store
from tests.factories import user_create, users_create_many
from tests.nightly.helpers import TARGET

pytestmark = pytest.mark.django_db


def _all_pages(**kwargs):
    return list(nightly_plan_pages(target_date=TARGET, generator="local", **kwargs))


def test_pages_cover_every_eligible_user_once_and_no_one_else():
    users = users_create_many(count=23, seed=3)
    inactive = user_create(is_active=False)
    no_birth = user_create(birth_date_solar=None)
    pages = _all_pages(page_size=5)
    assert len(pages) == 5
    planned = [uid for page in pages for group in page.groups.values() for uid in group.user_ids]
    assert sorted(planned) == sorted(u.pk for u in users)
    assert inactive.pk not in planned and no_birth.pk not in planned


def test_users_with_equal_inputs_share_one_group():
    twins = [user_create(birth_date_solar=dt.date(1988, 8, 8), gender="M") for _ in range(3)]
    other = user_create(birth_date_solar=dt.date(1988, 8, 8), gender="F")
    (page,) = _all_pages()
    by_user = {uid: digest for digest, group in page.groups.items() for uid in group.user_ids}
    assert len({by_user[u.pk] for u in twins}) == 1
    assert by_user[other.pk] != by_user[twins[0].pk]
    assert page.users == 4 and len(page.groups) == 2


def test_users_with_a_fortune_are_skipped_unless_forced():
    done, todo = user_create(), user_create(birth_date_solar=dt.date(1970, 1, 2))
    (page,) = _all_pages()
    group = next(g for g in page.groups.values() if done.pk in g.user_ids)
    generated = get_provider(name="local").generate(group.inp)
    digest = group.inp.hash
    nightly_output_store(items=[GeneratedItem(inp=group.inp, hash=digest, generated=generated)], reused=[],
                       waiting={digest: [done.pk]}, for_date=TARGET, provider="local", model="")

    (page,) = _all_pages()
    assert [uid for g in page.groups.values() for uid in g.user_ids] == [todo.pk]
    assert page.already_present == 1
    assert nightly_plan_counts(target_date=TARGET).already_present == 1

    (forced,) = _all_pages(force=True, nonce="n1")
    assert sorted(uid for g in forced.groups.values() for uid in g.user_ids) == sorted([done.pk, todo.pk])
    assert all(g.inp.nonce == "n1" for g in forced.groups.values())
    assert digest not in forced.groups  # a nonce gives a new hash, so the old generation stays shared


def test_dry_run_plan_computes_stale_pillars_in_memory_without_writing():
    user = user_create()
    User.objects.filter(pk=user.pk).update(saju_year="", saju_month="", saju_day="", natal_version=None)
    (page,) = _all_pages()
    assert page.unplannable == [user.pk]  # without the refresh the row has no pillars
    (page,) = _all_pages(compute_stale_natal=True)
    (group,) = page.groups.values()
    assert group.inp.day == user.saju_day
    assert User.objects.get(pk=user.pk).saju_day == ""


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: None, USER_NOT_FOUND),
        (lambda: user_create(is_active=False), USER_INACTIVE),
        (lambda: user_create(birth_date_solar=None), USER_NO_BIRTH_DATE),
    ],
)
def test_user_check_says_why(make, message):
    user = make()
    user_id = user.pk if user else 999_999
    with pytest.raises(UserNotEligible) as err:
        nightly_user_check(user_id=user_id)
    assert str(err.value) == message.format(user_id=user_id)


def test_user_check_accepts_an_eligible_user():
    nightly_user_check(user_id=user_create().pk)
