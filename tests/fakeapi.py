"""A loopback fake of the OpenAI Batch API, for tests driven by the real ``openai`` SDK.

It serves real HTTP on 127.0.0.1 (ephemeral port) from a thread and implements:

* ``/v1/files``: multipart upload, list (``purpose``, ``order``, ``after``, ``limit``),
  retrieve, ``/content`` download, delete;
* ``/v1/batches``: create, retrieve, list (newest first, ``after``/``limit``/``has_more``),
  cancel;
* ``/v1/embeddings``: the real-time endpoint.

Formats follow OpenAI's: a batch starts ``validating`` and advances one status per
``retrieve`` (``validating -> in_progress -> finalizing -> completed``); validation
failures give a ``failed`` batch with ``errors.data``; output lines come in shuffled
order; failed lines go to the error file in both of OpenAI's shapes.

Vectors are deterministic functions of the text (:func:`fake_vector`), so a test can
check that a table holds exactly what the server computed. Every input the server
embeds is counted (:attr:`FakeBatchAPI.processed`), so tests can assert nothing was
processed twice.

Fault knobs are plain attributes; most are one-shot queues that a test fills before
the call it wants to disturb. See the attribute comments in ``__init__``.

Billing is modelled per identity: :attr:`FakeBatchAPI.billed` counts every input the
provider returned a vector for (batch and real time), keyed by ``(model, dims, text)``;
:attr:`FakeBatchAPI.lost` counts the billed inputs whose result the fake then corrupted
or dropped (the provider lost it), so ``billed[k] <= 1 + lost[k]`` is the "never paid
twice" rule. :attr:`FakeBatchAPI.rejected` counts inputs of requests answered 400.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

ENDPOINT = "/v1/embeddings"
TERMINAL = ("completed", "failed", "expired", "cancelled")
IN_QUEUE = ("validating", "in_progress", "finalizing", "cancelling")


def fake_vector(text: str, dims: int) -> np.ndarray:
    """The unit vector the fake server returns for ``text`` at ``dims`` dimensions."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    vec = np.random.default_rng(seed).standard_normal(dims)
    vec /= np.linalg.norm(vec)
    return vec.astype("<f4")


def word_tokens(text: str) -> int:
    """The fake's default token counter: whitespace-separated words (at least 1)."""
    return max(1, len(text.split()))


class _Abort(Exception):
    """Close the connection without answering (a crash or a dropped connection)."""


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int
    expires_at: int | None = None

    def obj(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": self.expires_at,
        }


@dataclass
class _Batch:
    id: str
    seq: int
    input_file_id: str
    metadata: dict[str, str] | None
    created_at: int
    status: str = "validating"
    lines: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    n_tokens: int = 0
    times: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: {"total": 0, "completed": 0, "failed": 0}
    )
    usage_tokens: int = 0
    expire_keep: int | None = None
    n_bytes: int = 0  # size of the input file (kept: the client may delete the file)
    vanish: int = 0  # retrieves left that answer 404; -1: gone for good

    def obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": ENDPOINT,
            "model": self.model,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + 86400,
            "request_counts": dict(self.counts),
            "metadata": self.metadata,
            "usage": {
                "input_tokens": self.usage_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 0,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.usage_tokens,
            },
        }
        for name in (
            "in_progress_at",
            "finalizing_at",
            "completed_at",
            "failed_at",
            "expired_at",
            "cancelling_at",
            "cancelled_at",
        ):
            out[name] = self.times.get(name)
        return out


