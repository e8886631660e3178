from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

from core.admin import admin_login_throttled

# The admin index links to the operators' view (/ops/); core's templates come after the admin's, so
# an admin/index.html override would never be found.
admin.site.index_template = "admin/fortuna_index.html"

urlpatterns = [
    # Before the admin's own URLs, so it answers /admin/login/ (core/admin.py: the login throttle).
    path("admin/login/", admin_login_throttled),
    path("admin/", admin.site.urls),
    path("ops/", include("core.ops.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include("core.api.urls")),
]
