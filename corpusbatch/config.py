"""Provider profiles, model specs and run settings.

Precedence, resolved once in the CLI: command-line flag > config file
(``corpusbatch.toml`` in the working directory, or ``--config``) > built-in default.
The environment is read only for API keys, and only when a remote provider was chosen
explicitly: a key lying in the environment never makes corpusbatch spend money.
Library functions take a :class:`Settings` and read no environment themselves.

Remembered settings are not trusted to direct keys. `collect`, `status`, `cancel`,
`verify` and `search` fill unset options from the settings the index remembers
(``store.db``), but that file is state this run did not write. The rule:

* Remembered settings may choose a built-in provider (``local``, ``openai``,
  ``deepinfra``); that provider's built-in key variable and built-in base URL then
  apply. Those strings come from this code, never from the state.
* A ``base_url`` or ``api_key_env`` that comes only from the remembered state (not from
  a flag or the config file of this run) and differs from the provider's built-in value
  is never used to read a key or to send one: the command stops with a
  :class:`ConfigError` (exit 2) that says which flag confirms it. A remembered value that
  looks like a key itself is not repeated in the message. For the local provider, which
  reads no key, such values are ignored.
* A flag or the config file naming ``base_url``/``api_key_env`` confirms it and wins.
* ``api_key_env`` from a flag or the config file must be the NAME of an environment
  variable: a value that is no plausible variable name or looks like a key is refused
  without being stored, logged or echoed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigError

LOCAL_MODEL = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Limits:
    """Hard limits of one provider's Batch API for /v1/embeddings (None = no limit)."""

    max_lines_per_file: int = 50_000
    max_inputs_per_file: int = 50_000  # embedding inputs summed over all lines
    max_bytes_per_file: int = 190_000_000  # OpenAI rejects > 200 MiB; keep a margin
    max_tokens_per_file: int | None = None
    # OpenAI takes 2,048 inputs per request; a lost or failed output line re-bills all of
    # its inputs, so lines carry 128 (docs/benchmarks/request_size.md: +0.5% input bytes
    # and no measurable batch time against 2,048, a 16x smaller loss per lost line)
    max_inputs_per_request: int = 128
    max_tokens_per_request: int = 300_000
    max_tokens_per_input: int = 8_191
    max_enqueued_tokens: int | None = 3_000_000  # OpenAI tier 1 for text-embedding-3-*
    max_enqueued_requests: int | None = 1_000_000


# Token counts of a model whose own tokenizer corpusbatch cannot load are estimates:
# cl100k_base stands in for it. Such a model's chunks, request lines and files are
# planned against TOKEN_MARGIN of each token limit, which stays under the limit as long
# as the model's tokenizer counts at most 1/TOKEN_MARGIN (1.33x) what cl100k_base
# counts. The provider's reported usage (`usage.prompt_tokens` of every output line) is
# compared with the estimate as each file loads; when it counted more than the estimate
# the ratio is remembered (ModelFacts.token_ratio) and later plans use
# min(TOKEN_MARGIN, TOKEN_HEADROOM / ratio) of each limit instead.
TOKEN_MARGIN = 0.75
TOKEN_HEADROOM = 0.9


@dataclass(frozen=True)
class ModelSpec:
    """What the planner and chunker must know about one embedding model."""

    name: str
    tokenizer: str  # "cl100k_base" or "local-minilm"
    max_input_tokens: int  # tokens of text per input, special tokens excluded
    dimensions: int  # native vector length; 0: unknown (a model not built in, not probed)
    default_chunk_tokens: int
    batch_price_per_mtok: float = 0.0  # USD per 1M input tokens, Batch API
    realtime_price_per_mtok: float = 0.0  # USD per 1M input tokens, real-time API
    # accepts the `dimensions` request field; None: unknown (a model not built in)
    supports_dimensions: bool | None = False
    # share of every token limit that plans may fill: 1.0 when `tokenizer` is the model's
    # own (counts are exact), below 1 when it only stands in for it (counts are estimates)
    token_margin: float = 1.0
    builtin: bool = True  # False: a model corpusbatch does not know (learned at run time)

    @property
    def estimated_tokens(self) -> bool:
        """Token counts are an estimate (the model's own tokenizer is not available)."""
        return self.token_margin < 1.0


