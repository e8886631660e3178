"""Fortune endpoints: today's (generated on demand when missing) and a given past date."""

import datetime as dt
import re

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.renderers import BrowsableAPIRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.exceptions import ErrorSerializer
from core.api.http import error_response, etag_matches, fortune_etag, with_fortune_cache_headers
from core.api.renderers import FortuneJSONRenderer, StoredJSON
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
class FortuneContentField(serializers.Field):
    """The fortune content schema (core.fortunes.schema.FortuneContent): the stored JSON text, which
    FortuneJSONRenderer writes into the body as it is."""

    def to_representation(self, value: str) -> StoredJSON:
        return StoredJSON(value)


class FortuneOutputSerializer(serializers.Serializer):
    """The response's shape: the OpenAPI schema and the body both come from here."""

    date = serializers.DateField(source="for_date")
    fortune = FortuneContentField(source="content_json", read_only=True)
    source = serializers.ChoiceField(
        choices=FortuneResult.Source.choices,
        help_text=(
            "Who made it: batch (the nightly run), on_demand (the model, for this request), or fallback "
            "(the deterministic saju-rule fortune, because the model could not answer in time; it stays "
            "the user's fortune for the day)."
        ),
    )
    generated_at = serializers.DateTimeField()


# One bound instance serves every request, as a ListSerializer's child serves every item: building a
# serializer per response deep-copies its fields, which cost more than the representation itself.
_FORTUNE_OUTPUT = FortuneOutputSerializer()

def fortune_response(request: Request, stored: StoredFortune) -> Response:
    etag = fortune_etag(stored)
    if etag_matches(if_none_match=request.headers.get("If-None-Match"), etag=etag):
        response = Response(status=status.HTTP_304_NOT_MODIFIED)
    else:
        response = Response(_FORTUNE_OUTPUT.to_representation(stored))
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
    503: OpenApiResponse(
        ErrorSerializer, description="Not even the saju-rule fallback could be stored; see Retry-After."
    ),
}


# Every fortune response, errors included, goes through the one renderer that can write stored JSON.
_FORTUNE_RENDERERS = [FortuneJSONRenderer, BrowsableAPIRenderer]


class FortuneTodayApi(APIView):
    renderer_classes = _FORTUNE_RENDERERS

    @extend_schema(operation_id="fortune_today", responses=_FORTUNE_RESPONSES)
    def get(self, request: Request) -> Response:
        return today_response(request)


class FortuneByDateApi(APIView):
    renderer_classes = _FORTUNE_RENDERERS

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
