"""The API benchmark's calibration: FACTS' reference setup, a trivial token-authenticated DRF view.

FACTS.md measured "a trivial token-auth DRF view under gunicorn (2 sync workers) with persistent
connections" at ~2,000 rps and p99 ≈ 4 ms at 4 connections, the basis of issue 4's absolute
target. `bench/api.py --reference` serves /api/ping with only that: DRF's own TokenAuthentication,
no throttles, no session/CSRF/security middleware, no connection health check, JSON only. What it
measures on the day tells how fast this box is, against which the service's figures can be read.
"""

from bench.settings import *  # noqa: F403
from bench.settings import DATABASES, REST_FRAMEWORK

MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
REST_FRAMEWORK = {
    **REST_FRAMEWORK,
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.TokenAuthentication"],
    "DEFAULT_THROTTLE_CLASSES": [],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}
DATABASES["default"]["CONN_HEALTH_CHECKS"] = False