@dataclass(frozen=True)
class ModelFacts:
    """What an index learned at run time about a model it does not know.

    Kept in ``state.db``'s ``meta`` table per target (provider and base URL) and model
    (``pipeline.with_learned`` reads them): the native vector length and whether the
    ``dimensions`` request field is accepted (from a one-input probe, or from the
    provider's answer to it), and the highest ratio of the provider's reported
    ``usage.prompt_tokens`` to corpusbatch's estimate seen so far (above 1: the
    estimate was low, and later plans keep further under the limits).
    """

    dimensions: int | None = None
    accepts_dimensions: bool | None = None
    token_ratio: float | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | None) -> ModelFacts:
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            return cls()
        if not isinstance(data, dict):
            return cls()
        dims, accepts, ratio = (
            data.get(k) for k in ("dimensions", "accepts_dimensions", "token_ratio")
        )
        return cls(
            dimensions=dims if isinstance(dims, int) and dims > 0 else None,
            accepts_dimensions=accepts if isinstance(accepts, bool) else None,
            token_ratio=float(ratio)
            if isinstance(ratio, int | float) and math.isfinite(ratio) and ratio > 0
            else None,
        )

    def merged(self, other: ModelFacts) -> ModelFacts:
        """These facts with ``other``'s known ones on top (a token ratio only grows)."""
        ratios = [r for r in (self.token_ratio, other.token_ratio) if r is not None]
        return ModelFacts(
            dimensions=other.dimensions or self.dimensions,
            accepts_dimensions=other.accepts_dimensions
            if other.accepts_dimensions is not None
            else self.accepts_dimensions,
            token_ratio=max(ratios) if ratios else None,
        )


def token_scale(spec: ModelSpec, facts: ModelFacts | None) -> float:
    """Share of each token limit a plan for ``spec`` may fill (see TOKEN_MARGIN)."""
    if not spec.estimated_tokens:
        return 1.0
    ratio = facts.token_ratio if facts is not None else None
    if ratio is not None and ratio > 1.0:
        return min(spec.token_margin, TOKEN_HEADROOM / ratio)
    return spec.token_margin


def planning_limits(limits: Limits, scale: float) -> Limits:
    """``limits`` with every token limit scaled by ``scale`` (estimated token counts)."""
    if scale >= 1.0:
        return limits

    def cut(value: int | None) -> int | None:
        return None if value is None else max(1, int(value * scale))

    return replace(
        limits,
        max_tokens_per_file=cut(limits.max_tokens_per_file),
        max_tokens_per_request=max(1, int(limits.max_tokens_per_request * scale)),
        max_tokens_per_input=max(1, int(limits.max_tokens_per_input * scale)),
        max_enqueued_tokens=cut(limits.max_enqueued_tokens),
    )


@dataclass(frozen=True)
class Profile:
    """A provider: where to send batches, how to authenticate, its limits and models."""

    name: str
    base_url: str | None
    api_key_env: str | None
    limits: Limits
    models: dict[str, ModelSpec]
    default_model: str
    remote: bool = True

    def model(self, name: str | None) -> ModelSpec:
        name = name or self.default_model
        if name in self.models:
            return self.models[name]
        if not self.remote:
            raise ConfigError(
                f"model {name!r} is not available on the local backend",
                hint=f"use --model {self.default_model} or choose a remote --provider",
            )
        # A model corpusbatch does not know: count with cl100k_base and plan within
        # TOKEN_MARGIN of every token limit, since its own tokenizer may produce more
        # tokens for the same text. Its vector length and whether it accepts
        # `dimensions` are learned at run time (Settings.model_spec applies them).
        return ModelSpec(
            name=name,
            tokenizer="cl100k_base",
            max_input_tokens=int(self.limits.max_tokens_per_input * TOKEN_MARGIN),
            dimensions=0,
            default_chunk_tokens=384,
            supports_dimensions=None,
            token_margin=TOKEN_MARGIN,
            builtin=False,
        )


_OPENAI_MODELS = {
    "text-embedding-3-small": ModelSpec(
        "text-embedding-3-small", "cl100k_base", 8_191, 1536, 512, 0.01, 0.02, True
    ),
    "text-embedding-3-large": ModelSpec(
        "text-embedding-3-large", "cl100k_base", 8_191, 3072, 512, 0.065, 0.13, True
    ),
    "text-embedding-ada-002": ModelSpec(
        "text-embedding-ada-002", "cl100k_base", 8_191, 1536, 512, 0.05, 0.10, False
    ),
}

