"""Realistic demo users for local runs and benchmarks: bulk inserts, no per-user password hashing."""

import datetime as dt
import random

from django.contrib.auth.hashers import make_password
from django.db import transaction

from core import saju
from core.models import User
from core.services.natal import natal_fields

SURNAMES = "김이박최정강조윤장임한오서신권황안송류홍"
GIVEN = ["민준", "서연", "도윤", "지우", "하준", "서윤", "예준", "하은", "시우", "지민", "주원", "수아", "지호", "채원"]


def demo_users_create(*, count: int, seed: int = 2026, batch_size: int = 2000) -> int:
    """Create `count` demo users: births 1950–2010, ~10% inactive, ~5% without a birth date,
    about half with an unknown birth time, ~10% entered as Korean lunar dates. Returns how many."""
    rng = random.Random(seed)
    unusable = make_password(None)
    start = User.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    first_day, span = dt.date(1950, 1, 1), (dt.date(2010, 12, 31) - dt.date(1950, 1, 1)).days
    created = 0
    while created < count:
        rows = []
        for i in range(created, min(count, created + batch_size)):
            n = start + i + 1
            user = User(
                username=f"demo{n}",
                email=f"demo{n}@example.com",
                first_name=rng.choice(GIVEN),
                last_name=rng.choice(SURNAMES),
                password=unusable,
                is_active=rng.random() >= 0.10,
                gender=rng.choice("MF"),
            )
            if rng.random() >= 0.05:
                _demo_birth_data(user=user, rng=rng, first_day=first_day, span=span)
            for name, value in natal_fields(birth_date=user.birth_date_solar, birth_time=user.birth_time).items():
                setattr(user, name, value)
            rows.append(user)
        with transaction.atomic():
            User.objects.bulk_create(rows)
        created += len(rows)
    return created


def _demo_birth_data(*, user: User, rng: random.Random, first_day: dt.date, span: int) -> None:
    if rng.random() < 0.5:
        user.birth_time = dt.time(rng.randrange(24), rng.randrange(0, 60, 5))
    if rng.random() < 0.10:
        while True:
            year, month, day = rng.randrange(1950, 2010), rng.randrange(1, 13), rng.randrange(1, 31)
            try:
                user.birth_date_solar = saju.lunar_to_solar(year=year, month=month, day=day)
            except saju.InvalidBirthData:
                continue
            user.birth_lunar_year, user.birth_lunar_month, user.birth_lunar_day = year, month, day
            return
    user.birth_date_solar = first_day + dt.timedelta(days=rng.randrange(span + 1))
