"""Plan a batch: who is eligible, who still needs a fortune, and which generation inputs they need.

Users are read in keyset pages of plain rows (no model instances), so memory stays bounded at a
million users; each page is grouped by generation-input hash, so users sharing an input share one
generation.
"""

import dataclasses
import datetime as dt
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.db.models import Exists, OuterRef, QuerySet

from core.fortunes.inputs import GenerationInput
from core.models import FortuneResult, User
from core.resilience import db_call
from core.services.natal import natal_fields, user_list_natal_stale

PAGE_SIZE = 5000
USER_NOT_FOUND = "User {user_id} does not exist."
USER_INACTIVE = "User {user_id} is inactive: the batch only makes fortunes for active users."
USER_NO_BIRTH_DATE = "User {user_id} has no birth date (birth_date_solar is empty): set it before generating."

_ROW_FIELDS = ("pk", "saju_year", "saju_month", "saju_day", "saju_hour", "gender")


class UserNotEligible(Exception):
    pass


@dataclass(slots=True)
class InputGroup:
    inp: GenerationInput
    user_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class PlanPage:
    groups: dict[str, InputGroup]  # input hash -> the input and the users who need it
    users: int  # users in this page that need a fortune
    already_present: int
    unplannable: list[int]  # users whose natal pillars could not be computed


@dataclass(frozen=True, slots=True)
class PlanCounts:
    eligible: int
    already_present: int


def nightly_user_check(*, user_id: int) -> None:
    """Raise UserNotEligible saying why this user cannot get a batch fortune."""
    row = db_call(lambda: User.objects.filter(pk=user_id).values("is_active", "birth_date_solar").first(),
                  what="checking the user")
    if row is None:
        raise UserNotEligible(USER_NOT_FOUND.format(user_id=user_id))
    if not row["is_active"]:
        raise UserNotEligible(USER_INACTIVE.format(user_id=user_id))
    if row["birth_date_solar"] is None:
        raise UserNotEligible(USER_NO_BIRTH_DATE.format(user_id=user_id))


def nightly_eligible_users(*, user_id: int | None = None) -> QuerySet:
    users = User.objects.eligible()
    return users.filter(pk=user_id) if user_id is not None else users


def nightly_plan_counts(*, target_date: dt.date, user_id: int | None = None) -> PlanCounts:
    users = nightly_eligible_users(user_id=user_id)
    present = users.filter(Exists(FortuneResult.objects.filter(user=OuterRef("pk"), for_date=target_date)))
    return db_call(lambda: PlanCounts(eligible=users.count(), already_present=present.count()),
                   what="counting eligible users")


def nightly_plan_pages(
    *,
    target_date: dt.date,
    generator: str,
    force: bool = False,
    nonce: str = "",
    user_id: int | None = None,
    page_size: int = PAGE_SIZE,
    compute_stale_natal: bool = False,
    language: str = "ko",
    user_ids: list[int] | None = None,
) -> Iterator[PlanPage]:
    """Yield the eligible users page by page, grouped by generation input.

    Users who already have a fortune for target_date are left out unless force. compute_stale_natal
    (for --dry-run, which must not write) computes missing or stale pillars in memory instead of
    relying on users_refresh_natal() having stored them. user_ids: only these users (planned again).
    Each page is read through the database retry policy: a restart mid-plan re-reads that page.
    """
    last_pk = 0
    users = nightly_eligible_users(user_id=user_id).order_by("pk")
    if user_ids is not None:
        users = users.filter(pk__in=user_ids)
    while True:
        rows, present, stale_rows = db_call(
            functools.partial(_page_read, users=users, after=last_pk, target_date=target_date, page_size=page_size,
                              compute_stale_natal=compute_stale_natal),
            what="reading a page of the plan",
        )
        if not rows:
            return
        last_pk = rows[-1].pk
        groups, needed, unplannable = _page_groups(
            rows=rows, present=set() if force else present, stale=_stale_fields(stale_rows),
            target_date=target_date, generator=generator, language=language, nonce=nonce)
        yield PlanPage(groups=groups, users=needed, already_present=len(present), unplannable=unplannable)


def _stale_fields(stale_rows: list[tuple]) -> dict[int, dict]:
    """Natal fields computed in memory for rows whose stored pillars are missing or stale (dry run)."""
    stale: dict[int, dict] = {}
    for pk, birth_date, birth_time in stale_rows:
        try:
            stale[pk] = natal_fields(birth_date=birth_date, birth_time=birth_time)
        except Exception:  # noqa: BLE001 - an invalid row is reported as unplannable
            stale[pk] = {"saju_day": ""}
    return stale


def _page_groups(*, rows: list, present: set[int], stale: dict[int, dict], target_date: dt.date, generator: str,
                 language: str, nonce: str) -> tuple[dict[str, InputGroup], int, list[int]]:
    """The page's users who need a fortune, grouped by input hash: (groups, users needed, unplannable)."""
    groups: dict[str, InputGroup] = {}
    # Users in one page often share an input; building and hashing it once per distinct key is
    # most of the planning cost.
    by_key: dict[tuple, InputGroup] = {}
    unplannable: list[int] = []
    needed = 0
    for row in rows:
        if row.pk in present:
            continue
        if row.pk in stale:
            row = row._replace(**{k: stale[row.pk].get(k, "") for k in _ROW_FIELDS[1:5]})
        if not row.saju_day:
            unplannable.append(row.pk)
            continue
        needed += 1
        key = (row.saju_year, row.saju_month, row.saju_day, row.saju_hour, row.gender)
        group = by_key.get(key)
        if group is None:
            inp = GenerationInput.for_user(user=row, for_date=target_date, generator=generator, language=language)
            if nonce:
                inp = dataclasses.replace(inp, nonce=nonce)
            group = by_key[key] = groups.setdefault(inp.hash, InputGroup(inp=inp))
        group.user_ids.append(row.pk)
    return groups, needed, unplannable


def _page_read(*, users: QuerySet, after: int, target_date: dt.date, page_size: int, compute_stale_natal: bool
               ) -> tuple[list, set[int], list[tuple]]:
    """One page's queries: its users, those with a fortune already, and (dry run) those with stale pillars."""
    rows = list(users.filter(pk__gt=after).values_list(*_ROW_FIELDS, named=True)[:page_size])
    if not rows:
        return [], set(), []
    first, last = rows[0].pk, rows[-1].pk
    present = set(
        FortuneResult.objects.filter(for_date=target_date, user_id__gte=first, user_id__lte=last)
        .values_list("user_id", flat=True)
    )
    stale_rows = []
    if compute_stale_natal:
        stale_rows = list(user_list_natal_stale().filter(pk__gte=first, pk__lte=last)
                          .values_list("pk", "birth_date_solar", "birth_time"))
    return rows, present, stale_rows
