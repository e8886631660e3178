import pytest
from rest_framework.authtoken.models import Token

from tests.factories import user_create


@pytest.fixture
def staff_user(db):
    return user_create(username="operator", is_staff=True, birth_date_solar=None, password="ops-pass-1234")


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(staff_user)
    return client


@pytest.fixture
def member_client(client, db):
    client.force_login(user_create(username="member"))
    return client


@pytest.fixture
def staff_token(staff_user) -> str:
    return Token.objects.create(user=staff_user).key