# DeepInfra models use their own tokenizers, which corpusbatch cannot load offline;
# cl100k_base counts with a 25% margin stand in (max_input_tokens below is the margin'd
# budget, token_margin the same margin on request and file token limits). Prices:
# real-time list price, batch 20% below it. Override in corpusbatch.toml.
_DEEPINFRA_MODELS = {
    "BAAI/bge-m3": ModelSpec(
        "BAAI/bge-m3", "cl100k_base", 6_000, 1024, 512, 0.008, 0.010, token_margin=TOKEN_MARGIN
    ),
    "Qwen/Qwen3-Embedding-8B": ModelSpec(
        "Qwen/Qwen3-Embedding-8B",
        "cl100k_base",
        6_000,
        4096,
        512,
        0.008,
        0.010,
        supports_dimensions=True,
        token_margin=TOKEN_MARGIN,
    ),
    "intfloat/multilingual-e5-large": ModelSpec(
        "intfloat/multilingual-e5-large",
        "cl100k_base",
        380,
        1024,
        256,
        0.008,
        0.010,
        token_margin=TOKEN_MARGIN,
    ),
}

PROFILES: dict[str, Profile] = {
    "local": Profile(
        name="local",
        base_url=None,
        api_key_env=None,
        # The local backend has no provider limits; keep files small so a crash loses
        # little work and progress is fine-grained.
        limits=Limits(
            max_lines_per_file=500,
            max_inputs_per_file=512,  # ~20 s of CPU: a killed run loses little
            max_bytes_per_file=50_000_000,
            max_inputs_per_request=64,
            max_tokens_per_request=64 * 256,
            max_tokens_per_input=254,
            max_enqueued_tokens=None,
            max_enqueued_requests=None,
        ),
        models={
            # MiniLM reads 256 word-pieces including [CLS] and [SEP]: 254 of text.
            LOCAL_MODEL: ModelSpec(LOCAL_MODEL, "local-minilm", 254, 384, 254),
        },
        default_model=LOCAL_MODEL,
        remote=False,
    ),
    "openai": Profile(
        name="openai",
        base_url=None,
        api_key_env="OPENAI_API_KEY",
        limits=Limits(),
        models=_OPENAI_MODELS,
        default_model="text-embedding-3-small",
    ),
    "deepinfra": Profile(
        name="deepinfra",
        base_url="https://api.deepinfra.com/v1/openai",
        api_key_env="DEEPINFRA_TOKEN",
        limits=Limits(max_enqueued_tokens=None, max_enqueued_requests=None),
        models=_DEEPINFRA_MODELS,
        default_model="BAAI/bge-m3",
    ),
}


