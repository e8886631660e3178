"""Token authentication with one fixed SQL statement.

DRF's TokenAuthentication runs `Token.objects.select_related("user").get(key=...)`, and compiling
that ORM query over the user's ~30 columns costs more than the database round trip: it was the
largest part of every authenticated request's service time (see docs/BENCHMARKS.md, API). The
statement below is the same query, compiled once, run on a plain cursor; the row becomes a User
through the converters the ORM itself would apply. Behaviour is DRF's: same header, same errors.
"""

from django.db import connections, router
from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from core.models import User

_FIELDS = User._meta.concrete_fields
_ATTNAMES = [field.attname for field in _FIELDS]
_TOKEN_USER_SQL = (
    f"SELECT {', '.join('u.' + field.column for field in _FIELDS)} FROM {User._meta.db_table} u "
    f"JOIN {Token._meta.db_table} t ON t.user_id = u.{User._meta.pk.column} WHERE t.key = %s"
)


def _row_converters(connection) -> list[tuple[int, list, object]]:
    """(column index, converters, expression) as the ORM's compiler applies them, for this backend."""
    converters = []
    for index, field in enumerate(_FIELDS):
        col = field.get_col(User._meta.db_table)
        found = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
        if found:
            converters.append((index, found, col))
    return converters


_converters_by_vendor: dict[str, list] = {}


def user_from_row(connection, row: tuple) -> User:
    converters = _converters_by_vendor.get(connection.vendor)
    if converters is None:
        converters = _converters_by_vendor[connection.vendor] = _row_converters(connection)
    values = list(row)
    for index, functions, col in converters:
        for convert in functions:
            values[index] = convert(values[index], col, connection)
    return User.from_db(connection.alias, _ATTNAMES, values)


class FastTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key: str) -> tuple[User, Token]:
        connection = connections[router.db_for_read(User)]
        with connection.cursor() as cursor:
            cursor.execute(_TOKEN_USER_SQL, [key])
            row = cursor.fetchone()
        if row is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        user = user_from_row(connection, row)
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return user, Token(key=key, user=user)
