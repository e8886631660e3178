"""An OpenAI-compatible stub server for tests and benchmarks: real HTTP, in a process of its own.

    python -m tests.stub_openai --port 0 --latency-ms 200 --seed 1 --fault-429 0.2 --fault-500 0.1

prints ``READY http://127.0.0.1:PORT/v1`` once listening and serves until SIGTERM.

* ``POST /v1/chat/completions`` and ``POST /v1/responses`` answer content valid for the JSON schema the
  request carries (``response_format.json_schema.schema`` / ``text.format.schema``); strings are
  plausible Korean for the fortune field names, chosen deterministically from the request body.
* Faults are scheduled per request: request number n (arrival order, from 1) gets the fault drawn by
  ``random.Random(f"{seed}:{n}")`` against the configured probabilities, so a seed always gives the
  same sequence. ``fail_when_contains`` fails every request whose body contains a substring (``[""]``:
  every request, e.g. a server refusing ``response_format`` with ``fail_status`` 500).
* An answer stops at the request's output cap (``max_completion_tokens``/``max_tokens``) with
  ``finish_reason: "length"``; the "runaway" fault writes until that cap (or RUNAWAY_TOKENS). Every
  answer's billed usage is summed in ``counters()["tokens_billed"]``, the caps seen in ``by_output_cap``.
* An account limit (``account_rpm``/``account_tpm`` per ``account_window_s``, sliding) answers 429 with
  Retry-After and x-ratelimit-* headers, counted in ``counters()["account"]``; ``latency_jitter_ms``
  spreads each answer's latency around ``latency_ms``.
* Control: ``POST /_stub/config``, ``POST /_stub/reset``, ``GET /_stub/config``, ``GET /_stub/counters``,
  ``GET /_stub/requests[?bodies=1]``.

Standard library only, so the process starts in well under a second and needs no Django.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import hashlib
import json
import math
import random
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.stub_process import ServerProcess, stub_serve, stub_start

# Order matters: the cumulative draw keeps the schedule of the first four faults stable.
FAULT_KINDS = ("429", "500", "malformed", "hang", "refusal", "length", "runaway")
API_PATHS = ("/v1/chat/completions", "/v1/responses")

DEFAULT_CONFIG: dict[str, Any] = {
    "latency_ms": 0.0,
    "seed": 0,
    "faults": dict.fromkeys(FAULT_KINDS, 0.0),
    "retry_after": 1.0,       # seconds, sent as retry-after and retry-after-ms on a 429; null = no header
    "hang_seconds": 30.0,     # a hung request answers after this long (or at the next reset)
    "fail_when_contains": [],
    "fail_status": 500,
    "fail_code": None,        # error.code of those failures, e.g. "insufficient_quota" with fail_status 429
    "record_bodies": 200,     # how many recent request bodies /_stub/requests?bodies=1 can show
    **{
        # The account limit (see "Account limit and latency jitter" below); 0 = not enforced.
        "latency_jitter_ms": 0.0,  # each answer waits latency_ms ± this, uniformly
        "account_rpm": 0,          # requests per minute the account admits
        "account_tpm": 0,          # tokens (prompt + completion) per minute
        "account_window_s": 60.0,  # the sliding window (a minute like OpenAI's; shorter in tests, the
                                   # limits scaled to it: rpm × window / 60 per window)
    },
}

CONFIG_UNKNOWN_KEY = "unknown config key(s): {keys}; allowed: {allowed}"
CONFIG_BAD_FAULT = "faults: unknown kind(s) {kinds}; allowed: {allowed}"
CONFIG_BAD_PROBABILITY = "faults: each probability must be within 0..1 and their sum at most 1"
BAD_BODY_JSON = "We could not parse the JSON body of your request."
BAD_BODY_MESSAGES = "Missing required parameter: 'messages'."
BAD_BODY_INPUT = "Missing required parameter: 'input'."
BAD_BODY_MODEL = "Missing required parameter: 'model'."


# --- Korean text for the fortune field names ------------------------------------------------------

SUMMARIES = (
    "작은 변화가 뜻밖의 기회로 이어지는 날입니다.",
    "차분하게 준비한 만큼 결과가 따라오는 하루입니다.",
    "주변 사람들의 도움으로 막혔던 일이 풀리기 시작합니다.",
    "서두르기보다 한 걸음 물러서서 살피면 길이 보입니다.",
    "새로운 만남과 배움이 기운을 북돋아 주는 날입니다.",
    "익숙한 일 속에서 의미 있는 성과를 거두게 됩니다.",
    "마음의 여유가 좋은 판단으로 이어지는 하루입니다.",
    "꾸준함이 빛을 발하니 오늘도 제자리를 지키세요.",
)
TEXTS = {
    "overall": (
        "오늘은 기운의 흐름이 고르게 이어져 계획한 일을 차근차근 해내기 좋습니다.",
        "오전에는 다소 분주하지만 오후로 갈수록 마음이 안정되고 일이 풀립니다.",
        "생각지 못한 소식이 들려오더라도 침착하게 대응하면 오히려 득이 됩니다.",
        "자신의 장점을 드러내기 좋은 날이니 망설이던 일을 시작해 보세요.",
        "무리한 확장보다는 지금 가진 것을 다지는 데 힘을 쓰는 편이 좋습니다.",
    ),
    "love": (
        "가까운 사람과 솔직한 대화를 나누면 서로의 마음이 한층 가까워집니다.",
        "작은 배려 하나가 상대에게 큰 감동으로 전해지는 날입니다.",
        "새로운 인연은 편안한 자리에서 자연스럽게 찾아올 수 있습니다.",
        "감정이 앞서기 쉬우니 한 번 더 생각하고 말을 건네 보세요.",
        "함께하는 시간을 소중히 여기면 관계가 더욱 단단해집니다.",
    ),
    "money": (
        "지출을 꼼꼼히 점검하면 새어 나가던 돈을 막을 수 있습니다.",
        "작은 수입이 들어오거나 미뤄 둔 돈이 돌아올 기운이 있습니다.",
        "충동적인 구매는 피하고 꼭 필요한 곳에만 쓰는 것이 좋습니다.",
        "장기적인 계획을 세우기에 알맞은 날이니 재정을 정리해 보세요.",
        "남의 말만 믿고 큰돈을 움직이기보다는 충분히 알아본 뒤 결정하세요.",
    ),
    "work": (
        "맡은 일을 끝까지 마무리하는 모습이 윗사람의 신뢰를 얻게 합니다.",
        "동료와 협력하면 혼자서는 어려웠던 문제가 쉽게 풀립니다.",
        "새로운 아이디어가 떠오르니 메모해 두었다가 적절한 때에 꺼내 보세요.",
        "일정이 겹치기 쉬우니 우선순위를 분명히 정해 두는 것이 좋습니다.",
        "배움에 집중하기 좋은 날이라 공부나 자격 준비에 성과가 있습니다.",
    ),
    "health": (
        "가벼운 산책이나 스트레칭이 몸과 마음의 긴장을 풀어 줍니다.",
        "수면 리듬을 지키면 오후의 피로가 한결 줄어듭니다.",
        "따뜻한 차와 규칙적인 식사로 소화 기능을 돌보세요.",
        "목과 어깨가 뻐근하기 쉬우니 틈틈이 자세를 바로잡아 주세요.",
        "무리한 운동보다는 꾸준하고 가벼운 움직임이 잘 맞는 날입니다.",
    ),
}
ADVICE = (
    "오늘 할 일을 세 가지만 정해 차례대로 끝내 보세요.",
    "고마운 사람에게 짧은 안부 인사를 전해 보세요.",
    "중요한 결정은 하룻밤 더 생각한 뒤에 내리는 것이 좋습니다.",
    "잠들기 전 오늘 잘한 일을 하나 적어 보세요.",
    "익숙한 길 대신 새로운 길로 걸어 보며 기분을 전환해 보세요.",
    "약속 시간보다 조금 일찍 도착해 여유를 가져 보세요.",
)
COLORS = ("초록색", "파란색", "노란색", "하얀색", "빨간색", "보라색", "주황색", "남색", "분홍색", "회색")
DIRECTIONS = ("동쪽", "서쪽", "남쪽", "북쪽", "북동쪽", "북서쪽", "남동쪽", "남서쪽")
GENERIC = ("좋은 기운이 함께합니다.", "차분하게 하루를 보내세요.", "작은 행운이 찾아옵니다.")
REFUSAL = "죄송하지만 이 요청에는 도움을 드릴 수 없습니다."
# A runaway answer (fault "runaway": a model that never closes its JSON) goes on until the request's
# output cap (max_completion_tokens / max_tokens), or this many tokens when the request sets none,
# as a model's own output limit would stop it.
RUNAWAY_TOKENS = 16_384
RUNAWAY_TEXT = "그리고 "


def messages_sha256(messages: Any) -> str:
    """Hash of a request's messages (chat) or input (responses), as recorded by /_stub/requests.

    Tests compute the same value from prompt.build_messages(inp) to count requests per input.
    """
    data = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()


def approx_tokens(text: str) -> int:
    # Same per-character ratios as core/fortunes/prompt.py (o200k), kept here so the stub stays stdlib-only.
    wide = sum(1 for ch in text if ch >= "\u1100")
    return max(1, round(wide * 0.81 + (len(text) - wide) * 0.32))


# --- Schema-driven content ------------------------------------------------------------------------


class SchemaFaker:
    """A value valid for a JSON schema (the subset Structured Outputs uses), drawn from `rng`."""

    def __init__(self, root: dict, rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def resolve(self, schema: dict) -> dict:
        seen = 0
        while "$ref" in schema and seen < 32:
            ref = schema["$ref"]
            if not ref.startswith("#"):
                raise ValueError(f"unsupported $ref {ref!r}")
            node: Any = self.root
            for part in ref.lstrip("#").strip("/").split("/"):
                if part:
                    node = node[part.replace("~1", "/").replace("~0", "~")]
            schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
            seen += 1
        return schema

    def value(self, schema: Any, name: str = "", parent: str = "") -> Any:
        if schema is True or schema == {}:
            return self.string(name, parent, {})
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [self.resolve(o) for o in schema[key]]
                non_null = [o for o in options if o.get("type") != "null"]
                pick = self.rng.choice(non_null) if non_null and self.rng.random() < 0.85 else self.rng.choice(options)
                return self.value(pick, name, parent)
        if "allOf" in schema:
            merged: dict = {}
            for part in schema["allOf"]:
                part = self.resolve(part)
                properties = {**merged.get("properties", {}), **part.get("properties", {})}
                merged = {**merged, **part, "properties": properties}
            return self.value(merged, name, parent)
        kind = schema.get("type")
        if isinstance(kind, list):
            non_null = [k for k in kind if k != "null"]
            kind = self.rng.choice(non_null) if non_null else "null"
        if kind is None:
            kind = "object" if "properties" in schema else "string"
        if kind == "object":
            props = schema.get("properties", {})
            return {key: self.value(sub, key, name) for key, sub in props.items()}
        if kind == "array":
            lo = schema.get("minItems", 1)
            hi = schema.get("maxItems", max(lo, 3))
            return [self.value(schema.get("items", {}), name, parent) for _ in range(self.rng.randint(lo, hi))]
        if kind == "string":
            return self.string(name, parent, schema)
        if kind == "integer":
            return self.integer(name, schema)
        if kind == "number":
            lo, hi = self.bounds(schema, 0.0, 100.0)
            return round(self.rng.uniform(lo, hi), 2)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        raise ValueError(f"unsupported schema type {kind!r}")

    @staticmethod
    def bounds(schema: dict, lo: float, hi: float) -> tuple[float, float]:
        if "minimum" in schema:
            lo = schema["minimum"]
        elif "exclusiveMinimum" in schema:
            lo = schema["exclusiveMinimum"] + 1
        if "maximum" in schema:
            hi = schema["maximum"]
        elif "exclusiveMaximum" in schema:
            hi = schema["exclusiveMaximum"] - 1
        return lo, max(lo, hi)

    def integer(self, name: str, schema: dict) -> int:
        if name == "score":
            lo, hi = self.bounds(schema, 0, 100)
            plausible_lo, plausible_hi = max(lo, 35), min(hi, 95)
            if plausible_lo <= plausible_hi:
                return self.rng.randint(int(plausible_lo), int(plausible_hi))
            return self.rng.randint(int(lo), int(hi))
        lo, hi = self.bounds(schema, 1 if name == "number" else 0, 99 if name == "number" else 100)
        return self.rng.randint(int(lo), int(hi))

    def string(self, name: str, parent: str, schema: dict) -> str:
        fmt = schema.get("format")
        if fmt == "date":
            text = f"2025-{self.rng.randint(1, 12):02d}-{self.rng.randint(1, 28):02d}"
        elif fmt == "date-time":
            text = f"2025-{self.rng.randint(1, 12):02d}-{self.rng.randint(1, 28):02d}T09:00:00+09:00"
        elif name == "summary":
            text = " ".join(self.rng.sample(SUMMARIES, 2))
        elif name == "text":
            pool = TEXTS.get(parent, TEXTS["overall"])
            text = " ".join(self.rng.sample(pool, self.rng.randint(2, 3)))
        elif name == "advice":
            text = " ".join(self.rng.sample(ADVICE, 2))
        elif name == "color":
            text = self.rng.choice(COLORS)
        elif name == "direction":
            text = self.rng.choice(DIRECTIONS)
        else:
            text = self.rng.choice(GENERIC)
        lo, hi = schema.get("minLength", 0), schema.get("maxLength")
        if hi is not None and len(text) > hi:
            text = text[:hi].rstrip() or text[:hi]
        while len(text) < lo:
            text += "." if hi is None or len(text) < hi else ""
        return text


def _violate(value: Any, rng: random.Random) -> Any:
    """Valid JSON that breaks the schema: drop a required key, or put a string where a score goes."""
    if isinstance(value, dict) and value:
        broken = dict(value)
        key = rng.choice(sorted(broken))
        if rng.random() < 0.5:
            del broken[key]
        else:
            broken[key] = {"unexpected": True}
        return broken
    return {"unexpected": value}


# --- Server state ---------------------------------------------------------------------------------


def config_apply(current: dict, update: dict) -> dict:
    """`current` with `update` applied, validated. Raises ValueError with a message for the client."""
    unknown = set(update) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(CONFIG_UNKNOWN_KEY.format(keys=sorted(unknown), allowed=sorted(DEFAULT_CONFIG)))
    new = copy.deepcopy(current)
    for key, value in update.items():
        if key == "faults":
            bad = set(value) - set(FAULT_KINDS)
            if bad:
                raise ValueError(CONFIG_BAD_FAULT.format(kinds=sorted(bad), allowed=list(FAULT_KINDS)))
            new["faults"].update({k: float(v) for k, v in value.items()})
        elif key == "fail_when_contains":
            new[key] = [str(s) for s in ([value] if isinstance(value, str) else value)]
        elif key in ("seed", "fail_status", "record_bodies", "account_rpm", "account_tpm"):
            new[key] = int(value)
        elif key == "retry_after":
            new[key] = None if value is None else float(value)
        elif key == "fail_code":
            new[key] = None if value is None else str(value)
        else:
            new[key] = float(value)
    probabilities = new["faults"].values()
    if any(p < 0 or p > 1 for p in probabilities) or sum(probabilities) > 1 + 1e-9:
        raise ValueError(CONFIG_BAD_PROBABILITY)
    return new


class StubState:
    def __init__(self, config: dict) -> None:
        self.lock = threading.Lock()
        self.startup_config = copy.deepcopy(config)
        self.config = copy.deepcopy(config)
        self.release = threading.Event()  # set at reset: wakes hung requests
        self.generation = 0  # bumped at reset: requests begun before it are not counted after it
        self._clear()
        self.batch_store = BatchStore()

    def _clear(self) -> None:
        self.n = 0
        self.by_status: collections.Counter[str] = collections.Counter()
        self.by_path: collections.Counter[str] = collections.Counter()
        self.by_fault: collections.Counter[str] = collections.Counter()
        self.records: list[tuple[int, str, int, str, str]] = []
        self.bodies: collections.deque[tuple[int, str]] = collections.deque(maxlen=self.config["record_bodies"])
        self.gen_in_flight = 0  # in flight among requests begun since the last reset
        self.max_in_flight = 0
        self.hangs = 0
        self.bad_requests = 0
        self.account = AccountLimit()
        self.billed = [0, 0]  # prompt and completion tokens of every answer that carried usage
        self.by_output_cap: collections.Counter[str] = collections.Counter()  # the request's cap, "none" if unset

    def reset(self, *, config: bool) -> None:
        with self.lock:
            if config:
                self.config = copy.deepcopy(self.startup_config)
            self._clear()
            self.batch_store = BatchStore()
            self.generation += 1
            self.release.set()
            self.release = threading.Event()

    def configure(self, update: dict) -> dict:
        with self.lock:
            self.config = config_apply(self.config, update)
            if self.bodies.maxlen != self.config["record_bodies"]:
                self.bodies = collections.deque(self.bodies, maxlen=self.config["record_bodies"])
            return copy.deepcopy(self.config)

    def begin(self, body_text: str) -> tuple[int, int, dict, threading.Event]:
        with self.lock:
            self.n += 1
            self.gen_in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.gen_in_flight)
            self.bodies.append((self.n, body_text))
            return self.generation, self.n, self.config, self.release

    def end(self, *, generation: int, n: int, path: str, status: int, fault: str, sha: str) -> None:
        with self.lock:
            if generation != self.generation:
                return
            self.gen_in_flight -= 1
            self.by_status[str(status)] += 1
            self.by_path[path] += 1
            if fault:
                self.by_fault[fault] += 1
            if status == 400:
                self.bad_requests += 1
            self.records.append((n, path, status, fault, sha))

    def counters(self) -> dict:
        with self.lock:
            return {
                "requests": self.n,
                "completed": sum(self.by_status.values()),
                "by_status": dict(self.by_status),
                "by_path": dict(self.by_path),
                "by_fault": dict(self.by_fault),
                "malformed": self.by_fault["malformed"],
                "hangs": self.hangs,  # counted when the hang starts, so a test can see it while it lasts
                "bad_requests": self.bad_requests,
                "in_flight": self.gen_in_flight,  # begun since the last reset and not answered yet
                "max_in_flight": self.max_in_flight,
                "distinct_inputs": len({r[4] for r in self.records if r[4]}),
                "account": self.account.counters(self.config),
                "tokens_billed": {"in": self.billed[0], "out": self.billed[1]},
                "by_output_cap": dict(self.by_output_cap),
            }

    def requests(self, *, bodies: bool) -> list[dict]:
        with self.lock:
            rows = [{"n": n, "path": p, "status": s, "fault": f, "sha256": h} for n, p, s, f, h in self.records]
            if bodies:
                seen = dict(self.bodies)
                for row in rows:
                    if row["n"] in seen:
                        row["body"] = seen[row["n"]]
            return sorted(rows, key=lambda r: r["n"])


def fault_for(*, seed: int, n: int, faults: dict) -> tuple[str, random.Random]:
    """The fault of request number n: deterministic for (seed, n) whatever the arrival timing."""
    rng = random.Random(f"{seed}:{n}")
    draw = rng.random()
    edge = 0.0
    for kind in FAULT_KINDS:
        edge += faults.get(kind, 0.0)
        if draw < edge:
            return kind, rng
    return "", rng


def _error_body(message: str, *, type_: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# --- Account limit and latency jitter ------------------------------------------------------------
# Like OpenAI's per-account limits: requests and tokens admitted over a sliding window (the per-minute
# limits scaled to its length); over either, 429 with retry-after (when the oldest entry leaves the
# window) and the x-ratelimit-* headers, which state the per-minute limits. A request's tokens are
# its prompt's at admission, then its real usage once answered.


class AccountLimit:
    def __init__(self) -> None:
        self.admitted: collections.deque[list] = collections.deque()  # [arrival, n, tokens], in order
        self.by_n: dict[int, list] = {}
        self.tokens_in_window = 0
        self.rejected = 0  # 429s for the account limit
        self.max_requests = 0  # the most requests admitted within one window
        self.max_tokens = 0  # the most tokens admitted within one window

    def _expire(self, now: float, window: float) -> None:
        while self.admitted and self.admitted[0][0] <= now - window:
            _, n, tokens = self.admitted.popleft()
            self.by_n.pop(n, None)
            self.tokens_in_window -= tokens

    def admit(self, *, now: float, n: int, tokens: int, rpm: int, tpm: int, window: float) -> dict | None:
        """None if admitted (and recorded), else the 429's headers."""
        self._expire(now, window)
        requests = len(self.admitted)
        max_requests, max_tokens = rpm * window / 60, tpm * window / 60
        if (rpm and requests + 1 > max_requests) or (tpm and self.tokens_in_window + tokens > max_tokens):
            self.rejected += 1
            oldest = self.admitted[0][0] if self.admitted else now
            wait = max(0.001, oldest + window - now)
            return {
                "retry-after": f"{math.ceil(wait):d}",
                "retry-after-ms": str(int(wait * 1000)),
                "x-ratelimit-limit-requests": str(rpm or 1_000_000_000),
                "x-ratelimit-remaining-requests": str(max(0, int(max_requests) - requests) if rpm else 1_000_000_000),
                "x-ratelimit-reset-requests": f"{wait:.3f}s",
                "x-ratelimit-limit-tokens": str(tpm or 1_000_000_000),
                "x-ratelimit-remaining-tokens": str(max(0, int(max_tokens - self.tokens_in_window)) if tpm
                                                    else 1_000_000_000),
                "x-ratelimit-reset-tokens": f"{wait:.3f}s",
            }
        entry = [now, n, tokens]
        self.admitted.append(entry)
        self.by_n[n] = entry
        self.tokens_in_window += tokens
        self.max_requests = max(self.max_requests, requests + 1)
        self.max_tokens = max(self.max_tokens, self.tokens_in_window)
        return None

    def used(self, *, n: int, tokens: int) -> None:
        entry = self.by_n.get(n)
        if entry is not None:
            self.tokens_in_window += tokens - entry[2]
            entry[2] = tokens
            self.max_tokens = max(self.max_tokens, self.tokens_in_window)

    def counters(self, config: dict) -> dict:
        return {"rejected_429": self.rejected, "max_requests_in_window": self.max_requests,
                "max_tokens_in_window": self.max_tokens, "window_s": config["account_window_s"],
                "rpm": config["account_rpm"], "tpm": config["account_tpm"]}


