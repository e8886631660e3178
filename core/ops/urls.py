from django.urls import path

from core.ops.views import OpsCoverageView, OpsHistoryView, OpsNowView, OpsRunView, OpsStatusApi

app_name = "ops"

urlpatterns = [
    path("", OpsNowView.as_view(), name="now"),
    path("coverage/", OpsCoverageView.as_view(), name="coverage"),
    path("history/", OpsHistoryView.as_view(), name="history"),
    path("runs/<int:run_id>/", OpsRunView.as_view(), name="run"),
    path("status.json", OpsStatusApi.as_view(), name="status"),
]
