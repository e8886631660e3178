from django.urls import re_path

from core.api.accounts import LogoutApi, MeApi, RegisterApi, TokenApi
from core.api.fortunes import FortuneByDateApi, FortuneTodayApi
from core.api.health import HealthApi, NightlyHealthApi
from core.api.push import DeviceDetailApi, DeviceListApi, NotificationSettingsApi

# Every route answers with and without a trailing slash, without a redirect.
urlpatterns = [
    re_path(r"^fortune/today/?$", FortuneTodayApi.as_view(), name="fortune-today"),
    re_path(r"^fortune/(?P<date>[^/]+)/?$", FortuneByDateApi.as_view(), name="fortune-by-date"),
    re_path(r"^me/?$", MeApi.as_view(), name="me"),
    re_path(r"^me/devices/?$", DeviceListApi.as_view(), name="me-devices"),
    re_path(r"^me/devices/(?P<device_id>[0-9]{1,18})/?$", DeviceDetailApi.as_view(), name="me-device"),
    re_path(r"^me/notifications/?$", NotificationSettingsApi.as_view(), name="me-notifications"),
    re_path(r"^auth/register/?$", RegisterApi.as_view(), name="auth-register"),
    re_path(r"^auth/token/?$", TokenApi.as_view(), name="auth-token"),
    re_path(r"^auth/logout/?$", LogoutApi.as_view(), name="auth-logout"),
    re_path(r"^healthz/?$", HealthApi.as_view(), name="healthz"),
    re_path(r"^healthz/batch/?$", NightlyHealthApi.as_view(), name="healthz-batch"),
]