@dataclass
class Settings:
    """Everything a run needs, already resolved from flags, config file and defaults."""

    index_dir: Path = Path(".corpusbatch")
    table: str = "chunks"
    provider: str = "local"
    model: str | None = None
    dimensions: int | None = None  # request fewer dimensions (text-embedding-3 only)
    input_prefix: str = ""
    chunk_tokens: int | None = None  # default: the model's default_chunk_tokens
    overlap_tokens: int = 0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    base_url: str | None = None  # overrides the profile's
    api_key_env: str | None = None  # overrides the profile's
    limits: dict[str, int | None] = field(default_factory=dict)  # overrides Limits fields
    prices: dict[str, float] = field(default_factory=dict)  # batch/realtime per 1M
    max_cost: float | None = None
    # Embed through the real-time API instead of the Batch API when a run's plan has at
    # most this many tokens (small nightly deltas: seconds instead of hours, at the
    # real-time price). None: always the Batch API.
    realtime_under: int | None = None
    poll_interval: float = 30.0
    delete_remote_files: bool = True
    max_attempts: int = 3  # per chunk, across resubmissions
    # Seconds a batch may answer 404 (and be absent from the provider's batch list)
    # before its file is sent again as a new batch. Shorter: fresher results after a
    # provider really lost a batch; longer: less risk of paying twice for a batch that
    # was only hidden for a while. Counted across runs, so `--no-wait` cron jobs see it.
    missing_batch_grace: float = 3600.0
    scan_workers: int | None = None  # processes that read and chunk; None: the cores available
    # For a model corpusbatch does not know (any model of a generic provider, a DeepInfra
    # model outside the built-in list): its native vector length, and whether it accepts
    # the `dimensions` request field. Unset, both are learned from the provider on the
    # first `index` (a one-input probe, priced and shown) and kept in the index.
    model_dimensions: int | None = None
    model_accepts_dimensions: bool | None = None
    # What the index learned about the model (ModelFacts); filled in by the pipeline from
    # the index directory, not a config key.
    learned: ModelFacts | None = field(default=None, repr=False, compare=False)
    # Where the published table lives: a local path or an object store URI (s3://,
    # gs://, az://...). None: ``index_dir/lancedb``. The journal, store.db and staging
    # stay in ``index_dir`` whatever it is.
    db: str | None = None
    # LanceDB ``storage_options`` for ``db`` (endpoint, region, credentials): from the
    # ``[storage]`` table of corpusbatch.toml only, never a flag, never remembered.
    storage: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    # This writer's share of a table written by several: its sources are published as
    # ``NAMESPACE/path`` and it never reads, replaces or deletes rows outside that
    # prefix. Empty: the writer owns the whole table (a table with one writer).
    namespace: str = ""

    def __post_init__(self) -> None:
        if self.api_key_env is not None and not plausible_env_name(self.api_key_env):
            raise ConfigError(_NOT_A_KEY, hint=_NOT_A_KEY_HINT)
        if self.db is not None:
            check_db_uri(self.db)
        if not isinstance(self.storage, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int | float | bool)
            for k, v in self.storage.items()
        ):
            raise ConfigError(
                '[storage] takes string options, e.g. aws_endpoint = "http://host:9000"'
            )
        self.storage = {
            k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in self.storage.items()
        }
        if self.namespace and not _NAMESPACE.fullmatch(self.namespace):
            raise ConfigError(
                f"namespace {self.namespace!r} is not a plain name",
                hint="use letters, digits, '.', '_' and '-' (it becomes a prefix of every "
                "source path: NAME/path)",
            )

    @property
    def source_prefix(self) -> str:
        """What every source this writer publishes starts with ('' without a namespace)."""
        return f"{self.namespace}/" if self.namespace else ""

    def profile(self) -> Profile:
        base = PROFILES.get(self.provider)
        if base is None:
            if not self.base_url:
                raise ConfigError(
                    f"unknown provider {self.provider!r}",
                    hint=f"choose one of {', '.join(PROFILES)} or pass --base-url",
                )
            base = replace(
                PROFILES["openai"],
                name=self.provider,
                models={},
                default_model=self.model or "",
            )
        profile = replace(
            base,
            base_url=self.base_url or base.base_url,
            api_key_env=self.api_key_env or base.api_key_env,
        )
        if self.limits:
            unknown = set(self.limits) - {f.name for f in dataclasses.fields(Limits)}
            if unknown:
                raise ConfigError(f"unknown limit(s) {sorted(unknown)} in config")
            overrides: dict[str, Any] = dict(self.limits)
            profile = replace(profile, limits=replace(profile.limits, **overrides))
        return profile

    def model_spec(self) -> ModelSpec:
        """The model's spec; for a model not built in, with what is declared
        (``model_dimensions``, ``model_accepts_dimensions``) or was learned (``learned``)
        about it, and its token limits tightened by a learned token ratio."""
        profile = self.profile()
        spec = profile.model(self.model)
        learned = self.learned or ModelFacts()
        if not spec.builtin:
            declared = self.model_accepts_dimensions
            spec = replace(
                spec,
                dimensions=self.model_dimensions or learned.dimensions or 0,
                supports_dimensions=declared
                if declared is not None
                else learned.accepts_dimensions,
            )
        scale = token_scale(spec, learned)
        if scale < spec.token_margin:
            # the input limit the margin'd budget stood for, times the tighter share
            stated = min(
                spec.max_input_tokens / spec.token_margin, profile.limits.max_tokens_per_input
            )
            tight = int(stated * scale)
            spec = replace(
                spec,
                token_margin=scale,
                max_input_tokens=max(1, min(spec.max_input_tokens, tight)),
            )
        if self.prices:
            spec = replace(
                spec,
                batch_price_per_mtok=self.prices.get("batch", spec.batch_price_per_mtok),
                realtime_price_per_mtok=self.prices.get("realtime", spec.realtime_price_per_mtok),
            )
        return spec

    def effective_chunk_tokens(self) -> int:
        spec = self.model_spec()
        limit = min(spec.max_input_tokens, self.profile().limits.max_tokens_per_input)
        size = self.chunk_tokens or spec.default_chunk_tokens
        nominal = limit
        if self.learned is not None and self.learned.token_ratio:
            # a limit tightened by a learned token ratio cuts chunks; it does not refuse
            # a chunk size that fitted the limit as stated
            nominal = replace(self, learned=None).effective_limit()
        if size > nominal:
            raise ConfigError(
                f"chunk size {size} exceeds {spec.name}'s {nominal}-token input limit",
                hint="lower --chunk-tokens or choose another model",
            )
        if self.overlap_tokens < 0 or self.overlap_tokens >= size:
            raise ConfigError(
                f"overlap {self.overlap_tokens} must be >= 0 and below the chunk size {size}",
                hint="lower --overlap",
            )
        return min(size, limit)

    def effective_limit(self) -> int:
        """Tokens one chunk may have under the model's and the provider's input limit."""
        spec = self.model_spec()
        return min(spec.max_input_tokens, self.profile().limits.max_tokens_per_input)


