"""The prompt the `openai` provider sends, and the token estimate the batch's dry run uses.

The prompt carries only the generation input: the computed saju facts and the target date. Nothing
that identifies a person (name, email, id) ever reaches it: build_messages() takes a GenerationInput,
never a User.

Bump rule: any change to the text or the structure of these messages that could change what the
model writes must bump PROMPT_VERSION in core/fortunes/inputs.py. The version is part of the
generation input's hash, so fortunes stored under the old prompt are not reused for the new one.
Whitespace-only or comment-only edits need no bump.
"""

import functools
import math

from django.conf import settings

from core import saju
from core.fortunes.inputs import PROMPT_VERSION, GenerationInput
from core.fortunes.schema import GeneratedPart

__all__ = ["PROMPT_VERSION", "build_messages", "estimate_tokens", "output_token_cap", "text_tokens"]

ELEMENT_KO = {"wood": "목(木)", "fire": "화(火)", "earth": "토(土)", "metal": "금(金)", "water": "수(水)"}
YIN_YANG_KO = {"yang": "양", "yin": "음"}
GENDER_KO = {"M": "남성", "F": "여성", "": "밝히지 않음"}
WEEKDAYS_KO = "월화수목금토일"
RELATION_KO = {
    saju.RELATION_SAME: "비화 — 일진이 일간과 같은 오행으로, 힘을 보태거나 경쟁한다",
    saju.RELATION_GENERATES_ME: "생조 — 일진의 오행이 일간을 생해 준다(도움·학습·보호)",
    saju.RELATION_I_GENERATE: "설기 — 일간이 일진의 오행을 생한다(표현·활동으로 기운을 쓴다)",
    saju.RELATION_I_CONTROL: "극출 — 일간이 일진의 오행을 극한다(재물·성과를 다룬다)",
    saju.RELATION_CONTROLS_ME: "극입 — 일진의 오행이 일간을 극한다(책임·압박·규율)",
}
LANGUAGE_NAMES = {"ko": "한국어"}

SYSTEM_PROMPT = """당신은 명리학(사주팔자)에 밝은 운세 작가입니다. 아래에 계산된 사주 정보만을 근거로 \
그날의 운세를 씁니다. 사주 정보를 새로 계산하거나 바꾸지 말고, 주어진 일진·십신·오행 관계를 해석하세요.

[사주 원국]
- 년주: {year}
- 월주: {month}
- 일주: {day}
- 시주: {hour}
- 일간: {dm_stem} — {dm_element}, {dm_yin_yang}
- 성별: {gender}

[운세 날짜]
- 날짜: {date}
- 일진: {date_pillar}
- 일진 천간의 십신(일간 기준): {ten_god}
- 오행 관계: {relation}

[작성 규칙]
- 모든 문장은 {language}로, 존댓말로 따뜻하고 구체적으로 씁니다. 과장된 단정이나 공포를 주는 표현, \
의학·법률·투자에 대한 단정적인 조언은 하지 않습니다.
- summary: 오늘을 한두 문장(80자 안팎)으로 요약합니다.
- overall, categories(love 애정, money 재물, work 일·학업, health 건강): score는 0–100 정수로, \
십신과 오행 관계가 유리할수록 높게 줍니다. text는 각각 2–3문장(100–200자)입니다.
- lucky: color는 색 이름 하나, number는 0–99 정수 하나, direction은 동·서·남·북·북동·북서·남동·남서 중 하나.
- advice: 오늘 실천할 수 있는 조언 한두 문장(100자 안팎).
- 이름·나이 등 주어지지 않은 개인 정보를 지어내지 않습니다."""

USER_PROMPT = "{date} 하루의 운세를 작성해 주세요."

# Token estimate calibration (no tokenizer at run time: there is no internet to fetch one).
# Fitted against the real o200k_base encoding (gpt-4o / gpt-4o-mini / gpt-4.1 family) from the PyPI
# package bpe-openai 0.1.4 (it ships the encoding file), over this prompt built for 2,000 varied inputs
# and 2,000 stub-written fortunes: Korean/CJK characters cost ~0.81 tokens each (about 1.2 characters
# per token: hanja pillars 1-2 tokens, Hangul syllables less), other characters ~0.32 (ASCII JSON:
# about 3.1 characters per token). Per text the estimate is 0.90-0.94 of the true count for the system
# prompt, 1.01-1.11 for a whole JSON answer. After a prompt change, re-check in a scratch venv:
# `pip install bpe-openai==0.1.4`, then compare len(bpe_openai.get_encoding("o200k_base").encode(text))
# with text_tokens(text) for build_messages() output.
TOKENS_PER_WIDE_CHAR = 0.81
TOKENS_PER_NARROW_CHAR = 0.32
TOKENS_PER_MESSAGE = 4  # chat formatting around each message
# Structured Outputs bills the JSON schema sent as response_format: GeneratedPart's strict schema is
# 489 o200k tokens as the SDK serialises it.
SCHEMA_TOKENS = 489
# Expected answer when the model follows the lengths asked for above: ~1,000 characters of Korean
# prose (~78% Hangul) plus ~250 ASCII characters of JSON keys, scores and punctuation.
COMPLETION_WIDE_CHARS = 780
COMPLETION_NARROW_CHARS = 220 + 250