def account_admit(state: StubState, *, config: dict, n: int, prompt_tokens: int) -> tuple[dict, dict] | None:
    """None if the account limit admits request n, else the 429's (payload, headers)."""
    if not config["account_rpm"] and not config["account_tpm"]:
        return None
    with state.lock:
        headers = state.account.admit(now=time.monotonic(), n=n, tokens=prompt_tokens, rpm=config["account_rpm"],
                                      tpm=config["account_tpm"], window=config["account_window_s"])
    if headers is None:
        return None
    return _error_body("Rate limit reached for the account (stub).", type_="requests",
                       code="rate_limit_exceeded"), headers


def account_used(state: StubState, *, n: int, tokens: int) -> None:
    with state.lock:
        state.account.used(n=n, tokens=tokens)


def answer_latency(*, config: dict, n: int) -> None:
    latency = config["latency_ms"]
    if config["latency_jitter_ms"]:
        latency += random.Random(f"{config['seed']}:{n}:latency").uniform(-1, 1) * config["latency_jitter_ms"]
    if latency > 0:
        time.sleep(latency / 1000)


# --- HTTP -----------------------------------------------------------------------------------------


class StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without this every keep-alive reply stalls ~40 ms (headers and body leave in two writes).
    disable_nagle_algorithm = True
    server: StubHTTPServer
    server_version = "fortuna-openai-stub/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.verbose:
            super().log_message(format, *args)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its timeout during a hang)

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_bytes(self, status: int, data: bytes, *, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_DELETE(self) -> None:
        url = urlsplit(self.path)
        if not openai_batch_route(self, "DELETE", url, self.read_body()):
            self.send_json(404, _error_body(f"Unknown path {url.path}", type_="invalid_request_error"))

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        state = self.server.state
        if openai_batch_route(self, "GET", url, b""):
            return
        if url.path == "/_stub/counters":
            self.send_json(200, state.counters())
        elif url.path == "/_stub/requests":
            bodies = parse_qs(url.query).get("bodies", ["0"])[0] not in ("0", "", "false")
            self.send_json(200, state.requests(bodies=bodies))
        elif url.path == "/_stub/config":
            with state.lock:
                self.send_json(200, state.config)
        elif url.path == "/v1/models":
            model = {"id": "gpt-4o-mini", "object": "model", "owned_by": "stub"}
            self.send_json(200, {"object": "list", "data": [model]})
        else:
            self.send_json(404, _error_body(f"Unknown path {url.path}", type_="invalid_request_error"))

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        body = self.read_body()
        if openai_batch_route(self, "POST", url, body):
            return
        if path == "/_stub/config":
            try:
                update = json.loads(body or b"{}")
                if not isinstance(update, dict):
                    raise ValueError("config must be a JSON object")
                self.send_json(200, self.server.state.configure(update))
            except (ValueError, TypeError) as exc:
                self.send_json(400, {"error": str(exc)})
        elif path == "/_stub/reset":
            try:
                options = json.loads(body or b"{}")
            except ValueError:
                options = {}
            self.server.state.reset(config=bool(options.get("config", True)) if isinstance(options, dict) else True)
            self.send_json(200, {"ok": True})
        elif path in API_PATHS:
            self.api(path, body)
        else:
            self.send_json(404, _error_body(f"Unknown path {path}", type_="invalid_request_error"))

    def api(self, path: str, body: bytes) -> None:
        state = self.server.state
        text = body.decode("utf-8", errors="replace")
        generation, n, config, release = state.begin(text)
        try:
            status, payload, headers, fault, sha = self.answer(path, body, text, n, config, release)
        except Exception as exc:  # a stub bug must answer, not leave the client waiting for its timeout
            traceback.print_exc()
            payload = _error_body(f"stub error: {exc!r}", type_="stub_error")
            status, headers, fault, sha = 500, None, "", ""
        # Counted before the answer goes out: a client that reads the counters right after its
        # response must find its request there.
        state.end(generation=generation, n=n, path=path, status=status, fault=fault, sha=sha)
        self.send_json(status, payload, headers)

    def answer(
        self, path: str, body: bytes, text: str, n: int, config: dict, release: threading.Event,
    ) -> tuple[int, Any, dict[str, str] | None, str, str]:
        """The answer to one API request: (status, payload, headers, fault, sha); api() sends it."""
        chat = path == "/v1/chat/completions"
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        problem = None
        if not isinstance(request, dict):
            problem = BAD_BODY_JSON
        elif not request.get("model"):
            problem = BAD_BODY_MODEL
        elif chat and not (isinstance(request.get("messages"), list) and request["messages"]):
            problem = BAD_BODY_MESSAGES
        elif not chat and not request.get("input"):
            problem = BAD_BODY_INPUT
        if problem:
            return 400, _error_body(problem, type_="invalid_request_error"), None, "", ""
        cap = request.get("max_completion_tokens") or request.get("max_tokens") or request.get("max_output_tokens")
        cap = cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else None
        with self.server.state.lock:
            self.server.state.by_output_cap[str(cap) if cap else "none"] += 1
        conversation = request["messages"] if chat else [request.get("instructions"), request["input"]]
        sha = messages_sha256(conversation)
        conversation_text = json.dumps(conversation, ensure_ascii=False)
        limited = account_admit(self.server.state, config=config, n=n, prompt_tokens=approx_tokens(conversation_text))
        if limited is not None:
            return 429, limited[0], {"x-request-id": f"req_stub_{n}", **limited[1]}, "account_limit", sha
        answer_latency(config=config, n=n)
        headers = {"x-request-id": f"req_stub_{n}"}

        if any(s in text or s in conversation_text for s in config["fail_when_contains"]):
            status = config["fail_status"]
            kind = "server_error" if status >= 500 else "invalid_request_error"
            payload = _error_body(f"Stub failure for a matching input (HTTP {status}).", type_=kind,
                                  code=config["fail_code"])
            return status, payload, headers, "fail_when_contains", sha

        fault, rng = fault_for(seed=config["seed"], n=n, faults=config["faults"])
        if fault == "429":
            if config["retry_after"] is not None:
                headers["retry-after"] = f"{config['retry_after']:g}"
                headers["retry-after-ms"] = str(int(config["retry_after"] * 1000))
            payload = _error_body("Rate limit reached for requests (stub).", type_="requests",
                                  code="rate_limit_exceeded")
            return 429, payload, headers, fault, sha
        if fault == "500":
            payload = _error_body("The server had an error while processing your request (stub).",
                                  type_="server_error")
            return 500, payload, headers, fault, sha
        if fault == "hang":
            with self.server.state.lock:
                self.server.state.hangs += 1
            release.wait(config["hang_seconds"])

        schema = _request_schema(request, chat=chat)
        content_rng = random.Random(hashlib.sha256(body).digest())
        if schema is None:
            value: Any = None
            content = " ".join(content_rng.sample(SUMMARIES, 2))
        else:
            value = SchemaFaker(schema, content_rng).value(schema)
            content = json.dumps(value, ensure_ascii=False)
        finish_reason = "stop"
        refusal = None
        if fault == "malformed":
            if value is None or rng.random() < 0.5:
                content = content[: max(1, len(content) // 2)]  # cut mid-way: not valid JSON
            else:
                content = json.dumps(_violate(value, rng), ensure_ascii=False)
        elif fault == "refusal":
            content, refusal = None, REFUSAL
        elif fault == "length":
            content, finish_reason = content[: max(1, len(content) // 3)], "length"
        elif fault == "runaway":
            limit = min(cap or RUNAWAY_TOKENS, RUNAWAY_TOKENS)
            filler = approx_tokens(RUNAWAY_TEXT)
            content = content[: len(content) // 2] + RUNAWAY_TEXT * max(1, limit // filler)
            finish_reason = "length"

        usage_in = approx_tokens(conversation_text) + (approx_tokens(json.dumps(schema)) if schema else 0)
        usage_out = approx_tokens(content or refusal or "")
        if cap is not None and usage_out > cap:  # a real server stops writing at the cap, wherever it is
            content = (content or "")[:cap]
            usage_out, finish_reason = cap, "length"
        elif fault == "runaway":
            usage_out = min(cap or RUNAWAY_TOKENS, RUNAWAY_TOKENS)
        account_used(self.server.state, n=n, tokens=usage_in + usage_out)
        with self.server.state.lock:
            self.server.state.billed[0] += usage_in
            self.server.state.billed[1] += usage_out
        model = request["model"]
        if chat:
            payload = _chat_completion(n=n, model=model, content=content, refusal=refusal,
                                       finish_reason=finish_reason, tokens_in=usage_in, tokens_out=usage_out,
                                       service_tier=str(request.get("service_tier") or "default"))
        else:
            payload = _response_object(n=n, model=model, content=content, refusal=refusal,
                                       finish_reason=finish_reason, tokens_in=usage_in, tokens_out=usage_out)
        return 200, payload, headers, fault, sha


def _request_schema(request: dict, *, chat: bool) -> dict | None:
    try:
        if chat:
            fmt = request.get("response_format") or {}
            return fmt["json_schema"]["schema"] if fmt.get("type") == "json_schema" else None
        fmt = (request.get("text") or {}).get("format") or {}
        return fmt["schema"] if fmt.get("type") == "json_schema" else None
    except (KeyError, TypeError, AttributeError):
        return None


def _chat_completion(*, n: int, model: str, content: str | None, refusal: str | None, finish_reason: str,
                     tokens_in: int, tokens_out: int, service_tier: str = "default") -> dict:
    return {
        "id": f"chatcmpl-stub{n:010d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_stub",
        "service_tier": service_tier,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": refusal, "annotations": []},
            "logprobs": None,
            "finish_reason": finish_reason,
        }],
        "usage": {
            "prompt_tokens": tokens_in,
            "completion_tokens": tokens_out,
            "total_tokens": tokens_in + tokens_out,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        },
    }


def _response_object(*, n: int, model: str, content: str | None, refusal: str | None, finish_reason: str,
                     tokens_in: int, tokens_out: int) -> dict:
    part = ({"type": "refusal", "refusal": refusal} if refusal is not None
            else {"type": "output_text", "text": content, "annotations": [], "logprobs": []})
    incomplete = finish_reason == "length"
    return {
        "id": f"resp_stub{n:010d}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if incomplete else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "error": None,
        "model": model,
        "output": [{"type": "message", "id": f"msg_stub{n:010d}", "status": "completed", "role": "assistant",
                    "content": [part]}],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": tokens_in,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": tokens_out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": tokens_in + tokens_out,
        },
    }


class StubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # the default backlog of 5 drops connections from a 64-worker fan-out

    def __init__(self, address: tuple[str, int], state: StubState, *, verbose: bool = False) -> None:
        super().__init__(address, StubHandler)
        self.state = state
        self.verbose = verbose

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


# --- Batch API: files and batches -------------------------------------------------------------------
#
# POST /v1/files (multipart), GET /v1/files[?purpose=], GET /v1/files/{id}/content, DELETE /v1/files/{id},
# POST /v1/batches, GET /v1/batches (newest first, after/limit), GET /v1/batches/{id},
# POST /v1/batches/{id}/cancel. A batch moves on lazily, when it is read: in_progress until
# completion_delay has passed, then completed (or expired); a cancelled one goes through cancelling.
# Controls: POST /_stub/batch/config (BATCH_DEFAULTS keys), GET /_stub/batch (config, counters and
# per-batch custom_ids by outcome). The config is copied into a batch when it is created, except
# download_failures and upload_failures, which count down over every download / upload.

BATCH_DEFAULTS: dict[str, Any] = {
    "completion_delay": 0.0,  # seconds from create to completed/expired
    "fail_5xx": 0.0,          # share of lines answered 5xx (error file, `error` set, no response)
    "fail_4xx": 0.0,          # share answered 400 (output file, `error: null`, the error in the body)
    "fail_malformed": 0.0,    # share answered 200 with content that breaks the schema
    "expire": False,          # at completion_delay the batch expires: partial_share of lines done
    "stuck": False,           # stays in_progress until cancelled
    "partial_share": 0.5,     # share of lines finished when a batch expires or is cancelled
    "cancel_delay": 0.0,      # seconds a cancelled batch stays `cancelling`
    "download_failures": 0,   # the next N file downloads answer 500
    "upload_failures": 0,     # the next N file uploads answer 500
    "seed": 0,
    # Damaged output files (a server's fault, or a proxy's): the share of lines written without their
    # custom_id, and raw lines appended as they are (e.g. "[1, 2]", "not json", '{"id": "x"}').
    "fail_no_custom_id": 0.0,
    "junk_lines": [],
    # Seconds an upload / a batches.create waits before it is stored (and listed): a submission
    # caught mid-way by another process.
    "upload_latency": 0.0,
    "create_latency": 0.0,
    # The next N batches.create calls wait (up to HOLD_MAX_SECONDS) while `holding` is true: a test
    # catches a submission between its upload and its batch, deterministically (counter creates_held).
    "hold_next_creates": 0,
    "holding": False,
}
HOLD_MAX_SECONDS = 30.0
BATCH_TERMINAL = ("completed", "expired", "cancelled", "failed")
BATCH_MAX_REQUESTS = 50_000
BATCH_CONFIG_UNKNOWN_KEY = "unknown batch config key(s): {keys}; allowed: {allowed}"
BATCH_BAD_SHARE = "batch config: fail_5xx + fail_4xx + fail_malformed must be within 0..1"
FILE_NOT_FOUND = "No such File object: {file_id}"
BATCH_NOT_FOUND = "No such batch: {batch_id}"
BATCH_BAD_ENDPOINT = "endpoint must be /v1/chat/completions, got {endpoint!r}"
BATCH_BAD_WINDOW = "completion_window must be 24h, got {window!r}"
BATCH_BAD_FILE_PURPOSE = "The input file must have purpose 'batch', got {purpose!r}"
BATCH_CANNOT_CANCEL = "Cannot cancel a batch with status {status!r}"
UPLOAD_NO_FILE = "Missing required parameter: 'file'."
UPLOAD_BAD_PURPOSE = "Missing or unknown parameter: 'purpose' (got {purpose!r})."
DOWNLOAD_FAILED = "The server had an error while serving this file (stub)."
UPLOAD_FAILED = "The server had an error while storing this file (stub)."


def batch_config_apply(current: dict, update: dict) -> dict:
    unknown = set(update) - set(BATCH_DEFAULTS)
    if unknown:
        raise ValueError(BATCH_CONFIG_UNKNOWN_KEY.format(keys=sorted(unknown), allowed=sorted(BATCH_DEFAULTS)))
    new = dict(current)
    for key, value in update.items():
        default = BATCH_DEFAULTS[key]
        if isinstance(default, list):
            new[key] = [str(v) for v in ([value] if isinstance(value, str) else value)]
        else:
            new[key] = bool(value) if isinstance(default, bool) else type(default)(value)
    shares = [new["fail_5xx"], new["fail_4xx"], new["fail_malformed"]]
    if any(s < 0 for s in shares) or sum(shares) > 1 + 1e-9 or not 0 <= new["partial_share"] <= 1:
        raise ValueError(BATCH_BAD_SHARE)
    return new


def _multipart_fields(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, bytes) of a multipart/form-data body (stdlib email parser)."""
    import email.parser
    import email.policy

    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


class BatchStore:
    """Files and batches of one stub process (reset with the rest of the state)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.config = dict(BATCH_DEFAULTS)
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.seq = 0
        self.counters: collections.Counter[str] = collections.Counter()

    def _id(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}-stub{self.seq:08d}"

    def configure(self, update: dict) -> dict:
        with self.lock:
            self.config = batch_config_apply(self.config, update)
            return dict(self.config)

    def snapshot(self) -> dict:
        with self.lock:
            for batch in self.batches.values():
                self._advance(batch)
            return {
                "config": dict(self.config),
                "counters": dict(self.counters),
                "files": len(self.files),
                "batches": [{
                    "id": b["id"], "status": b["status"], "metadata": b["metadata"], "total": b["total"],
                    "input_file_id": b["input_file_id"],
                    "outcomes": b.get("outcomes", {}),
                } for b in self.batches.values()],
            }

    # files ----------------------------------------------------------------------------------------
    def _file(self, *, data: bytes, filename: str, purpose: str) -> dict:
        obj = {"id": self._id("file"), "object": "file", "bytes": len(data), "created_at": int(time.time()),
               "filename": filename, "purpose": purpose, "status": "processed", "data": data}
        self.files[obj["id"]] = obj
        return obj

    @staticmethod
    def file_json(obj: dict) -> dict:
        return {k: v for k, v in obj.items() if k != "data"}

    def upload(self, *, content_type: str, body: bytes) -> tuple[int, dict]:
        fields = _multipart_fields(content_type, body)
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if "file" not in fields:
            return 400, _error_body(UPLOAD_NO_FILE, type_="invalid_request_error", param="file")
        if purpose not in ("batch", "fine-tune", "assistants", "user_data"):
            return 400, _error_body(UPLOAD_BAD_PURPOSE.format(purpose=purpose), type_="invalid_request_error",
                                    param="purpose")
        filename, data = fields["file"]
        self._wait("upload_latency")
        with self.lock:
            if self.config["upload_failures"] > 0:
                self.config["upload_failures"] -= 1
                self.counters["upload_failures"] += 1
                return 500, _error_body(UPLOAD_FAILED, type_="server_error")
            self.counters["files_created"] += 1
            return 200, self.file_json(self._file(data=data, filename=filename or "upload", purpose=purpose))

    def download(self, file_id: str) -> tuple[int, Any]:
        with self.lock:
            self.counters["downloads"] += 1
            if self.config["download_failures"] > 0:
                self.config["download_failures"] -= 1
                self.counters["download_failures"] += 1
                return 500, _error_body(DOWNLOAD_FAILED, type_="server_error")
            obj = self.files.get(file_id)
            if obj is None:
                return 404, _error_body(FILE_NOT_FOUND.format(file_id=file_id), type_="invalid_request_error")
            return 200, obj["data"]

    def delete_file(self, file_id: str) -> tuple[int, dict]:
        with self.lock:
            if self.files.pop(file_id, None) is None:
                return 404, _error_body(FILE_NOT_FOUND.format(file_id=file_id), type_="invalid_request_error")
            self.counters["files_deleted"] += 1
            return 200, {"id": file_id, "object": "file", "deleted": True}

    def list_files(self, query: dict) -> dict:
        purpose = query.get("purpose", [None])[0]
        with self.lock:
            items = [self.file_json(f) for f in reversed(self.files.values()) if purpose in (None, f["purpose"])]
        return _cursor_page(items, query)

    def _wait(self, key: str) -> None:
        with self.lock:
            seconds = self.config[key]
        if seconds > 0:
            time.sleep(seconds)

    # batches --------------------------------------------------------------------------------------
    def _hold(self) -> None:
        with self.lock:
            if self.config["hold_next_creates"] <= 0:
                return
            self.config["hold_next_creates"] -= 1
            self.counters["creates_held"] += 1
        deadline = time.monotonic() + HOLD_MAX_SECONDS
        while time.monotonic() < deadline:
            with self.lock:
                if not self.config["holding"]:
                    return
            time.sleep(0.01)

    def create(self, request: Any) -> tuple[int, dict]:
        self._hold()
        self._wait("create_latency")
        if not isinstance(request, dict):
            return 400, _error_body(BAD_BODY_JSON, type_="invalid_request_error")
        if request.get("endpoint") != "/v1/chat/completions":
            return 400, _error_body(BATCH_BAD_ENDPOINT.format(endpoint=request.get("endpoint")),
                                    type_="invalid_request_error", param="endpoint")
        if request.get("completion_window") != "24h":
            return 400, _error_body(BATCH_BAD_WINDOW.format(window=request.get("completion_window")),
                                    type_="invalid_request_error", param="completion_window")
        with self.lock:
            source = self.files.get(request.get("input_file_id") or "")
            if source is None:
                return 400, _error_body(FILE_NOT_FOUND.format(file_id=request.get("input_file_id")),
                                        type_="invalid_request_error", param="input_file_id")
            if source["purpose"] != "batch":
                return 400, _error_body(BATCH_BAD_FILE_PURPOSE.format(purpose=source["purpose"]),
                                        type_="invalid_request_error", param="input_file_id")
            now = time.time()
            batch = {
                "id": self._id("batch"), "endpoint": request["endpoint"], "input_file_id": source["id"],
                "completion_window": "24h", "status": "validating", "created_at": now,
                "metadata": request.get("metadata") or None, "config": dict(self.config), "errors": None,
                "output_file_id": None, "error_file_id": None, "times": {}, "counts": (0, 0),
            }
            batch["lines"], problems, batch["model"] = _batch_lines(source["data"], request["endpoint"])
            batch["total"] = len(batch["lines"])
            if problems:
                batch["status"], batch["errors"] = "failed", {"object": "list", "data": problems}
                batch["times"]["failed_at"] = now
            else:
                batch["status"] = "in_progress"
                batch["times"]["in_progress_at"] = now
            self.batches[batch["id"]] = batch
            self.counters["batches_created"] += 1
            return 200, self._batch_json(batch)

    def retrieve(self, batch_id: str) -> tuple[int, dict]:
        with self.lock:
            self.counters["retrieves"] += 1
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, _error_body(BATCH_NOT_FOUND.format(batch_id=batch_id), type_="invalid_request_error")
            self._advance(batch)
            return 200, self._batch_json(batch)

    def cancel(self, batch_id: str) -> tuple[int, dict]:
        with self.lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, _error_body(BATCH_NOT_FOUND.format(batch_id=batch_id), type_="invalid_request_error")
            self._advance(batch)
            if batch["status"] in ("validating", "in_progress", "finalizing"):
                self.counters["cancels"] += 1
                batch["status"] = "cancelling"
                batch["times"]["cancelling_at"] = time.time()
                self._advance(batch)
            elif batch["status"] != "cancelling":
                return 409, _error_body(BATCH_CANNOT_CANCEL.format(status=batch["status"]),
                                        type_="invalid_request_error")
            return 200, self._batch_json(batch)

    def list_batches(self, query: dict) -> dict:
        with self.lock:
            self.counters["lists"] += 1
            items = []
            for batch in reversed(self.batches.values()):
                self._advance(batch)
                items.append(self._batch_json(batch))
        return _cursor_page(items, query)

    def _advance(self, batch: dict) -> None:
        status, config, now = batch["status"], batch["config"], time.time()
        if status in BATCH_TERMINAL:
            return
        if status == "cancelling":
            if now >= batch["times"]["cancelling_at"] + config["cancel_delay"]:
                self._finish(batch, "cancelled")
        elif not config["stuck"] and now >= batch["created_at"] + config["completion_delay"]:
            self._finish(batch, "expired" if config["expire"] else "completed")

    def _finish(self, batch: dict, status: str) -> None:
        config, now = batch["config"], time.time()
        output, errors = [], []
        outcomes: dict[str, list[str]] = collections.defaultdict(list)
        for n, (custom_id, raw) in enumerate(batch["lines"], 1):
            rng = random.Random(f"{config['seed']}:{custom_id}")
            fault_draw, done_draw = rng.random(), rng.random()
            line_id = f"batch_req_{batch['id']}_{n}"
            if status != "completed" and done_draw >= config["partial_share"]:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                errors.append({"id": line_id, "custom_id": custom_id, "response": None,
                               "error": {"code": code, "message": f"This request was not run ({status})."}})
                outcomes[code].append(custom_id)
                continue
            if fault_draw < config["fail_5xx"]:
                errors.append({"id": line_id, "custom_id": custom_id, "response": None,
                               "error": {"code": "server_error", "message": "The server had an error (stub)."}})
                outcomes["5xx"].append(custom_id)
                continue
            request_id = f"req_{batch['id']}_{n}"
            if fault_draw < config["fail_5xx"] + config["fail_4xx"]:
                body_out: Any = _error_body("Invalid request in this line (stub).", type_="invalid_request_error")
                output.append({"id": line_id, "custom_id": custom_id, "error": None,
                               "response": {"status_code": 400, "request_id": request_id, "body": body_out}})
                outcomes["4xx"].append(custom_id)
                continue
            malformed = fault_draw < config["fail_5xx"] + config["fail_4xx"] + config["fail_malformed"]
            body_out = _batch_completion(json.loads(raw)["body"], custom_id=custom_id, n=n, malformed=malformed)
            answered = {"id": line_id, "custom_id": custom_id, "error": None,
                        "response": {"status_code": 200, "request_id": request_id, "body": body_out}}
            if rng.random() < config["fail_no_custom_id"]:  # a third draw: the first two stay as they were
                del answered["custom_id"]
                outcomes["no_custom_id"].append(custom_id)
            else:
                outcomes["malformed" if malformed else "ok"].append(custom_id)
            output.append(answered)
        order = random.Random(f"{config['seed']}:{batch['id']}")
        order.shuffle(output)  # the real API promises no order either
        order.shuffle(errors)
        for kind, lines in (("output_file_id", output), ("error_file_id", errors)):
            if lines:
                data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
                if kind == "output_file_id" and config["junk_lines"]:
                    data += "".join(junk + "\n" for junk in config["junk_lines"]).encode()
                batch[kind] = self._file(data=data, filename=f"{batch['id']}_{kind[:-8]}.jsonl",
                                         purpose="batch_output")["id"]
        batch["status"] = status
        batch["times"][f"{status}_at"] = now
        if status == "completed":
            batch["times"]["finalizing_at"] = now
        batch["outcomes"] = dict(outcomes)
        ok = len(outcomes["ok"]) + len(outcomes["malformed"]) + len(outcomes["no_custom_id"])
        batch["counts"] = (ok, batch["total"] - ok)
        batch["lines"] = []  # answered: only the files are needed now

    def _batch_json(self, batch: dict) -> dict:
        times = {key: int(value) for key, value in batch["times"].items()}
        completed, failed = batch["counts"]
        return {
            "id": batch["id"], "object": "batch", "endpoint": batch["endpoint"], "errors": batch["errors"],
            "input_file_id": batch["input_file_id"], "completion_window": "24h", "status": batch["status"],
            "output_file_id": batch["output_file_id"], "error_file_id": batch["error_file_id"],
            "created_at": int(batch["created_at"]), "expires_at": int(batch["created_at"]) + 86400,
            "request_counts": {"total": batch["total"], "completed": completed, "failed": failed},
            "metadata": batch["metadata"], "model": batch["model"], **times,
        }


def _batch_lines(data: bytes, endpoint: str) -> tuple[list[tuple[str, str]], list[dict], str | None]:
    """(custom_id, raw line) of every line, the validation errors (the batch fails on any), the model.
    Lines stay raw until answered: parsed, 100,000 of them would hold gigabytes."""
    lines, problems, models, seen = [], [], set(), set()
    for number, raw in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            problems.append({"code": "invalid_json_line", "line": number, "message": "This line is not valid JSON."})
            continue
        custom_id = line.get("custom_id") if isinstance(line, dict) else None
        body = line.get("body") if isinstance(line, dict) else None
        if not custom_id or custom_id in seen:
            problems.append({"code": "duplicate_custom_id" if custom_id else "missing_custom_id", "line": number,
                             "message": "custom_id must be present and unique in the file."})
        elif line.get("method") != "POST" or line.get("url") != endpoint or not isinstance(body, dict):
            problems.append({"code": "invalid_request", "line": number,
                             "message": f"method must be POST, url {endpoint}, and body an object."})
        else:
            seen.add(custom_id)
            models.add(body.get("model"))
            lines.append((custom_id, raw))
    if len(models) > 1:
        problems.append({"code": "mixed_models", "line": None, "message": "All lines must use the same model."})
    if len(lines) > BATCH_MAX_REQUESTS:
        problems.append({"code": "too_many_requests", "line": None,
                         "message": f"A batch holds at most {BATCH_MAX_REQUESTS} requests."})
    if not lines and not problems:
        problems.append({"code": "empty_file", "line": None, "message": "The input file has no requests."})
    return lines, problems, next(iter(models), None)


def _batch_completion(body: dict, *, custom_id: str, n: int, malformed: bool) -> dict:
    """The chat completion one batch line gets: content valid for its schema (or broken on purpose)."""
    schema = _request_schema(body, chat=True)
    rng = random.Random(hashlib.sha256(custom_id.encode()).digest())
    if schema is None:
        value: Any = None
        content = " ".join(rng.sample(SUMMARIES, 2))
    else:
        value = SchemaFaker(schema, rng).value(schema)
        content = json.dumps(_violate(value, rng) if malformed else value, ensure_ascii=False)
    conversation_text = json.dumps(body.get("messages"), ensure_ascii=False)
    tokens_in = approx_tokens(conversation_text) + (approx_tokens(json.dumps(schema)) if schema else 0)
    return _chat_completion(n=n, model=body.get("model") or "", content=content, refusal=None, finish_reason="stop",
                            tokens_in=tokens_in, tokens_out=approx_tokens(content))


def _cursor_page(items: list[dict], query: dict) -> dict:
    """A list page as the SDK's SyncCursorPage reads it (newest first; `after` = the last id seen)."""
    after = query.get("after", [None])[0]
    try:
        limit = max(1, min(100, int(query.get("limit", ["20"])[0])))
    except ValueError:
        limit = 20
    if after:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}


def openai_batch_route(handler: "StubHandler", method: str, url: Any, body: bytes) -> bool:
    """Answer a Batch API or batch-control request; False if the path is not one of them."""
    store: BatchStore = handler.server.state.batch_store
    parts = url.path.strip("/").split("/")
    query = parse_qs(url.query)
    if parts[:2] == ["_stub", "batch"]:
        if method == "GET" and len(parts) == 2:
            handler.send_json(200, store.snapshot())
        elif method == "POST" and parts[2:] == ["config"]:
            try:
                update = json.loads(body or b"{}")
                if not isinstance(update, dict):
                    raise ValueError("config must be a JSON object")
                handler.send_json(200, store.configure(update))
            except (ValueError, TypeError) as exc:
                handler.send_json(400, {"error": str(exc)})
        else:
            return False
        return True
    if parts[:1] != ["v1"] or len(parts) < 2 or parts[1] not in ("files", "batches"):
        return False
    kind, rest = parts[1], parts[2:]
    if kind == "files":
        if method == "POST" and not rest:
            status, payload = store.upload(content_type=handler.headers.get("Content-Type", ""), body=body)
        elif method == "GET" and not rest:
            status, payload = 200, store.list_files(query)
        elif method == "GET" and len(rest) == 2 and rest[1] == "content":
            status, payload = store.download(rest[0])
            if status == 200:
                handler.send_bytes(200, payload, content_type="application/octet-stream")
                return True
        elif method == "GET" and len(rest) == 1:
            with store.lock:
                obj = store.files.get(rest[0])
            status, payload = (200, store.file_json(obj)) if obj else (
                404, _error_body(FILE_NOT_FOUND.format(file_id=rest[0]), type_="invalid_request_error"))
        elif method == "DELETE" and len(rest) == 1:
            status, payload = store.delete_file(rest[0])
        else:
            return False
    else:
        if method == "POST" and not rest:
            try:
                request = json.loads(body)
            except ValueError:
                request = None
            status, payload = store.create(request)
        elif method == "GET" and not rest:
            status, payload = 200, store.list_batches(query)
        elif method == "GET" and len(rest) == 1:
            status, payload = store.retrieve(rest[0])
        elif method == "POST" and len(rest) == 2 and rest[1] == "cancel":
            status, payload = store.cancel(rest[0])
        else:
            return False
    handler.send_json(status, payload)
    return True


# --- Command line ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.stub_openai", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (read it from the READY line)")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    for kind in FAULT_KINDS:
        parser.add_argument(f"--fault-{kind}", type=float, default=0.0, metavar="P",
                            help=f"probability of a {kind} fault per request")
    parser.add_argument("--retry-after", type=float, default=1.0, help="seconds sent with a 429")
    parser.add_argument("--hang-seconds", type=float, default=30.0)
    parser.add_argument("--fail-when-contains", action="append", default=[], metavar="TEXT")
    parser.add_argument("--fail-status", type=int, default=500)
    parser.add_argument("--fail-code", default=None)
    parser.add_argument("--record-bodies", type=int, default=200)
    parser.add_argument("--latency-jitter-ms", type=float, default=0.0, help="each answer waits latency ± this")
    parser.add_argument("--account-rpm", type=int, default=0, help="requests per minute the account admits; 0 = any")
    parser.add_argument("--account-tpm", type=int, default=0, help="tokens per minute the account admits; 0 = any")
    parser.add_argument("--account-window-s", type=float, default=60.0, help="the account limit's sliding window")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> dict:
    return config_apply(DEFAULT_CONFIG, {
        "latency_ms": args.latency_ms,
        "seed": args.seed,
        "faults": {kind: getattr(args, f"fault_{kind}") for kind in FAULT_KINDS},
        "retry_after": args.retry_after,
        "hang_seconds": args.hang_seconds,
        "fail_when_contains": args.fail_when_contains,
        "fail_status": args.fail_status,
        "fail_code": args.fail_code,
        "record_bodies": args.record_bodies,
        "latency_jitter_ms": args.latency_jitter_ms,
        "account_rpm": args.account_rpm,
        "account_tpm": args.account_tpm,
        "account_window_s": args.account_window_s,
    })


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = StubHTTPServer((args.host, args.port), StubState(config), verbose=args.verbose)
    return stub_serve(server, parent_pid=args.parent_pid, path="/v1")


# --- Clients for tests and benchmarks ---------------------------------------------------------------


class StubClient:
    """Talks to a running stub's control endpoints."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.root = self.base_url.removesuffix("/v1")

    def _call(self, method: str, path: str, payload: Any = None, *, timeout: float = 10) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.root + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ValueError(f"stub {method} {path}: HTTP {exc.code} {exc.read().decode(errors='replace')}") from None

    def configure(self, **cfg: Any) -> dict:
        """Any subset of latency_ms, seed, faults={"429": p, ...}, retry_after, hang_seconds,
        fail_when_contains, fail_status, fail_code, record_bodies; also fault_429=p, fault_malformed=p, ..."""
        faults = dict(cfg.pop("faults", {}) or {})
        for kind in FAULT_KINDS:
            if f"fault_{kind}" in cfg:
                faults[kind] = cfg.pop(f"fault_{kind}")
        if faults:
            cfg["faults"] = faults
        return self._call("POST", "/_stub/config", cfg)

    def reset(self, *, config: bool = True) -> None:
        """Zero the counters and request numbering (and restore the start-up config); wakes hung requests."""
        self._call("POST", "/_stub/reset", {"config": config})

    def config(self) -> dict:
        return self._call("GET", "/_stub/config")

    def counters(self) -> dict:
        return self._call("GET", "/_stub/counters")

    def requests(self, *, bodies: bool = False) -> list[dict]:
        return self._call("GET", "/_stub/requests" + ("?bodies=1" if bodies else ""))

    def batch_configure(self, **cfg: Any) -> dict:
        """Batch API controls (BATCH_DEFAULTS keys): completion_delay, fail_5xx, fail_4xx, fail_malformed,
        expire, stuck, partial_share, cancel_delay, download_failures, upload_failures, seed,
        fail_no_custom_id, junk_lines, upload_latency, create_latency, hold_next_creates, holding."""
        return self._call("POST", "/_stub/batch/config", cfg)

    def batch_state(self, *, timeout: float = 10) -> dict:
        """Batch API config, counters, and each batch's status, metadata, input file and custom_ids by outcome.
        The first read after completion writes the output files: give a large batch a longer timeout."""
        return self._call("GET", "/_stub/batch", timeout=timeout)

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (e.g. manage.py) that should use this stub."""
        return {"OPENAI_API_KEY": "sk-test-stub", "OPENAI_BASE_URL": self.base_url, "FORTUNE_PROVIDER": "openai"}


class StubProcess(StubClient, ServerProcess):
    def __init__(self, proc: subprocess.Popen, base_url: str) -> None:
        super().__init__(base_url)
        self.proc = proc


def start_stub_process(*, startup_timeout: float = 15.0, **cli_args: Any) -> StubProcess:
    """Start `python -m tests.stub_openai` with the given options (latency_ms=200, seed=1,
    fault_429=0.2, fail_when_contains=[...], ...) and wait until it listens."""
    return stub_start("tests.stub_openai", StubProcess, startup_timeout=startup_timeout, **cli_args)


@contextlib.contextmanager
def stub_process(**cli_args: Any) -> Iterator[StubProcess]:
    """A stub server in a process of its own for the duration of the block."""
    stub = start_stub_process(**cli_args)
    try:
        yield stub
    finally:
        stub.stop()
