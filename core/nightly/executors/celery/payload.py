"""What a chunk row carries between the executor and its worker: the inputs (payload["inputs"]) and
what became of each (CeleryChunk.outcomes, keyed by the input's full hash), as JSON both ways.

An outcome is {"g": generation id, "u": result rows written, "n": new generation?, "x"/"c": users
skipped as deleted/changed, ...} when the worker stored the input, or {"f": failure reason, "e": error,
"r": retryable?, ...} when it gave up; both carry "a" (model requests) and "b" (failed answers the
server billed all the same). An input without an outcome was not done (the chunk was stopped,
cancelled or abandoned)."""

import datetime as dt

from core.fortunes.inputs import GenerationInput
from core.fortunes.providers import ProviderError
from core.nightly.outcomes import Stored
from core.resilience import Attempted

PAYLOAD_HASH_MISMATCH = "chunk {chunk_id}: an input's hash changed since planning ({expected} != {actual})"


def input_encode(inp: GenerationInput, digest: str, user_ids: list[int]) -> list:
    return [inp.year, inp.month, inp.day, inp.hour, inp.gender, inp.language, inp.prompt_version, inp.generator,
            inp.nonce, digest, user_ids]


def input_decode(row: list, *, for_date: dt.date, chunk_id: int) -> tuple[GenerationInput, str, list[int]]:
    year, month, day, hour, gender, language, prompt_version, generator, nonce, digest, user_ids = row
    inp = GenerationInput(for_date=for_date, year=year, month=month, day=day, hour=hour, gender=gender,
                          language=language, prompt_version=prompt_version, generator=generator, nonce=nonce)
    if inp.hash != digest:
        raise ValueError(PAYLOAD_HASH_MISMATCH.format(chunk_id=chunk_id, expected=digest[:12], actual=inp.hash[:12]))
    return inp, digest, list(user_ids)


def row_hash(row: list) -> str:
    return row[9]


def stored_encode(*, generation_id: int, users: int, new: bool, outcome: Attempted | None,
                  gone: list[int] = (), changed: list[int] = ()) -> dict:
    """A stored input; outcome is the round that generated it (None: it was stored already); gone and
    changed: its users the store skipped (deleted, birth data changed since planning)."""
    entry = {"g": generation_id, "u": users, "n": new}
    if gone:
        entry["x"] = list(gone)
    if changed:
        entry["c"] = list(changed)
    if outcome is not None:
        generated = outcome.generated
        entry.update(a=outcome.attempts, b=[list(billed) for billed in outcome.billed_failures],
                     t=generated.service_tier or "standard", i=generated.tokens_in, o=generated.tokens_out)
    return entry


def failed_encode(outcome: Attempted) -> dict:
    error = outcome.error
    return {"f": error.reason if error else "unknown", "e": str(error)[:200] if error else "",
            "r": bool(error and error.retryable), "a": outcome.attempts,
            "b": [list(billed) for billed in outcome.billed_failures]}


def outcome_decode(entry: dict) -> Stored | Attempted:
    """The engine's outcome of an input (core.nightly.outcomes) from its chunk's record."""
    billed = tuple((tier, tokens_in, tokens_out) for tier, tokens_in, tokens_out in entry.get("b", ()))
    if "g" in entry:
        return Stored(generation_id=entry["g"], users=entry["u"], new=entry["n"], attempts=entry.get("a", 0),
                      tier=entry.get("t", "standard"), tokens_in=entry.get("i", 0), tokens_out=entry.get("o", 0),
                      billed_failures=billed, gone=tuple(entry.get("x", ())), changed=tuple(entry.get("c", ())))
    error = ProviderError(entry["e"] or entry["f"], reason=entry["f"], retryable=entry["r"])
    return Attempted(generated=None, error=error, attempts=entry["a"], billed_failures=list(billed))


def stopped_outcome() -> Attempted:
    """An input its chunk did not do (stopped, cancelled, abandoned): neither done nor failed."""
    return Attempted(generated=None, error=None, attempts=0, stopped=True)
