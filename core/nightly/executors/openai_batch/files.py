"""The Batch API's files: the JSONL input file being written, its request lines, and the parsing of
the output and error files a batch answers with."""

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from typing import IO

from core.models import OpenAIBatch
from core.nightly.executors.openai_batch.client import ENDPOINT

logger = logging.getLogger("fortuna.nightly.openai_batch")


class JsonlFile:
    """One input file being written: a temporary file on disk, its checksum and its custom_ids."""

    def __init__(self) -> None:
        self.fh: IO[bytes] = tempfile.TemporaryFile()
        self.sha = hashlib.sha256()
        self.bytes = 0
        self.hashes: list[str] = []

    def fits(self, size: int, *, max_requests: int, max_bytes: int) -> bool:
        return len(self.hashes) < max_requests and self.bytes + size <= max_bytes

    def add(self, digest: str, line: bytes) -> None:
        self.fh.write(line)
        self.sha.update(line)
        self.bytes += len(line)
        self.hashes.append(digest)


def batch_line(*, digest: str, body: dict) -> bytes:
    """One JSONL request line: custom_id = the generation-input hash."""
    line = {"custom_id": digest, "method": "POST", "url": ENDPOINT, "body": body}
    return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


LINE_OK = "ok"  # its generation is stored (from it, or found stored by another path)
LINE_INVALID = "invalid"  # its answer failed validation: its input goes synchronous


@dataclass(slots=True)
class Line:
    """An output line that answered 200: its content is validated when an input is stored from it."""

    content: str
    tokens_in: int
    tokens_out: int
    row: OpenAIBatch
    outcome: str = ""  # LINE_OK or LINE_INVALID once an input was stored from it; "" never used: orphaned
    users: int = 0  # users the plan matched to its input (theirs once the line is ok)


@dataclass(slots=True)
class RowCounts:
    """One batch row's tally of a collection (OpenAIBatch.completed_lines, failed_lines, stored_users)."""

    failed_lines: int = 0  # lines that did not answer 200, or whose answer was invalid
    completed_lines: int = 0  # lines whose generation is stored (or was already, by another path)
    stored_users: int = 0  # users given those lines' generations
    tokens_in: int = 0  # billed, whatever the line's outcome
    tokens_out: int = 0


@dataclass(slots=True)
class Parsed:
    """The lines of the files of one collection pass."""

    lines: dict[str, Line]  # custom_id (input hash) -> its 200 line
    unmatched: int = 0  # lines naming no custom_id


def _object(value: object) -> dict:
    """value if it is a JSON object, else {} (a damaged output line's parts are read as missing)."""
    return value if isinstance(value, dict) else {}


def _tokens(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def output_parse(text: str, *, row: OpenAIBatch, counts: RowCounts, parsed: Parsed) -> None:
    """Keep the 200 lines (content not validated yet); count the rest failed and all tokens billed.

    A line is the server's, not ours, so none of it is trusted: a line that is not a JSON object, or
    names no custom_id, cannot be matched to an input; it is counted (parsed.unmatched) and skipped,
    and whatever input it was for stays missing for the synchronous pass. A line that names its
    custom_id but is damaged anywhere else fails that input only. Neither ever raises.
    """
    for raw in text.splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            line = None
        custom_id = line.get("custom_id") if isinstance(line, dict) else None
        if not isinstance(custom_id, str) or not custom_id:
            parsed.unmatched += 1
            logger.warning("batch api: %s line of batch %s names no custom_id (%s): skipped; its input goes "
                           "synchronous", "an output" if isinstance(line, dict) else "a non-object", row.batch_id,
                           raw[:80])
            continue
        _line_read(line, custom_id=custom_id, row=row, counts=counts, parsed=parsed)


def _line_read(line: dict, *, custom_id: str, row: OpenAIBatch, counts: RowCounts, parsed: Parsed) -> None:
    response = _object(line.get("response"))
    body = _object(response.get("body"))
    usage = _object(body.get("usage"))
    tokens_in, tokens_out = _tokens(usage.get("prompt_tokens")), _tokens(usage.get("completion_tokens"))
    counts.tokens_in += tokens_in
    counts.tokens_out += tokens_out
    choices = body.get("choices")
    choice = _object(choices[0] if isinstance(choices, list) and choices else None)
    message = _object(choice.get("message"))
    content = message.get("content")
    # A request-level 4xx is a 200-less response with error null: the status code decides, not only error.
    if line.get("error") or response.get("status_code") != 200 or message.get("refusal") or \
            choice.get("finish_reason") not in ("stop", None) or not isinstance(content, str) or not content:
        counts.failed_lines += 1
        return
    parsed.lines[custom_id] = Line(content, tokens_in, tokens_out, row)
