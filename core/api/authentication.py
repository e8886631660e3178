"""Token authentication with one fixed SQL statement.

DRF's TokenAuthentication runs `Token.objects.select_related("user").get(key=...)`, and compiling
that ORM query over the user's ~30 columns costs more than the database round trip: it was the
largest part of every authenticated request's service time (see docs/BENCHMARKS.md, API). The raw
statement below is the same query, compiled once. Behaviour is DRF's: same header, same errors.
"""

from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from core.models import User

_TOKEN_USER_SQL = (
    f"SELECT u.* FROM {User._meta.db_table} u "
    f"JOIN {Token._meta.db_table} t ON t.user_id = u.{User._meta.pk.column} WHERE t.key = %s"
)


class FastTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key: str) -> tuple[User, Token]:
        user = next(iter(User.objects.raw(_TOKEN_USER_SQL, [key])), None)
        if user is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return user, Token(key=key, user=user)
