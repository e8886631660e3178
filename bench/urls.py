"""The production URLs plus the benchmark's reference views (/api/ping, /api/fortune-drf)."""

from django.urls import re_path

from bench.views import IdiomaticFortuneTodayApi, PingApi
from fortuna_api.urls import urlpatterns as production_urlpatterns

urlpatterns = [
    re_path(r"^api/ping/?$", PingApi.as_view(), name="api-ping"),
    re_path(r"^api/fortune-drf/?$", IdiomaticFortuneTodayApi.as_view(), name="api-fortune-drf"),
    *production_urlpatterns,
]
