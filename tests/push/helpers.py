"""Users with devices and fortunes for the push tests, and reads of what the stub FCM received."""

import datetime as dt
from collections import Counter

from core.models import FortuneGeneration, FortuneResult, PushDevice, User
from tests.factories import user_create


def fortune_give(*, user: User, for_date: dt.date, score: int | None = None) -> dict:
    """A stored fortune of the user's own (its headline names the user), as the batch would store it."""
    score = (user.pk * 7) % 101 if score is None else score
    content = {"summary": f"user {user.pk}의 오늘: 작은 기쁨이 찾아옵니다.",
               "overall": {"score": score, "text": "좋은 날"}}
    generation = FortuneGeneration.objects.create(input_hash=f"push-{user.pk}-{for_date}", for_date=for_date,
                                                  content=content, provider="local")
    FortuneResult.objects.create(user=user, for_date=for_date, generation=generation,
                                 source=FortuneResult.Source.BATCH)
    return content


def push_user(*, for_date: dt.date | None, notify_at: dt.time = dt.time(7, 0), devices: int = 1,
              fortune: bool = True, **extra) -> User:
    """A user with `devices` active tokens (token "tok-<user id>-<n>") and, unless told, a fortune for for_date."""
    user = user_create(notify_at=notify_at, **extra)
    for n in range(devices):
        PushDevice.objects.create(user=user, token=f"tok-{user.pk}-{n}-" + "x" * 12, platform="android")
    if fortune and for_date is not None:
        fortune_give(user=user, for_date=for_date)
    return user


def token_of(user: User, n: int = 0) -> str:
    return f"tok-{user.pk}-{n}-" + "x" * 12


def messages_by_token(stub) -> Counter:
    return Counter(message["token"] for message in stub.messages())