def _hangul_pillar(pillar: str) -> str:
    return saju.STEMS_HANGUL[saju.STEMS.index(pillar[0])] + saju.BRANCHES_HANGUL[saju.BRANCHES.index(pillar[1])]


def _pillar_text(pillar: str | None) -> str:
    if not pillar:
        return "태어난 시간 모름(시주 없이 세 기둥으로 해석)"
    return f"{pillar}({_hangul_pillar(pillar)})"


def _date_text(inp: GenerationInput) -> str:
    d = inp.for_date
    return f"{d.year}년 {d.month}월 {d.day}일 ({WEEKDAYS_KO[d.weekday()]}요일)"


def build_messages(inp: GenerationInput) -> list[dict[str, str]]:
    """System prompt with the computed saju facts, user message naming the date. Deterministic."""
    block = inp.saju_block()
    dm = block.day_master
    system = SYSTEM_PROMPT.format(
        year=_pillar_text(block.pillars.year),
        month=_pillar_text(block.pillars.month),
        day=_pillar_text(block.pillars.day),
        hour=_pillar_text(block.pillars.hour),
        dm_stem=f"{dm.stem}({saju.STEMS_HANGUL[saju.STEMS.index(dm.stem)]})",
        dm_element=ELEMENT_KO[dm.element],
        dm_yin_yang=YIN_YANG_KO[dm.yin_yang],
        gender=GENDER_KO.get(inp.gender, GENDER_KO[""]),
        date=_date_text(inp),
        date_pillar=_pillar_text(block.date_pillar),
        ten_god=block.ten_god,
        relation=RELATION_KO.get(block.element_relation, block.element_relation),
        language=LANGUAGE_NAMES.get(inp.language, inp.language),
    )
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": USER_PROMPT.format(date=_date_text(inp))},
    ]


def _is_wide(ch: str) -> bool:
    # Hangul syllables and jamo, CJK ideographs (the hanja pillars) and CJK punctuation.
    return ch >= "\u1100"


def text_tokens(text: str) -> float:
    wide = sum(1 for ch in text if _is_wide(ch))
    return wide * TOKENS_PER_WIDE_CHAR + (len(text) - wide) * TOKENS_PER_NARROW_CHAR


def estimate_tokens(inp: GenerationInput) -> tuple[int, int]:
    """(tokens_in, tokens_out) one generation of `inp` is expected to bill, without a tokenizer."""
    messages = build_messages(inp)
    tokens_in = SCHEMA_TOKENS + sum(TOKENS_PER_MESSAGE + text_tokens(m["content"]) for m in messages)
    tokens_out = COMPLETION_WIDE_CHARS * TOKENS_PER_WIDE_CHAR + COMPLETION_NARROW_CHARS * TOKENS_PER_NARROW_CHAR
    return math.ceil(tokens_in), math.ceil(tokens_out)


# The output-token cap (every request's max_completion_tokens, unless FORTUNE_MAX_OUTPUT_TOKENS sets
# it): the longest answer the content schema admits, counted at one token per character. That is the
# schema's every string at its maxLength, every integer at its maximum and every key and bracket of
# the JSON around them: about 4k tokens for GeneratedPart, against ~0.8k expected (o200k spends
# ~0.81 tokens per Korean character on average). No valid answer is longer, so the cap never cuts a
# valid one short on o200k, and a tokenizer spending up to ~3 tokens per Hangul syllable (byte
# fallback) still fits the lengths the prompt asks for; a runaway answer stops there instead of at
# the model's own output limit.
TOKENS_PER_CHAR_WORST = 1.0
JSON_PUNCTUATION_PER_KEY = 4  # the key's quotes, the colon, the comma


def _schema_chars(schema: dict, defs: dict) -> int:
    """Characters of the longest JSON document `schema` admits (strings at maxLength, quoted)."""
    if "$ref" in schema:
        return _schema_chars(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    kind = schema.get("type")
    if kind == "object":
        return 2 + sum(len(key) + JSON_PUNCTUATION_PER_KEY + _schema_chars(value, defs)
                       for key, value in schema.get("properties", {}).items())
    if kind == "string":
        return 2 + schema["maxLength"]  # a string without maxLength has no cap to derive: a KeyError says so
    if kind == "integer":
        return len(str(int(schema["maximum"])))
    raise ValueError(f"output_token_cap: no size rule for schema type {kind!r}")


@functools.cache
def schema_output_token_cap() -> int:
    schema = GeneratedPart.model_json_schema()
    return math.ceil(_schema_chars(schema, schema.get("$defs", {})) * TOKENS_PER_CHAR_WORST)


def output_token_cap() -> int:
    """max_completion_tokens of every fortune request: FORTUNE_MAX_OUTPUT_TOKENS, else derived from the schema."""
    return settings.FORTUNE_MAX_OUTPUT_TOKENS or schema_output_token_cap()
