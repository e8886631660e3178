"""A user deleted and another's birth data changed while the night runs (after planning, before their
rows are written): everyone else stored, the deleted user counted (user_deleted), the edited user's
fortune made from the new birth data (planned again), never from the old."""

import pytest

from tests.faults.night import Night
from tests.nightly.helpers import TARGET

pytestmark = pytest.mark.subprocess

WORKERS = 1
# What DELETE /me and PATCH /me do (core.services.users user_delete, user_update_birth_data), in SQL:
# the edit copies a donor's birth data with the pillars Django derived for it.
DELETE_USER = [
    "DELETE FROM core_fortuneresult WHERE user_id = %(deleted)s",
    "DELETE FROM authtoken_token WHERE user_id = %(deleted)s",
    "DELETE FROM core_user WHERE id = %(deleted)s",
]
BIRTH_FIELDS = ("birth_date_solar", "birth_lunar_year", "birth_lunar_month", "birth_lunar_day",
                "birth_lunar_is_leap_month", "birth_time", "gender", "saju_year", "saju_month", "saju_day", "saju_hour",
                "natal_birth_date", "natal_birth_time", "natal_version")
EDIT_USER = [
    f"UPDATE core_user u SET ({', '.join(BIRTH_FIELDS)}) = (SELECT {', '.join(BIRTH_FIELDS)} FROM core_user "
    f"WHERE id = %(donor)s) WHERE u.id = %(edited)s",
    "DELETE FROM core_fortuneresult WHERE user_id = %(edited)s AND for_date >= CURRENT_DATE",
]


def test_a_user_deleted_and_one_edited_mid_run_cost_nobody_else_and_no_stale_fortune(
        own_postgres, stub_openai, webhook_receiver):
    stub_openai.configure(latency_ms=60)
    night = Night.create(own_postgres, stub_openai, webhook_receiver)
    proc = night.start("--workers", str(WORKERS))
    night.wait_for(lambda: night.stored() > 0, what="the first flush")
    # The last users the run will reach (the plan goes by id): planned already, not yet written.
    deleted, edited = (row[0] for row in night.sql(
        "SELECT u.id FROM core_user u WHERE u.is_active AND u.birth_date_solar IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM core_fortuneresult r WHERE r.user_id = u.id) ORDER BY u.id DESC LIMIT 2"))
    (donor,) = night.sql(
        "SELECT d.id FROM core_user d, core_user e WHERE e.id = %s AND d.is_active AND d.saju_day <> e.saju_day "
        "AND d.saju_year <> e.saju_year AND d.id <> %s ORDER BY d.id LIMIT 1", (edited, deleted))[0]
    night.sql("BEGIN; " + "; ".join(DELETE_USER + EDIT_USER) + "; COMMIT",
              {"deleted": deleted, "edited": edited, "donor": donor})
    assert proc.poll() is None  # the run has not reached them yet

    code, out, err = night.finish(proc)
    assert code == 0, err
    night.check(in_flight=0)
    [(status, stop_reason, generated, failures)] = night.runs()
    assert status == "succeeded", stop_reason
    assert {entry["reason"]: (entry["count"], entry["user_ids"]) for entry in failures} == {
        "user_deleted": (1, [deleted])}
    # The edited user's fortune is read from their new pillars.
    stored = night.sql(
        "SELECT g.content->'saju'->'pillars' FROM core_fortuneresult r JOIN core_fortunegeneration g "
        "ON g.id = r.generation_id WHERE r.user_id = %s AND r.for_date = %s", (edited, TARGET))
    (year, month, day, hour) = night.sql(
        "SELECT saju_year, saju_month, saju_day, saju_hour FROM core_user WHERE id = %s", (edited,))[0]
    assert stored == [({"year": year, "month": month, "day": day, "hour": hour or None},)]
    notes = night.value("SELECT notes FROM core_nightlyrun")
    assert "planned 1 users again" in notes
