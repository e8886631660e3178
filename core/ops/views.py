"""The operators' view: thin views over core.ops.selectors. Pages are staff-only through the admin's
session login; status.json also takes a staff user's API token."""

import datetime as dt

from django.contrib.auth.mixins import UserPassesTestMixin
from django.http import Http404
from django.urls import reverse_lazy
from django.utils import timezone
from django.views.generic import TemplateView
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.ops.charts import Series, svg_bar_chart
from core.ops.selectors import (
    COST_PATH_LABELS,
    HISTORY_DAYS_CHOICES,
    OpsHistory,
    OpsInputError,
    OpsRunNotFound,
    ops_coverage_many,
    ops_history,
    ops_now,
    ops_parse_date,
    ops_parse_days,
    ops_push,
    ops_recent_runs,
    ops_run_detail,
    ops_status,
)
from core.ops.serializers import StatusSerializer

REFRESH_MS = 3000


class StaffRequiredMixin(UserPassesTestMixin):
    """Anonymous: the admin login page, then back here. Signed in but not staff: 403."""

    login_url = reverse_lazy("admin:login")

    def test_func(self) -> bool:
        user = self.request.user
        return user.is_active and user.is_staff


class OpsPage(StaffRequiredMixin, TemplateView):
    section = ""

    def get_context_data(self, **kwargs) -> dict:
        context = super().get_context_data(**kwargs)
        context.update(section=self.section, refresh_ms=REFRESH_MS, today=timezone.localdate())
        return context


class OpsNowView(OpsPage):
    template_name = "ops/now.html"
    section = "now"

    def get_context_data(self, **kwargs) -> dict:
        context = super().get_context_data(**kwargs)
        today = context["today"]
        context.update(
            push=ops_push(),
            now=ops_now(),
            coverage=ops_coverage_many(dates=[today, today + dt.timedelta(days=1)], today=today),
            recent=ops_recent_runs(limit=10),
        )
        return context


class OpsCoverageView(OpsPage):
    template_name = "ops/coverage.html"
    section = "coverage"

    def get(self, request, *args, **kwargs):
        today = timezone.localdate()
        dates = [today, today + dt.timedelta(days=1)]
        error, chosen = "", request.GET.get("date", "")
        if chosen:
            try:
                dates.append(ops_parse_date(value=chosen))
            except OpsInputError as exc:
                error = str(exc)
        context = self.get_context_data(coverage=ops_coverage_many(dates=dates, today=today), error=error,
                                        chosen=chosen)
        return self.render_to_response(context, status=400 if error else 200)


def history_charts(*, history: OpsHistory) -> list:
    nights = history.nights
    labels = [n.target_date.strftime("%m-%d") for n in nights]
    path_css = {path: f"s{3 + i % 4}" for i, path in enumerate(history.paths)}
    return [
        svg_bar_chart(title="Users stored vs failed", labels=labels, series=[
            Series("stored", [n.stored for n in nights], "s0"), Series("failed", [n.failed for n in nights], "s1"),
        ]),
        svg_bar_chart(title="Duration", labels=labels, unit="s",
                      series=[Series("duration", [n.duration_seconds for n in nights], "s2")]),
        svg_bar_chart(title="LLM requests", labels=labels,
                      series=[Series("requests", [n.llm_requests for n in nights], "s3")]),
        svg_bar_chart(title="Tokens", labels=labels, series=[
            Series("in", [n.tokens_in for n in nights], "s4"), Series("out", [n.tokens_out for n in nights], "s5"),
        ]),
        svg_bar_chart(title="Estimated cost per path", labels=labels, unit="$", series=[
            Series(COST_PATH_LABELS[path], [float(n.cost_by_path.get(path, 0)) for n in nights], css)
            for path, css in path_css.items()
        ]),
        svg_bar_chart(title="On-demand share (of eligible users)", labels=labels, unit="%",
                      series=[Series("on demand", [n.on_demand_share for n in nights], "s1")]),
    ]


class OpsHistoryView(OpsPage):
    template_name = "ops/history.html"
    section = "history"

    def get(self, request, *args, **kwargs):
        try:
            days = ops_parse_days(value=request.GET.get("days", str(HISTORY_DAYS_CHOICES[0])))
        except OpsInputError as exc:
            return self.render_to_response(self.get_context_data(error=str(exc), choices=HISTORY_DAYS_CHOICES),
                                           status=400)
        history = ops_history(days=days)
        context = self.get_context_data(history=history, charts=history_charts(history=history),
                                        nights=list(reversed(history.nights)), choices=HISTORY_DAYS_CHOICES)
        return self.render_to_response(context)


class OpsRunView(OpsPage):
    template_name = "ops/run.html"
    section = "run"

    def get_context_data(self, **kwargs) -> dict:
        context = super().get_context_data(**kwargs)
        try:
            context["detail"] = ops_run_detail(run_id=kwargs["run_id"])
        except OpsRunNotFound as exc:
            raise Http404(str(exc)) from None
        return context


class OpsStatusApi(APIView):
    """Now and coverage (today, tomorrow, ?date=) for scripts, uptime monitors and the pages' refresh."""

    permission_classes = [IsAdminUser]

    @extend_schema(operation_id="ops_status", responses={200: StatusSerializer})
    def get(self, request: Request) -> Response:
        extra = None
        if request.query_params.get("date"):
            try:
                extra = ops_parse_date(value=request.query_params["date"])
            except OpsInputError as exc:
                return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        response = Response(StatusSerializer(ops_status(extra_date=extra)).data)
        response["Cache-Control"] = "no-store"
        return response
