"""The API benchmark's reference views, served by bench/settings.py only (never by production URLs)."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.generics import RetrieveAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.models import FortuneResult
from core.services.fortunes import fortune_today


class PingApi(APIView):
    """A trivial authenticated JSON view: the benchmark's reference (no query beyond auth)."""

    @extend_schema(
        operation_id="ping",
        responses={
            200: inline_serializer("Ping", {"ok": serializers.BooleanField(), "user_id": serializers.IntegerField()})
        },
    )
    def get(self, request: Request) -> Response:
        return Response({"ok": True, "user_id": request.user.pk})


class IdiomaticFortuneSerializer(serializers.ModelSerializer):
    """/fortune/today's body the way DRF's documentation would write it: a ModelSerializer over the
    user's FortuneResult and its generation."""

    date = serializers.DateField(source="for_date")
    fortune = serializers.JSONField(source="generation.content")
    generated_at = serializers.DateTimeField(source="generation.created_at")

    class Meta:
        model = FortuneResult
        fields = ["date", "fortune", "source", "generated_at"]


class IdiomaticFortuneTodayApi(RetrieveAPIView):
    """The idiomatic DRF reference for /fortune/today (issue 18's "Keep"): a RetrieveAPIView reading the
    same row with the project's authentication and throttles, without its stored-JSON renderer, its
    database view or its ETag. Only the stored-fortune case: no on-demand generation."""

    serializer_class = IdiomaticFortuneSerializer

    @extend_schema(operation_id="fortune_today_idiomatic")
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    def get_object(self) -> FortuneResult:
        return get_object_or_404(FortuneResult.objects.select_related("generation"), user=self.request.user,
                                 for_date=fortune_today())
