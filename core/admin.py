import math

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.http import HttpRequest, HttpResponse

from core.models import FortuneGeneration, FortuneResult, NightlyRun, OpenAIBatch, User
from core.throttles import AuthRateThrottle

ADMIN_LOGIN_THROTTLED = "Too many login attempts from this address. Try again in {seconds} seconds."


def admin_login_throttled(request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
    """The admin's login view behind the API's login throttle: the same client address (settings
    TRUSTED_PROXY_COUNT) and the same budget (scope "auth", THROTTLE_AUTH) as /auth/token, so a
    password guesser gains nothing by switching forms. Showing the form (GET) is not counted."""
    if request.method == "POST":
        throttle = AuthRateThrottle()
        if not throttle.allow_request(request, None):
            seconds = max(1, math.ceil(throttle.wait() or 1))
            response = HttpResponse(
                ADMIN_LOGIN_THROTTLED.format(seconds=seconds), status=429, content_type="text/plain; charset=utf-8"
            )
            response["Retry-After"] = str(seconds)
            return response
    return admin.site.login(request, extra_context)


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ("username", "email", "is_active", "birth_date_solar", "birth_time", "gender", "natal_chart")
    list_filter = ("is_active", "gender", "is_staff", "birth_lunar_is_leap_month")
    search_fields = ("username", "email")
    readonly_fields = ("saju_year", "saju_month", "saju_day", "saju_hour", "natal_version")
    fieldsets = BaseUserAdmin.fieldsets + (
        (
            "Birth data (natal pillars are derived on save)",
            {
                "fields": (
                    "birth_date_solar",
                    ("birth_lunar_year", "birth_lunar_month", "birth_lunar_day", "birth_lunar_is_leap_month"),
                    "birth_time",
                    "gender",
                    ("saju_year", "saju_month", "saju_day", "saju_hour"),
                    "natal_version",
                )
            },
        ),
    )

    @admin.display(description="사주 (年月日時)")
    def natal_chart(self, obj: User) -> str:
        return " ".join(p for p in (obj.saju_year, obj.saju_month, obj.saju_day, obj.saju_hour or "——") if p)


@admin.register(FortuneResult)
class FortuneResultAdmin(admin.ModelAdmin):
    list_display = ("user", "for_date", "source", "generation", "created_at")
    list_filter = ("source", "for_date")
    search_fields = ("user__username", "user__email")
    raw_id_fields = ("user", "generation")
    date_hierarchy = "for_date"
    list_select_related = ("user", "generation")


@admin.register(FortuneGeneration)
class FortuneGenerationAdmin(admin.ModelAdmin):
    list_display = ("input_hash", "for_date", "provider", "model", "tokens_in", "tokens_out", "created_at")
    list_filter = ("provider", "model", "for_date")
    search_fields = ("input_hash",)
    date_hierarchy = "for_date"


@admin.register(NightlyRun)
class NightlyRunAdmin(admin.ModelAdmin):
    list_display = (
        "id", "target_date", "status", "eligible", "already_present", "generated", "failed",
        "llm_requests", "estimated_cost", "workers", "started_at", "duration",
    )
    list_filter = ("status", "catch_up", "provider", "target_date")
    date_hierarchy = "target_date"
    readonly_fields = [f.name for f in NightlyRun._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(OpenAIBatch)
class OpenAIBatchAdmin(admin.ModelAdmin):
    list_display = (
        "id", "target_date", "model", "state", "remote_status", "request_count", "completed_lines", "failed_lines",
        "stored_users", "estimated_cost", "batch_id", "created_at", "collected_at",
    )
    list_filter = ("state", "remote_status", "model", "target_date")
    search_fields = ("batch_id", "metadata_key", "input_file_id")
    date_hierarchy = "target_date"
    exclude = ("input_hashes",)  # up to 50,000 hashes: too big for a form
    readonly_fields = [f.name for f in OpenAIBatch._meta.fields if f.name != "input_hashes"]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("input_hashes")

    def has_add_permission(self, request) -> bool:
        return False