class FakeBatchAPI:
    """The fake server. Use as a context manager; ``base_url`` ends in ``/v1``."""

    def __init__(
        self,
        *,
        default_dims: int = 1536,
        model_dims: dict[str, int] | None = None,
        count_tokens: Callable[[str], int] = word_tokens,
        max_lines: int = 50_000,
        max_inputs: int = 50_000,
        max_bytes: int = 200 * 1024 * 1024,
        max_tokens_per_input: int = 8_192,
        seed: int = 0,
    ) -> None:
        self.default_dims = default_dims
        self.model_dims = dict(model_dims or {})
        self.count_tokens = count_tokens
        self.max_lines = max_lines
        self.max_inputs = max_inputs
        self.max_bytes = max_bytes
        self.max_tokens_per_input = max_tokens_per_input
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._ids = 0
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        # --- observations -----------------------------------------------------------
        self.processed: Counter[str] = Counter()  # text -> times embedded in batches
        self.realtime_processed: Counter[str] = Counter()  # text -> times via /embeddings
        self.requests: Counter[str] = Counter()  # "POST /v1/batches" -> count
        self.max_enqueued_tokens = 0  # highest sum of tokens of queued batches, at create
        self.max_enqueued_requests = 0  # same for request lines
        self.deleted_files: list[str] = []
        # (model, dims, text) -> inputs returned with a vector (batch and real time)
        self.billed: Counter[tuple[str, int, str]] = Counter()
        # (model, dims, text) -> billed inputs whose output line the fake corrupted/dropped
        self.lost: Counter[tuple[str, int, str]] = Counter()
        # (model, dims, text) -> inputs of requests answered 400 (bad input, not billed)
        self.rejected: Counter[tuple[str, int, str]] = Counter()
        # --- fault knobs ------------------------------------------------------------
        self.auto_advance = True  # each retrieve moves a batch one status on
        self.token_cap: int | None = None  # queued tokens above this fail at validation
        # False: the token_limit_exceeded message states no number (a clone's wording)
        self.token_cap_states_limit = True
        # (code, message): every batch of at least validation_error_lines lines fails
        # validation with this error while set
        self.validation_error: tuple[str, str] | None = None
        self.validation_error_lines = 1
        # next finishing batches (with at least one successful line) get a hostile output
        # file: "unknown_custom_id" (an extra line for a request nobody sent),
        # "duplicate_line" (one successful line twice), "other_batch" (the output file of
        # the batch that finished before it, or of a made-up one: every line unknown;
        # its own results are billed and `lost`)
        self.hostile_next: list[str] = []
        # next request to each named route is answered 200 with an HTML error page of a
        # proxy: "retrieve", "list" (batches), "content" (file download) instead of the
        # answer; "create", "upload" after the batch or file was made
        self.html_next: list[str] = []
        # 401 answers echo the key sent, like OpenAI's: "plain" (the whole key) or
        # "masked" (OpenAI's "sk-abc...wxyz" form); None: "Incorrect API key provided"
        self.echo_key: str | None = None
        self._key = ""  # the bearer token of the request being answered
        self._last_output: list[bytes] = []
        self.create_faults: list[str] = []  # "429" | "500" | "500-after" | "drop-after"
        self.upload_faults: list[str] = []  # "500" | "500-after" | "drop-after"
        self.retrieve_faults: list[int] = []  # HTTP statuses answered instead of a batch
        self.download_drops = 0  # next N /content answers are cut mid-body
        self.line_faults: dict[str, str] = {}  # custom_id -> "400" | "500" | "timeout"
        self.fail_all_lines = False  # every line gets a 400
        self.expire_next: list[int] = []  # next batches expire keeping N lines done
        self.cancel_keep = 0  # lines a cancelled batch finishes before it stops
        self.accept_output_expires_after = True
        self.retry_after_ms: int | None = 5  # sent with 429/5xx (keeps SDK retries quick)
        self.batch_api = True  # False: /v1/batches answers 404 (a server without it)
        # None: any bearer token is accepted; set() (or a set without the client's key):
        # every route answers 401 invalid_api_key before doing anything
        self.valid_keys: set[str] | None = None
        # next created batches answer 404 on retrieve/cancel and are absent from the list
        # for N retrieves, then come back (and advance as usual); N = -1: gone for good,
        # never processed, never billed (advance_all leaves them alone)
        self.vanish_batches: list[int] = []
        # next /v1/embeddings calls answer these HTTP statuses (401, 429, 500, ...)
        # instead of a result; nothing is billed. The SDK retries 429/5xx itself.
        self.realtime_faults: list[int] = []
        # next finishing batches (with at least one successful line) get one successful
        # output line corrupted: "bad_base64" (every embedding undecodable),
        # "non_object_item" (every data item a string), "invalid_utf8" (raw 0xff bytes
        # inside the line), "truncated_json" (the line cut in half), "wrong_dims" (its
        # first vector cut to half its length), "nan" / "inf" (one value of its first
        # vector). Its inputs were billed: they count in `lost`.
        self.malformed_next: list[str] = []
        # next finishing batches (with at least one successful line) silently omit N of
        # their successful output lines (request_counts still claim them); billed, `lost`
        self.drop_lines_next: list[int] = []
        # next successful /v1/embeddings answers are damaged: "bad_base64" (every
        # embedding undecodable), "non_object_item" (every data item a string),
        # "truncated_json" (the body cut in half), "drop_item" (the last data item left
        # out), "dup_index" (every item says index 0). Billed; the inputs whose vectors
        # are damaged or left out count in `lost`.
        self.realtime_damage: list[str] = []
        # any input containing this substring makes its request fail with 400 invalid
        # input (an output line in batches, the whole HTTP request in real time)
        self.poison: str | None = None
        # models that refuse the `dimensions` field: a request carrying it gets a 400
        # about `dimensions` (an output line in batches, the HTTP answer in real time);
        # other models' vector length comes from model_dims (or default_dims)
        self.reject_dimensions: set[str] = set()
        # --- benchmark knobs (scripts/bench_scale.py) ---------------------------------
        # instant: a created batch runs to its end before create answers (the first
        # retrieve already sees it completed)
        self.instant = False
        # lean: keep no per-text observations (processed, billed) and drop a batch's
        # parsed lines once it ends, so a million inputs do not pile up in the fake
        self.lean = False
        self._kills: dict[str, list[int]] = {}  # point -> [pid, hits left]
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle ---
    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> FakeBatchAPI:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeBatchAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill_at(self, point: str, pid: int, nth: int = 1) -> None:
        """SIGKILL ``pid`` at the ``nth`` hit of ``point``, before answering.

        Points: ``upload`` (file stored), ``create`` (batch created), ``retrieve``,
        ``download`` (half the body sent), ``downloaded`` (whole body sent), ``delete``.
        """
        with self._lock:
            self._kills[point] = [pid, nth]

    def clear_kills(self) -> None:
        """Disarm every kill point (call after a run that was not killed)."""
        with self._lock:
            self._kills.clear()

    def _maybe_kill(self, point: str) -> None:
        with self._lock:
            entry = self._kills.get(point)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._kills[point]
        os.kill(entry[0], signal.SIGKILL)
        time.sleep(0.05)  # let the process die before the connection is dropped
        raise _Abort

    # --------------------------------------------------------------- inspection ---
    def enqueued(self) -> tuple[int, int]:
        """(tokens, request lines) of batches currently in the provider's queue."""
        with self._lock:
            queued = [b for b in self.batches.values() if b.status in IN_QUEUE and b.vanish != -1]
            return sum(b.n_tokens for b in queued), sum(len(b.lines) for b in queued)

    def dims_for(self, model: str, requested: int | None = None) -> int:
        return requested or self.model_dims.get(model, self.default_dims)

    def advance_all(self) -> None:
        """Move every unfinished batch to a terminal status (not those gone for good).

        Models time passing: the provider processes (and bills) a batch whether or not
        anyone polls it.
        """
        with self._lock:
            for batch in self.batches.values():
                while batch.status not in TERMINAL and batch.vanish != -1:
                    self._advance(batch)

    def _new_id(self, prefix: str) -> str:
        with self._lock:
            self._ids += 1
            return f"{prefix}-{self._ids:06d}{self._rng.getrandbits(32):08x}"

    # ------------------------------------------------------------------ routing ---
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                api._dispatch(self, "GET")

            def do_POST(self) -> None:
                api._dispatch(self, "POST")

            def do_DELETE(self) -> None:
                api._dispatch(self, "DELETE")

        return Handler

    def _bad_key_message(self) -> str:
        key = self._key
        if self.echo_key == "plain":
            shown = key
        elif self.echo_key == "masked":
            shown = f"{key[:6]}...{key[-4:]}"
        else:
            return "Incorrect API key provided"
        return (
            f"Incorrect API key provided: {shown}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )

    def _html(self, route: str) -> bool:
        """Whether this call to ``route`` gets an HTML page (one-shot, see html_next)."""
        with self._lock:
            if route in self.html_next:
                self.html_next.remove(route)
                return True
        return False

    def _dispatch(self, req: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(req.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        body = _read_body(req)
        words = {"v1", "files", "batches", "content", "cancel", "embeddings"}
        key = f"{method} /" + "/".join(p if p in words else "{id}" for p in parts)
        with self._lock:
            self.requests[key] += 1
        try:
            auth = req.headers.get("Authorization", "")
            self._key = auth[7:]
            if not auth.startswith("Bearer ") or (
                self.valid_keys is not None and auth[7:] not in self.valid_keys
            ):
                raise _HTTPError(401, self._bad_key_message(), "invalid_api_key")
            if parts[:1] != ["v1"] or (not self.batch_api and parts[1:2] == ["batches"]):
                raise _HTTPError(404, f"no route {url.path}")
            self._route(req, method, parts[1:], query, body)
        except _Abort:
            req.close_connection = True
            _hard_close(req)
        except _HTTPError as exc:
            _send_json(
                req,
                exc.status,
                {
                    "error": {
                        "message": exc.message,
                        "type": "invalid_request_error",
                        "param": None,
                        "code": exc.code,
                    }
                },
                retry_after_ms=self.retry_after_ms,
            )

    def _route(
        self,
        req: BaseHTTPRequestHandler,
        method: str,
        parts: list[str],
        query: dict[str, str],
        body: bytes,
    ) -> None:
        match method, parts:
            case "POST", ["files"]:
                self._upload(req, body)
            case "GET", ["files"]:
                _send_json(req, 200, self._list_files(query))
            case "GET", ["files", fid]:
                _send_json(req, 200, self._file(fid).obj())
            case "GET", ["files", fid, "content"]:
                self._file(fid)
                if self._html("content"):
                    _send_html(req)
                else:
                    self._content(req, fid)
            case "DELETE", ["files", fid]:
                self._delete_file(req, fid)
            case "POST", ["batches"]:
                self._create_batch(req, _json(body))
            case "GET", ["batches"]:
                if self._html("list"):
                    _send_html(req)
                else:
                    _send_json(req, 200, self._list_batches(query))
            case "GET", ["batches", bid] if self._html("retrieve"):
                _send_html(req)
            case "GET", ["batches", bid]:
                self._retrieve(req, bid)
            case "POST", ["batches", bid, "cancel"]:
                _send_json(req, 200, self._cancel(bid))
            case "POST", ["embeddings"]:
                params = _json(body)
                result = self._realtime(params)
                with self._lock:
                    damage = self.realtime_damage.pop(0) if self.realtime_damage else None
                if damage is None:
                    _send_json(req, 200, result)
                else:
                    lost = dict(params)
                    if damage == "drop_item":  # only the left-out input lost its vector
                        lost["input"] = _inputs(params)[-1:]
                    with self._lock:
                        self._count_lost({"body": lost})
                    _send_raw(req, 200, _damaged_realtime(result, damage))
            case _:
                raise _HTTPError(404, f"no route {method} /v1/{'/'.join(parts)}")

    # -------------------------------------------------------------------- files ---
    def _file(self, fid: str) -> _File:
        with self._lock:
            f = self.files.get(fid)
        if f is None:
            raise _HTTPError(404, f"No such File object: {fid}", "file_not_found")
        return f

    def _upload(self, req: BaseHTTPRequestHandler, body: bytes) -> None:
        fields, filename, data = _parse_multipart(req.headers.get("Content-Type", ""), body)
        if data is None or "purpose" not in fields:
            raise _HTTPError(400, "file and purpose are required")
        with self._lock:
            fault = self.upload_faults.pop(0) if self.upload_faults else None
        if fault == "500":
            raise _HTTPError(500, "upload failed", "server_error")
        now = int(time.time())
        seconds = fields.get("expires_after[seconds]")
        f = _File(
            self._new_id("file"),
            filename or "upload.jsonl",
            fields["purpose"],
            data,
            now,
            now + int(seconds) if seconds else now + 30 * 86400,
        )
        with self._lock:
            self.files[f.id] = f
        self._maybe_kill("upload")
        if fault == "500-after":
            raise _HTTPError(500, "upload failed after storing", "server_error")
        if fault == "drop-after":
            raise _Abort
        if self._html("upload"):
            _send_html(req)
            return
        _send_json(req, 200, f.obj())

    def _list_files(self, query: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            files = [f for f in self.files.values() if f.purpose == query.get("purpose", f.purpose)]
        files.sort(key=lambda f: (f.created_at, f.id), reverse=query.get("order") != "asc")
        return _page([f.obj() for f in files], query, default_limit=10_000)

    def _content(self, req: BaseHTTPRequestHandler, fid: str) -> None:
        data = self._file(fid).data
        with self._lock:
            drop = self.download_drops > 0
            self.download_drops -= int(drop)
        req.send_response(200)
        req.send_header("Content-Type", "application/octet-stream")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        half = len(data) // 2
        req.wfile.write(data[:half])
        req.wfile.flush()
        self._maybe_kill("download")
        if drop:
            raise _Abort
        req.wfile.write(data[half:])
        req.wfile.flush()
        self._maybe_kill("downloaded")

    def _delete_file(self, req: BaseHTTPRequestHandler, fid: str) -> None:
        self._file(fid)
        self._maybe_kill("delete")
        with self._lock:
            del self.files[fid]
            self.deleted_files.append(fid)
        _send_json(req, 200, {"id": fid, "object": "file", "deleted": True})

    # ------------------------------------------------------------------ batches ---
    def _create_batch(self, req: BaseHTTPRequestHandler, params: dict[str, Any]) -> None:
        with self._lock:
            fault = self.create_faults.pop(0) if self.create_faults else None
        if fault == "429":
            raise _HTTPError(429, "Rate limit reached for batch creation", "rate_limit_exceeded")
        if fault == "500":
            raise _HTTPError(500, "The server had an error", "server_error")
        batch = self._new_batch(params)
        self._maybe_kill("create")
        if fault == "500-after":
            raise _HTTPError(500, "The server had an error", "server_error")
        if fault == "drop-after":
            raise _Abort
        if self._html("create"):
            _send_html(req)
            return
        _send_json(req, 200, batch.obj())

    def _new_batch(self, params: dict[str, Any]) -> _Batch:
        if params.get("endpoint") != ENDPOINT:
            raise _HTTPError(400, f"endpoint {params.get('endpoint')!r} is not supported here")
        if params.get("completion_window") != "24h":
            raise _HTTPError(400, "completion_window must be '24h'")
        _check_metadata(params.get("metadata"))
        oea = params.get("output_expires_after")
        if oea is not None:
            if not self.accept_output_expires_after:
                raise _HTTPError(400, "Unrecognized request argument: output_expires_after")
            if oea.get("anchor") != "created_at" or not 3600 <= oea.get("seconds", 0) <= 2592000:
                raise _HTTPError(400, "output_expires_after must be 1 hour .. 30 days")
        fid = params.get("input_file_id", "")
        with self._lock:
            f = self.files.get(fid)
            if f is None or f.purpose != "batch":
                raise _HTTPError(400, f"Invalid input_file_id {fid!r}", "invalid_file")
            batch = _Batch(
                self._new_id("batch"),
                len(self.batches),
                fid,
                params.get("metadata"),
                int(time.time()),
            )
            self.batches[batch.id] = batch
            if self.vanish_batches:
                batch.vanish = self.vanish_batches.pop(0)
            batch.n_bytes = len(f.data)
            self._parse_input(batch, f.data)
            while self.instant and batch.status not in TERMINAL and batch.vanish != -1:
                self._advance(batch)
            tokens, lines = self.enqueued()
            self.max_enqueued_tokens = max(self.max_enqueued_tokens, tokens)
            self.max_enqueued_requests = max(self.max_enqueued_requests, lines)
        return batch

    def _parse_input(self, batch: _Batch, data: bytes) -> None:
        """Read lines and tokens up front (queue accounting); errors wait for validation."""
        for raw in data.splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                line = None
            if isinstance(line, dict):
                batch.lines.append(line)
                body = line.get("body") or {}
                batch.n_tokens += sum(self.count_tokens(t) for t in _inputs(body))
            else:
                batch.lines.append({"__invalid__": raw.decode("utf-8", "replace")})

    def _list_batches(self, query: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            batches = sorted(
                (b for b in self.batches.values() if b.vanish == 0),
                key=lambda b: b.seq,
                reverse=True,
            )
            return _page([b.obj() for b in batches], query, default_limit=20, max_limit=100)

    def _retrieve(self, req: BaseHTTPRequestHandler, bid: str) -> None:
        with self._lock:
            fault = self.retrieve_faults.pop(0) if self.retrieve_faults else None
        if fault:
            raise _HTTPError(fault, "temporarily unavailable", "server_error")
        with self._lock:
            batch = self.batches.get(bid)
            if batch is not None and batch.vanish != 0:
                batch.vanish -= int(batch.vanish > 0)
                batch = None
            if batch is None:
                raise _HTTPError(404, f"No batch found with id '{bid}'", "not_found")
            if self.auto_advance:
                self._advance(batch)
            obj = batch.obj()
        self._maybe_kill("retrieve")
        _send_json(req, 200, obj)

    def _cancel(self, bid: str) -> dict[str, Any]:
        with self._lock:
            batch = self.batches.get(bid)
            if batch is None or batch.vanish != 0:
                raise _HTTPError(404, f"No batch found with id '{bid}'", "not_found")
            if batch.status in TERMINAL:
                raise _HTTPError(400, f"Cannot cancel a batch with status '{batch.status}'.")
            batch.status = "cancelling"
            batch.times["cancelling_at"] = int(time.time())
            return batch.obj()

    # ---------------------------------------------------------- batch progress ---
    def _advance(self, batch: _Batch) -> None:
        now = int(time.time())
        if batch.status == "validating":
            errors = self._validate(batch)
            if errors:
                batch.status, batch.errors = "failed", errors
                batch.times["failed_at"] = now
                return
            batch.status = "in_progress"
            batch.times["in_progress_at"] = now
            batch.counts["total"] = len(batch.lines)
            if self.expire_next:
                batch.expire_keep = self.expire_next.pop(0)
        elif batch.status == "in_progress":
            if batch.expire_keep is not None:
                self._finish(batch, "expired", batch.expire_keep, "batch_expired")
            else:
                batch.status = "finalizing"
                batch.times["finalizing_at"] = now
        elif batch.status == "finalizing":
            self._finish(batch, "completed", len(batch.lines), "")
        elif batch.status == "cancelling":
            self._finish(batch, "cancelled", self.cancel_keep, "batch_cancelled")

    def _validate(self, batch: _Batch) -> list[dict[str, Any]]:
        if self.validation_error and len(batch.lines) >= self.validation_error_lines:
            return [_batch_error(*self.validation_error)]
        if not batch.lines:
            return [_batch_error("empty_file", "The input file is empty.")]
        if batch.n_bytes > self.max_bytes:
            return [_batch_error("file_too_large", f"File is larger than {self.max_bytes}.")]
        if len(batch.lines) > self.max_lines:
            return [_batch_error("too_many_tasks", f"More than {self.max_lines} requests.")]
        n_inputs = sum(len(_inputs(line.get("body") or {})) for line in batch.lines)
        if n_inputs > self.max_inputs:
            msg = f"{n_inputs} embedding inputs; the limit is {self.max_inputs}."
            return [_batch_error("too_many_inputs", msg)]
        errors = self._validate_lines(batch)
        if errors:
            return errors
        tokens, _ = self.enqueued()
        others = tokens - batch.n_tokens
        if self.token_cap is not None and others + batch.n_tokens > self.token_cap:
            stated = f"Limit: {self.token_cap:,} enqueued tokens. " * self.token_cap_states_limit
            msg = (
                f"Enqueued token limit reached for {batch.model} in organization org-fake. "
                f"{stated}Please try again once some in_progress batches have been completed."
            )
            return [_batch_error("token_limit_exceeded", msg, line=None)]
        return []

    def _validate_lines(self, batch: _Batch) -> list[dict[str, Any]]:
        seen: set[str] = set()
        for n, line in enumerate(batch.lines, 1):
            if "__invalid__" in line:
                return [_batch_error("invalid_json_line", "This line is not valid JSON.", n)]
            if line.get("method") != "POST":
                return [_batch_error("invalid_method", "method must be POST.", n)]
            if line.get("url") != ENDPOINT:
                return [_batch_error("url_mismatch", "url does not match the endpoint.", n)]
            model = (line.get("body") or {}).get("model")
            batch.model = batch.model or model
            if model != batch.model:
                return [_batch_error("model_mismatch", "All lines must use one model.", n)]
            cid = line.get("custom_id")
            if not isinstance(cid, str) or cid in seen:
                msg = "The custom_id for this request is a duplicate of another request."
                return [_batch_error("duplicate_custom_id", msg, n)]
            seen.add(cid)
        return []

    def _finish(self, batch: _Batch, status: str, n_done: int, stop_code: str) -> None:
        ok: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (result, request line)
        bad: list[bytes] = []
        for n, line in enumerate(batch.lines):
            if n < n_done:
                result = self._run_line(line)
                if result["error"] is None and result["response"]["status_code"] == 200:
                    ok.append((result, line))
                else:
                    bad.append(json.dumps(result).encode())
                batch.usage_tokens += _usage(result)
            else:
                bad.append(json.dumps(_stopped_line(line, stop_code)).encode())
        self._rng.shuffle(ok)
        self._rng.shuffle(bad)
        n_ok = len(ok)
        out = self._damage_output(ok)
        batch.output_file_id = self._store_output(batch, "output", out)
        batch.error_file_id = self._store_output(batch, "error", bad)
        batch.counts = {"total": len(batch.lines), "completed": n_ok, "failed": len(bad)}
        batch.status = status
        batch.times[f"{status}_at"] = int(time.time())
        if self.lean:
            batch.lines = []

    def _damage_output(self, ok: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[bytes]:
        """Apply malformed_next / drop_lines_next to a finishing batch's good lines."""
        out = [json.dumps(result).encode() for result, _ in ok]
        if not ok:
            return out
        kind = self.malformed_next.pop(0) if self.malformed_next else None
        drop = self.drop_lines_next.pop(0) if self.drop_lines_next else 0
        if kind is not None:
            result, line = ok[0]
            out[0] = _malformed(result, kind)
            self._count_lost(line)
        if drop > 0:
            start = 1 if kind is not None else 0
            for _, line in ok[start : start + drop]:
                self._count_lost(line)
            out = out[:start] + out[start + drop :]
        hostile = self.hostile_next.pop(0) if self.hostile_next else None
        if hostile == "unknown_custom_id":
            stray = json.loads(out[-1])
            stray["custom_id"] = "cb-" + hashlib.sha256(b"nobody sent this").hexdigest()[:40]
            out.insert(len(out) // 2, json.dumps(stray).encode())
        elif hostile == "duplicate_line":
            out.append(out[0])
        elif hostile == "other_batch":
            for _, line in ok:
                self._count_lost(line)
            mine = out
            out = self._last_output or [_renamed(raw) for raw in out]
            self._last_output = mine
            return out
        elif hostile is not None:
            raise ValueError(f"unknown hostile output {hostile!r}")
        self._last_output = out
        return out

    def _count_lost(self, line: dict[str, Any]) -> None:
        body = line["body"]
        model = body.get("model", "")
        dims = self.dims_for(model, body.get("dimensions"))
        for text in _inputs(body):
            self.lost[(model, dims, text)] += 1

    def _store_output(self, batch: _Batch, kind: str, lines: list[bytes]) -> str | None:
        if not lines:
            return None
        data = b"\n".join(lines) + b"\n"
        f = _File(
            self._new_id("file"), f"{batch.id}_{kind}.jsonl", "batch_output", data, int(time.time())
        )
        self.files[f.id] = f
        return f.id

    def _run_line(self, line: dict[str, Any]) -> dict[str, Any]:
        cid = line["custom_id"]
        fault = self.line_faults.pop(cid, None)
        if self.fail_all_lines:
            fault = "400"
        if fault == "timeout":
            err = {"code": "request_timeout", "message": "The request timed out."}
            return {"id": f"batch_req_{cid}", "custom_id": cid, "response": None, "error": err}
        body = line["body"]
        if self._refuses_dimensions(body):
            return _response_line(cid, 400, {"error": _DIMENSIONS_REFUSED})
        texts = _inputs(body)
        too_long = [t for t in texts if self.count_tokens(t) > self.max_tokens_per_input]
        poisoned = self._poisoned(texts)
        if fault in ("400", "500") or too_long or "" in texts or poisoned:
            status = 500 if fault == "500" else 400
            msg = "The server had an error." if status == 500 else "Invalid input."
            if status == 400:
                self._count_rejected(body, texts)
            if too_long:
                n = self.count_tokens(too_long[0])
                msg = f"This model's maximum context length is {self.max_tokens_per_input} "
                msg += f"tokens, however you requested {n} tokens."
            return _response_line(
                cid,
                status,
                {
                    "error": {
                        "message": msg,
                        "type": "invalid_request_error" if status == 400 else "server_error",
                        "param": None,
                        "code": None,
                    }
                },
            )
        return _response_line(cid, 200, self._embed(body, texts, self.processed))

    def _embed(
        self, body: dict[str, Any], texts: list[str], counter: Counter[str]
    ) -> dict[str, Any]:
        model = body.get("model", "")
        dims = self.dims_for(model, body.get("dimensions"))
        b64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(texts):
            vec = fake_vector(text, dims)
            if not self.lean:
                counter[text] += 1
                self.billed[(model, dims, text)] += 1
            emb: Any = base64.b64encode(vec.tobytes()).decode() if b64 else vec.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = sum(self.count_tokens(t) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _realtime(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            fault = self.realtime_faults.pop(0) if self.realtime_faults else None
        if fault == 401:
            raise _HTTPError(401, self._bad_key_message(), "invalid_api_key")
        if fault == 429:
            raise _HTTPError(429, "Rate limit reached for requests", "rate_limit_exceeded")
        if fault:
            raise _HTTPError(fault, "The server had an error", "server_error")
        texts = _inputs(body)
        if not texts or "" in texts:
            raise _HTTPError(400, "'$.input' is invalid.")
        if self._refuses_dimensions(body):
            raise _HTTPError(400, _DIMENSIONS_REFUSED["message"])
        with self._lock:
            if self._poisoned(texts):
                self._count_rejected(body, texts)
                raise _HTTPError(400, "Invalid input.", "invalid_input")
            return self._embed(body, texts, self.realtime_processed)

    def _refuses_dimensions(self, body: dict[str, Any]) -> bool:
        return body.get("dimensions") is not None and body.get("model") in self.reject_dimensions

    def _poisoned(self, texts: list[str]) -> bool:
        return self.poison is not None and any(self.poison in t for t in texts)

    def _count_rejected(self, body: dict[str, Any], texts: list[str]) -> None:
        model = body.get("model", "")
        dims = self.dims_for(model, body.get("dimensions"))
        for text in texts:
            self.rejected[(model, dims, text)] += 1


# ------------------------------------------------------------------- helpers ---
_DIMENSIONS_REFUSED = {
    "message": "This model does not support specifying dimensions.",
    "type": "invalid_request_error",
    "param": "dimensions",
    "code": None,
}


def _inputs(body: dict[str, Any]) -> list[str]:
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _usage(result: dict[str, Any]) -> int:
    response = result.get("response") or {}
    usage = (response.get("body") or {}).get("usage") or {}
    return int(usage.get("total_tokens", 0))


def _response_line(cid: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"batch_req_{hashlib.sha256(cid.encode()).hexdigest()[:16]}",
        "custom_id": cid,
        "response": {"status_code": status, "request_id": f"req_{cid[-8:]}", "body": body},
        "error": None,
    }


def _malformed(result: dict[str, Any], kind: str) -> bytes:
    """One successful output line, corrupted the way ``kind`` says (its vectors lost)."""
    result = json.loads(json.dumps(result))
    data = result["response"]["body"]["data"]
    if kind == "bad_base64":
        for item in data:
            item["embedding"] = "@@not*base64@@"
        return json.dumps(result).encode()
    if kind == "non_object_item":
        result["response"]["body"]["data"] = ["embedding" for _ in data]
        return json.dumps(result).encode()
    if kind in ("wrong_dims", "nan", "inf"):
        _bad_values(data, kind)
        return json.dumps(result).encode()  # NaN and Infinity as JSON's non-standard words
    raw = json.dumps(result).encode()
    if kind == "invalid_utf8":
        return raw.replace(b'"model": "', b'"model": "\xff\xfe', 1)
    if kind == "truncated_json":
        return raw[: len(raw) // 2]
    raise ValueError(f"unknown malformed kind {kind!r}")


def _renamed(raw: bytes) -> bytes:
    """An output line of a made-up other batch: another custom_id, same shape."""
    obj = json.loads(raw)
    obj["custom_id"] = "cb-" + hashlib.sha256(f"other {obj['custom_id']}".encode()).hexdigest()[:40]
    return json.dumps(obj).encode()


def _bad_values(data: list[dict[str, Any]], kind: str) -> None:
    """Damage the first vector of a line: cut to half ("wrong_dims") or one NaN/inf."""
    emb = data[0]["embedding"]
    b64 = isinstance(emb, str)
    vec = np.frombuffer(base64.b64decode(emb), "<f4").copy() if b64 else np.asarray(emb, "<f4")
    if kind == "wrong_dims":
        vec = vec[: max(1, len(vec) // 2)]
    else:
        vec[len(vec) // 2] = np.nan if kind == "nan" else np.inf
    data[0]["embedding"] = base64.b64encode(vec.tobytes()).decode() if b64 else vec.tolist()


def _damaged_realtime(result: dict[str, Any], kind: str) -> bytes:
    """A real-time /v1/embeddings answer, damaged the way ``kind`` says."""
    result = json.loads(json.dumps(result))
    data = result["data"]
    if kind == "bad_base64":
        for item in data:
            item["embedding"] = "@@not*base64@@"
    elif kind == "non_object_item":
        result["data"] = ["embedding" for _ in data]
    elif kind == "drop_item":
        result["data"] = data[:-1]
    elif kind == "dup_index":
        for item in data:
            item["index"] = 0
    elif kind == "truncated_json":
        raw = json.dumps(result).encode()
        return raw[: len(raw) // 2]
    else:
        raise ValueError(f"unknown real-time damage {kind!r}")
    return json.dumps(result).encode()


def _stopped_line(line: dict[str, Any], code: str) -> dict[str, Any]:
    message = {
        "batch_expired": "This request could not be executed before the completion window expired.",
        "batch_cancelled": "This request was cancelled.",
    }[code]
    return {
        "id": f"batch_req_{hashlib.sha256(str(line.get('custom_id')).encode()).hexdigest()[:16]}",
        "custom_id": line.get("custom_id"),
        "response": None,
        "error": {"code": code, "message": message},
    }


def _batch_error(code: str, message: str, line: int | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line}


def _check_metadata(meta: Any) -> None:
    if meta is None:
        return
    if not isinstance(meta, dict) or len(meta) > 16:
        raise _HTTPError(400, "metadata must be an object with at most 16 keys")
    for k, v in meta.items():
        if not isinstance(v, str) or len(k) > 64 or len(v) > 512:
            raise _HTTPError(400, f"invalid metadata entry {k!r}")


def _page(
    items: list[dict[str, Any]],
    query: dict[str, str],
    *,
    default_limit: int,
    max_limit: int | None = None,
) -> dict[str, Any]:
    limit = int(query.get("limit", default_limit))
    if limit < 1 or (max_limit is not None and limit > max_limit):
        raise _HTTPError(400, f"limit must be between 1 and {max_limit or default_limit}")
    after = query.get("after")
    if after is not None:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }


def _read_body(req: BaseHTTPRequestHandler) -> bytes:
    if req.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(req.rfile.readline().strip(), 16)
            if size == 0:
                req.rfile.readline()
                return b"".join(chunks)
            chunks.append(req.rfile.read(size))
            req.rfile.readline()
    length = int(req.headers.get("Content-Length") or 0)
    return req.rfile.read(length) if length else b""


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError as exc:
        raise _HTTPError(400, "request body is not valid JSON") from exc
    if not isinstance(value, dict):
        raise _HTTPError(400, "request body must be a JSON object")
    return value


def _parse_multipart(ctype: str, body: bytes) -> tuple[dict[str, str], str | None, bytes | None]:
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {ctype}\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}
    filename: str | None = None
    data: bytes | None = None
    for part in msg.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name == "file":
            filename, data = part.get_filename(), payload
        elif name:
            fields[name] = payload.decode()
    return fields, filename, data


def _send_json(
    req: BaseHTTPRequestHandler, status: int, obj: Any, retry_after_ms: int | None = None
) -> None:
    data = json.dumps(obj).encode()
    req.send_response(status)
    req.send_header("Content-Type", "application/json")
    req.send_header("Content-Length", str(len(data)))
    if retry_after_ms is not None and (status == 429 or status >= 500):
        req.send_header("retry-after-ms", str(retry_after_ms))
    req.end_headers()
    req.wfile.write(data)


_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>\n"
)


def _send_html(req: BaseHTTPRequestHandler, status: int = 200) -> None:
    """A proxy's error page, answered with ``status`` (200: as if it were the answer)."""
    req.send_response(status)
    req.send_header("Content-Type", "text/html")
    req.send_header("Content-Length", str(len(_HTML_PAGE)))
    req.end_headers()
    req.wfile.write(_HTML_PAGE)


def _send_raw(req: BaseHTTPRequestHandler, status: int, data: bytes) -> None:
    req.send_response(status)
    req.send_header("Content-Type", "application/json")
    req.send_header("Content-Length", str(len(data)))
    req.end_headers()
    req.wfile.write(data)


def _hard_close(req: BaseHTTPRequestHandler) -> None:
    try:
        req.wfile.flush()
        req.connection.shutdown(2)  # type: ignore[attr-defined]
    except OSError:
        pass


@contextmanager
def running(**kwargs: Any) -> Iterator[FakeBatchAPI]:
    """Start a :class:`FakeBatchAPI` for the duration of a ``with`` block."""
    with FakeBatchAPI(**kwargs) as api:
        yield api