_SETTINGS_KEYS = {f.name for f in dataclasses.fields(Settings)} - {"learned"}
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_URI_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def is_remote_uri(db: str) -> bool:
    """Whether ``db`` names an object store (``s3://``, ``gs://``, ``az://``...) rather
    than a local directory."""
    match = _URI_SCHEME.match(db)
    return match is not None and match.group(1).lower() != "file"


def check_db_uri(db: str) -> None:
    """Refuse a table URI that carries credentials: they belong in the environment or
    ``[storage]``, not in a value that is remembered and shown."""
    if not isinstance(db, str) or not db.strip():
        raise ConfigError("--db takes a local path or a URI such as s3://bucket/prefix")
    if not is_remote_uri(db):
        return
    parts = urlsplit(db)
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"the table URI {redact_url(db)} carries credentials or options",
            hint="give just scheme://bucket/prefix; credentials and endpoint come from the "
            "environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...) or [storage] in "
            "corpusbatch.toml",
        )


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a ``corpusbatch.toml``; keys are Settings field names."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    data = {k.replace("-", "_"): v for k, v in data.items()}
    if "api_key" in data:
        raise ConfigError(
            f"{path} holds an API key; secrets do not belong in config files",
            hint="remove it and name the environment variable with api_key_env instead",
        )
    unknown = set(data) - _SETTINGS_KEYS
    if unknown:
        raise ConfigError(
            f"unknown key(s) {sorted(unknown)} in {path}",
            hint=f"valid keys: {', '.join(sorted(_SETTINGS_KEYS))}",
        )
    env = data.get("api_key_env")
    if env is not None and not (isinstance(env, str) and plausible_env_name(env)):
        raise ConfigError(
            f"api_key_env in {path} takes the NAME of an environment variable, not the key itself",
            hint=_NOT_A_KEY_HINT,
        )
    return data


