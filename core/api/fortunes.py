"""Fortune endpoints: today's (generated on demand when missing) and a given past date."""

import datetime as dt
import json
import re

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.exceptions import ErrorSerializer
from core.api.http import error_response, etag_matches, fortune_etag, with_fortune_cache_headers
from core.models import FortuneResult
from core.services.fortunes import (
    BirthDataUnchartable,
    BirthDateMissing,
    OnDemandUnavailable,
    StoredFortune,
    fortune_get_for_date,
    fortune_get_or_generate_today,
    fortune_today,
)
from core.throttles import OnDemandLimitReached

DATE_MALFORMED = "Give the date as YYYY-MM-DD, e.g. 2025-01-31."
FORTUNE_NOT_FOUND = "You have no fortune stored for {date}."
FORTUNE_NOT_YET = "The fortune for {date} is not available before that day starts in Korea."
ON_DEMAND_LIMIT = "You reached today's limit of {limit} new fortunes. Try again after midnight (KST)."

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@extend_schema_field(OpenApiTypes.OBJECT)
class FortuneContentField(serializers.JSONField):
    """The fortune content schema (core.fortunes.schema.FortuneContent), served as stored."""


class FortuneOutputSerializer(serializers.Serializer):
    """The response's shape, for the OpenAPI schema. FortuneJSONRenderer writes it (a test holds the two equal)."""

    date = serializers.DateField(source="for_date")
    fortune = FortuneContentField(source="generation.content")
    source = serializers.ChoiceField(choices=FortuneResult.Source.choices)
    generated_at = serializers.DateTimeField(source="generation.created_at")


_DATETIME_FIELD = serializers.DateTimeField()


class FortuneJSONRenderer(JSONRenderer):
    """JSON, with a StoredFortune's content spliced in as the database holds it.

    The hot path of GET /fortune/today: decoding the stored content and encoding it again through a
    serializer cost more than the query that fetched it. Anything else (errors) renders as usual.
    """

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        if not isinstance(data, StoredFortune):
            return super().render(data, accepted_media_type, renderer_context)
        generated_at = _DATETIME_FIELD.to_representation(data.generated_at)
        if self.get_indent(accepted_media_type, renderer_context or {}):  # the browsable API pretty-prints
            fields = {"date": data.for_date.isoformat(), "fortune": json.loads(data.content_json),
                      "source": data.source, "generated_at": generated_at}
            return super().render(fields, accepted_media_type, renderer_context)
        return (
            f'{{"date":"{data.for_date.isoformat()}","fortune":{data.content_json},'
            f'"source":{json.dumps(data.source)},"generated_at":{json.dumps(generated_at)}}}'
        ).encode()


def fortune_response(request: Request, stored: StoredFortune) -> Response:
    etag = fortune_etag(stored)
    if etag_matches(if_none_match=request.headers.get("If-None-Match"), etag=etag):
        response = Response(status=status.HTTP_304_NOT_MODIFIED)
    else:
        response = Response(stored)
    return with_fortune_cache_headers(response, etag=etag)


def today_response(request: Request) -> Response:
    try:
        stored = fortune_get_or_generate_today(user=request.user)
    except BirthDateMissing as exc:
        return error_response(status=status.HTTP_409_CONFLICT, detail=str(exc), code="birth_date_missing")
    except BirthDataUnchartable as exc:
        return error_response(status=status.HTTP_409_CONFLICT, detail=str(exc), code="birth_data_invalid")
    except OnDemandLimitReached as exc:
        return error_response(
            status=status.HTTP_429_TOO_MANY_REQUESTS,
            detail=ON_DEMAND_LIMIT.format(limit=exc.limit),
            code="on_demand_limit",
            retry_after=exc.retry_after,
        )
    except OnDemandUnavailable as exc:
        return error_response(
            status=status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc), code=exc.reason, retry_after=exc.retry_after
        )
    return fortune_response(request, stored)


_FORTUNE_RESPONSES = {
    200: FortuneOutputSerializer,
    304: OpenApiResponse(description="Not modified (If-None-Match matched the ETag)."),
    401: ErrorSerializer,
    409: OpenApiResponse(ErrorSerializer, description="No birth date set: PATCH /me first."),
    429: OpenApiResponse(ErrorSerializer, description="Daily on-demand limit or request rate reached."),
    503: OpenApiResponse(ErrorSerializer, description="Generation failed or timed out; see Retry-After."),
}


class FortuneTodayApi(APIView):
    renderer_classes = [FortuneJSONRenderer, BrowsableAPIRenderer]

    @extend_schema(operation_id="fortune_today", responses=_FORTUNE_RESPONSES)
    def get(self, request: Request) -> Response:
        return today_response(request)


class FortuneByDateApi(APIView):
    renderer_classes = [FortuneJSONRenderer, BrowsableAPIRenderer]

    @extend_schema(
        operation_id="fortune_by_date",
        parameters=[OpenApiParameter("date", OpenApiTypes.DATE, OpenApiParameter.PATH)],
        responses={**_FORTUNE_RESPONSES, 400: ErrorSerializer, 404: ErrorSerializer},
    )
    def get(self, request: Request, date: str) -> Response:
        try:
            for_date = dt.date.fromisoformat(date) if _DATE_RE.match(date) else None
        except ValueError:
            for_date = None
        if for_date is None:
            return error_response(status=status.HTTP_400_BAD_REQUEST, detail=DATE_MALFORMED, code="date_malformed")
        today = fortune_today()
        if for_date > today:
            return error_response(
                status=status.HTTP_404_NOT_FOUND, detail=FORTUNE_NOT_YET.format(date=date), code="not_yet"
            )
        if for_date == today:
            return today_response(request)
        stored = fortune_get_for_date(user=request.user, for_date=for_date)
        if stored is None:
            return error_response(
                status=status.HTTP_404_NOT_FOUND, detail=FORTUNE_NOT_FOUND.format(date=date), code="not_found"
            )
        return fortune_response(request, stored)
