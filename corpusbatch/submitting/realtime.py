"""Run planned batch files through the real-time ``/v1/embeddings`` endpoint instead.

For small nightly deltas a Batch API round trip can take hours; at twice the price per
token (OpenAI), ten changed files are better embedded in seconds. :class:`RealtimeRunner`
is an executor with the same contract as the batch one: it reads the very same planned
JSONL files and writes output files in the OpenAI *batch output* format, so the loader,
the retry logic and the journal do not change. The pipeline chooses it only when asked
(``--realtime-under TOKENS``) and the plan is that small.

Crash safety: each result line is appended and flushed as soon as its call returns, and
a resumed file skips every ``custom_id`` already written, so a killed run pays again for
at most the one call that was in flight.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai

from ..errors import BackendError, redact_obj
from ..journal import FileRecord, Journal
from ..loading import classify_error
from .adapter import describe_error

log = logging.getLogger(__name__)


class RealtimeRunner:
    """Executor: planned files -> real-time embeddings -> batch-format output files."""

    def __init__(
        self,
        client: openai.OpenAI,
        *,
        outputs_dir: Path,
        attempts: int = 3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.outputs_dir = outputs_dir
        self.attempts = attempts
        self.sleep = sleep

    def drive(
        self,
        journal: Journal,
        *,
        wait: bool = True,
        on_output: Callable[[FileRecord], None],
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """Run every planned file (retry files added by ``on_output`` included)."""
        del wait  # nothing to wait for: every call answers at once
        done: set[str] = set()
        while True:
            todo = [
                r for r in journal.files(states=("planned", "downloaded")) if r.name not in done
            ]
            if not todo:
                return
            record = todo[0]
            done.add(record.name)
            if record.state == "planned":
                out = self.run_file(Path(record.path), self._output_path(record))
                journal.update(record.name, "downloaded", output_path=str(out))
                if progress is not None:
                    progress(f"{record.name}: embedded through the real-time API")
            updated = journal.get(record.name)
            assert updated is not None
            on_output(updated)

    def _output_path(self, record: FileRecord) -> Path:
        return self.outputs_dir / f"{record.name.removesuffix('.jsonl')}.realtime.output.jsonl"

    def run_file(self, input_path: Path, output_path: Path) -> Path:
        """Embed every line of ``input_path`` not yet in ``output_path`` (appending)."""
        output_path.parent.mkdir(parents=True, exist_ok=True)
        _trim_partial_line(output_path)
        done = _written_ids(output_path)
        with input_path.open("rb") as fin, output_path.open("ab") as fout:
            for raw in fin:
                if not raw.strip():
                    continue
                line = json.loads(raw)
                if line.get("custom_id") in done:
                    continue
                result = self._call(line)
                fout.write(json.dumps(result, separators=(",", ":")).encode() + b"\n")
                fout.flush()
            os.fsync(fout.fileno())
        return output_path

    def _call(self, line: dict[str, Any]) -> dict[str, Any]:
        cid = line.get("custom_id")
        body = dict(line.get("body") or {})
        for attempt in range(1, self.attempts + 1):
            try:
                resp = self.client.embeddings.create(**body)
            except openai.APIStatusError as exc:
                _stop_if_not_about_the_input(exc)
                if exc.status_code in (429, 500, 502, 503, 504) and attempt < self.attempts:
                    self.sleep(min(2.0**attempt, 30.0))
                    continue
                return _error_line(cid, exc.status_code, _error_body(exc))
            except openai.APIConnectionError as exc:
                if attempt < self.attempts:
                    self.sleep(min(2.0**attempt, 30.0))
                    continue
                error = {"code": "request_timeout", "message": describe_error(exc)}
                return {"custom_id": cid, "response": None, "error": error}
            except (openai.APIResponseValidationError, ValueError) as exc:
                return _damaged(cid, exc)  # unparseable JSON (ValueError) or wrong shape
            try:
                answer = _body(resp)
            except (AttributeError, TypeError, ValueError) as exc:
                return _damaged(cid, exc)
            return {
                "id": f"rt_{cid}",
                "custom_id": cid,
                "response": {
                    "status_code": 200,
                    "request_id": getattr(resp, "_request_id", None),
                    "body": answer,
                },
                "error": None,
            }
        raise AssertionError("unreachable")  # the loop always returns


def _stop_if_not_about_the_input(exc: openai.APIStatusError) -> None:
    """Stop the run on answers about the key, the account or the model, not the input.

    Writing them as error lines would hold them against the inputs; stopping keeps the
    file ``planned`` with every answered line on disk, so the next run (with the key or
    quota fixed) sends only the rest.
    """
    _, _, kind = classify_error(exc.status_code, _error_body(exc)["error"])
    if kind == "stop":  # the one classifier the loader uses too
        raise BackendError(
            f"the real-time embeddings API answered {exc.status_code}: {describe_error(exc)}",
            hint="check the API key, the account's quota and --model; nothing is lost, run "
            "again to resume",
        ) from exc


def _damaged(cid: Any, exc: Exception) -> dict[str, Any]:
    """An error line for a 200 answer that cannot be read: the provider's trouble, so the
    loader sends its inputs again (``retry``), and the run goes on."""
    log.warning("%s: unreadable answer from the embeddings API (%s)", cid, describe_error(exc))
    message = f"unreadable answer: {type(exc).__name__}: {str(exc)[:200]}"
    return {
        "custom_id": cid,
        "response": None,
        "error": {"code": "malformed_output", "message": message},
    }


def _trim_partial_line(path: Path) -> None:
    """Cut a line left half-written by a crash, so appending resumes cleanly."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


def _written_ids(path: Path) -> set[str]:
    """custom_ids already answered in a (possibly partial) output file."""
    if not path.exists():
        return set()
    ids: set[str] = set()
    with path.open("rb") as fh:
        for raw in fh:
            obj = json.loads(raw)
            if isinstance(obj, dict) and isinstance(obj.get("custom_id"), str):
                ids.add(obj["custom_id"])
    return ids


def _body(resp: Any) -> dict[str, Any]:
    """The response body as a batch output line holds it (embeddings kept as sent)."""
    usage = resp.usage
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": d.index, "embedding": d.embedding} for d in resp.data
        ],
        "model": resp.model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens},
    }


def _error_body(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    if not isinstance(error, dict) or "message" not in error:
        error = {"message": describe_error(exc), "code": None}
    return {"error": redact_obj(error)}  # written to outputs/: no key echoed by the body


def _error_line(cid: Any, status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "custom_id": cid,
        "response": {"status_code": status, "request_id": None, "body": body},
        "error": None,
    }
