"""The JSON form of the ops selectors' data: /ops/status.json and the pages' live refresh.

A run is core.services.runs.RunSummary (the one view model of a run): RunSerializer only names its
fields and derived figures for JSON."""

from django.urls import reverse
from rest_framework import serializers


class FailureReasonSerializer(serializers.Serializer):
    class Meta:
        ref_name = "OpsFailureReason"

    reason = serializers.CharField()
    users = serializers.IntegerField()


class RunSerializer(serializers.Serializer):
    class Meta:
        ref_name = "OpsRun"

    id = serializers.IntegerField()
    url = serializers.SerializerMethodField()
    target_date = serializers.DateField()
    base_date = serializers.DateField()
    status = serializers.CharField()
    catch_up = serializers.BooleanField()
    forced = serializers.BooleanField()
    user_id_filter = serializers.IntegerField(allow_null=True)
    provider = serializers.CharField()
    model = serializers.CharField()
    eligible = serializers.IntegerField()
    already_present = serializers.IntegerField()
    total = serializers.IntegerField()
    done = serializers.IntegerField()
    failed = serializers.IntegerField()
    percent = serializers.FloatField()
    rate = serializers.FloatField()
    eta_seconds = serializers.FloatField(allow_null=True)
    eta_text = serializers.CharField()
    in_flight = serializers.IntegerField(allow_null=True, help_text="Generations asked of the model and not "
                                         "answered yet, at the last heartbeat; null when the run did not record it.")
    generations = serializers.IntegerField()
    llm_requests = serializers.IntegerField()
    tokens_in = serializers.IntegerField()
    tokens_out = serializers.IntegerField()
    estimated_cost = serializers.DecimalField(max_digits=12, decimal_places=6)
    workers = serializers.IntegerField()
    workers_text = serializers.CharField()
    hostname = serializers.CharField()
    pid = serializers.IntegerField(allow_null=True)
    started_at = serializers.DateTimeField()
    heartbeat_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    duration_seconds = serializers.FloatField()
    duration_text = serializers.CharField()
    stale = serializers.CharField()
    stop_reason = serializers.CharField()
    failures = FailureReasonSerializer(many=True)
    missing = serializers.IntegerField()
    command = serializers.CharField()
    related = serializers.ListField(child=serializers.CharField(), help_text="The run's Celery chunks and its "
                                    "date's Batch API batches at a glance.")
    cost_paths = serializers.CharField(source="cost_paths_text", help_text="The cost per pricing path in words.")

    def get_url(self, run) -> str:
        return reverse("ops:run", args=[run.id])


class CoverageSerializer(serializers.Serializer):
    class Meta:
        ref_name = "OpsCoverage"

    for_date = serializers.DateField()
    label = serializers.CharField()
    eligible = serializers.IntegerField()
    with_fortune = serializers.IntegerField()
    gap = serializers.IntegerField()
    ok = serializers.BooleanField()
    percent = serializers.FloatField()
    on_demand = serializers.IntegerField()
    fallback = serializers.IntegerField(help_text="Saju-rule fortunes served because the model could not answer.")
    command = serializers.CharField()


class HealthSerializer(serializers.Serializer):
    class Meta:
        ref_name = "OpsHealth"

    ok = serializers.BooleanField(source="health_ok")
    problems = serializers.ListField(child=serializers.CharField(), source="health_problems")
    cache = serializers.CharField(help_text='"ok", "down" (the API answers without it) or "not configured"')


class PushDaySerializer(serializers.Serializer):
    class Meta:
        ref_name = "OpsPushDay"

    for_date = serializers.DateField()
    due = serializers.IntegerField(help_text="Users whose push time came that day (notifications on, an active "
                                   "device): the sum of the figures below.")
    sent = serializers.IntegerField()
    failed = serializers.IntegerField()
    failures = FailureReasonSerializer(many=True, source="failure_rows",
                                       help_text="Failed deliveries by reason (users: deliveries).")
    unconfirmed = serializers.IntegerField(help_text="Claimed by a sender that died before recording the outcome: "
                                           "maybe delivered, never sent again (missed pushes are among them).")
    in_flight = serializers.IntegerField(help_text="Claimed, outcome not recorded yet.")
    pending = serializers.IntegerField(help_text="Due, fortune ready, not claimed yet: the next run sends them.")
    waiting_for_fortune = serializers.IntegerField(help_text="Due but no fortune for the day yet: not sent until "
                                                   "one exists.")
    devices_deactivated = serializers.IntegerField()


class PushHealthSerializer(serializers.Serializer):
    class Meta:
        ref_name = "OpsPushHealth"

    configured = serializers.BooleanField(help_text="false: FCM_CREDENTIALS is not set, push is off.")
    ok = serializers.BooleanField()
    problems = serializers.ListField(child=serializers.CharField())


class PushSerializer(serializers.Serializer):
    class Meta:
        ref_name = "OpsPush"

    health = PushHealthSerializer()
    days = PushDaySerializer(many=True, help_text="Today first.")


class StatusSerializer(serializers.Serializer):
    """ok: both dead-man's switches (batch, push) are happy and tomorrow has no gap."""

    class Meta:
        ref_name = "OpsStatus"

    ok = serializers.BooleanField()
    generated_at = serializers.DateTimeField()
    health = HealthSerializer(source="now")
    running = RunSerializer(many=True, source="now.running")
    last_finished = RunSerializer(allow_null=True, source="now.last_finished")
    coverage = CoverageSerializer(many=True)
    push = PushSerializer()
