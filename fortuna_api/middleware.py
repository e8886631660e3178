"""Railway's deploy healthcheck calls the new deployment with `Host: healthcheck.railway.app`
(https://docs.railway.com/guides/healthchecks), a host ALLOWED_HOSTS rightly refuses: without this
the healthcheck gets 400 and a deploy never goes live. That host is accepted on the health endpoints
only; every other path, and every other host, is validated by Django as before."""

import re

from django.http.request import split_domain_port

RAILWAY_HEALTHCHECK_HOST = "healthcheck.railway.app"
HEALTH_PATH = re.compile(r"^/healthz(/batch)?/?$")


class HealthcheckHostMiddleware:
    """Goes before CommonMiddleware (the first to call request.get_host())."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        domain, _ = split_domain_port(request.META.get("HTTP_HOST", ""))
        if domain == RAILWAY_HEALTHCHECK_HOST and HEALTH_PATH.match(request.path_info):
            # get_host() is where Django validates the host; this request's answer is the host it sent.
            request.get_host = lambda: RAILWAY_HEALTHCHECK_HOST
        return self.get_response(request)
