"""The production URLs plus the benchmark's reference view (/api/ping)."""

from django.urls import re_path

from bench.views import PingApi
from fortuna_api.urls import urlpatterns as production_urlpatterns

urlpatterns = [
    re_path(r"^api/ping/?$", PingApi.as_view(), name="api-ping"),
    *production_urlpatterns,
]
