import datetime as dt
import random

from core.models import User

_counter = iter(range(1, 10**9))


def user_create(
    *,
    username: str | None = None,
    birth_date_solar: dt.date | None = dt.date(1990, 5, 17),
    birth_time: dt.time | None = None,
    gender: str = "F",
    is_active: bool = True,
    password: str | None = None,
    **extra,
) -> User:
    """A saved user through the model's save(), so natal pillars are derived as in production."""
    n = next(_counter)
    user = User(
        username=username or f"user{n}",
        email=extra.pop("email", f"user{n}@example.com"),
        birth_date_solar=birth_date_solar,
        birth_time=birth_time,
        gender=gender,
        is_active=is_active,
        **extra,
    )
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.save()
    return user


def users_create_many(*, count: int, seed: int = 0, **kwargs) -> list[User]:
    """Users with varied birth data, each saved through save()."""
    rng = random.Random(seed)
    users = []
    for _ in range(count):
        birth = dt.date(1950, 1, 1) + dt.timedelta(days=rng.randrange(0, 60 * 365))
        time = dt.time(rng.randrange(24), rng.randrange(60)) if rng.random() < 0.5 else None
        users.append(
            user_create(birth_date_solar=birth, birth_time=time, gender=rng.choice("MF"), **kwargs)
        )
    return users