# -- api_key_env: a variable's name, never the key -------------------------------------
_NOT_A_KEY = "--api-key-env takes the NAME of an environment variable, not the key itself"
_NOT_A_KEY_HINT = (
    "export the key as e.g. OPENAI_API_KEY and pass that name "
    "(if you pasted a real key somewhere, consider rotating it)"
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Prefixes of common API keys and tokens (case-sensitive). A value is taken for a key when
# at least 8 characters follow the prefix, so a variable name like ``hf_token`` passes.
_KEY_PREFIXES = (
    "sk-",
    "sk_",
    "rk_",
    "pk_",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "hf_",
    "gsk_",
    "r8_",
    "pplx-",
    "nvapi-",
    "jina_",
)
_AWS_KEY_ID = re.compile(r"(AKIA|ASIA)[A-Z0-9]{16}")


def looks_like_key(value: str) -> bool:
    """True if ``value`` looks like an API key or token rather than a variable name."""
    if any(value.startswith(p) and len(value) - len(p) >= 8 for p in _KEY_PREFIXES):
        return True
    if value.startswith("sk-") or _AWS_KEY_ID.fullmatch(value):
        return True
    mixed = (
        any(c.islower() for c in value)
        and any(c.isupper() for c in value)
        and any(c.isdigit() for c in value)
    )
    if mixed and len(value) >= 20 and "_" not in value:
        return True
    return mixed and len(value) >= 24 and _entropy(value) >= 4.2


def _entropy(value: str) -> float:
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def plausible_env_name(value: str) -> bool:
    """True if ``value`` can be an environment variable's name and is not a key."""
    return bool(_ENV_NAME.fullmatch(value)) and not looks_like_key(value)


def redact_url(url: str) -> str:
    """``url`` without what may be secret in it (user info, query, fragment)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "***" if parts.query else ""
    fragment = "***" if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


# Settings an index remembers from its last `index` run, so that `collect`, `status`,
# `cancel`, `verify` and `search` on that index need no flags. `index` itself never uses
# them: which provider (and so whether money is spent) must come from a flag or a file.
REMEMBERED = (
    "table",
    "provider",
    "model",
    "dimensions",
    "input_prefix",
    "chunk_tokens",
    "overlap_tokens",
    "include",
    "exclude",
    "base_url",
    "api_key_env",
    "limits",
    "prices",
    "max_attempts",
    "missing_batch_grace",
    "poll_interval",
    "delete_remote_files",
    "model_dimensions",
    "model_accepts_dimensions",
    "db",  # never `storage`: credentials are not state
    "namespace",
)


def remembered(settings: Settings) -> dict[str, Any]:
    """The REMEMBERED fields of ``settings``, JSON-ready."""
    out = {k: getattr(settings, k) for k in REMEMBERED}
    out["include"], out["exclude"] = list(settings.include), list(settings.exclude)
    if settings.db and not is_remote_uri(settings.db):
        out["db"] = str(Path(settings.db).resolve())  # whatever the next run's working dir
    return out


def settings_from(
    overrides: dict[str, Any],
    config_path: Path | None = None,
    defaults: dict[str, Any] | None = None,
) -> Settings:
    """Build Settings: ``overrides`` (flags, None = unset) over the config file, over
    ``defaults`` (what the index remembers), over the built-in defaults."""
    env = overrides.get("api_key_env")
    if env is not None and not (isinstance(env, str) and plausible_env_name(env)):
        raise ConfigError(_NOT_A_KEY, hint=_NOT_A_KEY_HINT)
    memory: dict[str, Any] = {k: v for k, v in (defaults or {}).items() if k in REMEMBERED}
    values = dict(memory)
    confirmed: set[str] = set()
    if config_path is not None:
        from_file = load_config_file(config_path)
        values.update(from_file)
        confirmed.update(from_file)
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    confirmed.update(given)
    _distrust_remembered(values, memory, confirmed)
    for key in ("include", "exclude"):
        if key in values:
            values[key] = tuple(values[key])
    if "index_dir" in values:
        values["index_dir"] = Path(values["index_dir"])
    return Settings(**values)


def _distrust_remembered(
    values: dict[str, Any], memory: dict[str, Any], confirmed: set[str]
) -> None:
    """Apply the module docstring's rule to ``values`` (merged in place): drop or refuse
    a remembered ``base_url``/``api_key_env`` that this run did not confirm."""
    provider = str(values.get("provider") or Settings.provider)
    builtin = PROFILES.get(provider)
    for key in ("base_url", "api_key_env"):
        value = memory.get(key)
        if key in confirmed or value is None:
            continue
        if builtin is not None and (not builtin.remote or value == getattr(builtin, key)):
            del values[key]  # local reads no key; the built-in value applies anyway
            continue
        if key == "base_url":
            shown = redact_url(str(value))
            raise ConfigError(
                f"the index remembers base URL {shown} for provider {provider!r}; it is not "
                "used to send an API key unless this run names it",
                hint=f"pass --base-url {shown} (or set base_url in corpusbatch.toml) to confirm it",
            )
        if isinstance(value, str) and plausible_env_name(value):
            raise ConfigError(
                f"the index remembers key variable {value} for provider {provider!r}; it is "
                "not read unless this run names it",
                hint=f"pass --api-key-env {value} (or set api_key_env in corpusbatch.toml) "
                "to confirm it",
            )
        raise ConfigError(
            f"the index remembers an api_key_env for provider {provider!r} that is not a "
            "variable name (it may be a key itself); it is neither read nor shown",
            hint="pass --api-key-env NAME (or set api_key_env in corpusbatch.toml), and "
            "re-run `corpusbatch index` with it to replace the remembered value",
        )
