"""Settings resolution: precedence, provider profiles, limits, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpusbatch.config import PROFILES, Settings, remembered, settings_from
from corpusbatch.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "corpusbatch.toml"
    path.write_text(text)
    return path


def test_flags_beat_config_file_beat_remembered_beat_defaults(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'provider = "openai"\nchunk_tokens = 300\nexclude = ["drafts/**"]\n')
    memory = {"provider": "deepinfra", "chunk_tokens": 100, "overlap_tokens": 7, "table": "t"}
    s = settings_from({"chunk_tokens": 200, "model": None}, cfg, memory)
    assert s.chunk_tokens == 200  # flag
    assert s.provider == "openai"  # config file over memory
    assert s.exclude == ("drafts/**",)
    assert (s.overlap_tokens, s.table) == (7, "t")  # remembered
    assert s.poll_interval == Settings().poll_interval  # built-in default


def test_remembered_round_trips_and_never_holds_secrets() -> None:
    s = Settings(provider="openai", include=("*.md",), limits={"max_lines_per_file": 10})
    memory = remembered(s)
    assert settings_from({}, None, memory).include == ("*.md",)
    assert not any("key" in k and k != "api_key_env" for k in memory)


def test_unknown_config_key_and_bad_toml_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="secrets do not belong"):
        settings_from({}, write(tmp_path, 'api_key = "sk-123"\n'))
    with pytest.raises(ConfigError, match="not valid TOML"):
        settings_from({}, write(tmp_path, "provider = \n"))


def test_limits_override_and_unknown_limit(tmp_path: Path) -> None:
    s = settings_from(
        {}, write(tmp_path, "provider='openai'\n[limits]\nmax_enqueued_tokens = 20000000\n")
    )
    assert s.profile().limits.max_enqueued_tokens == 20_000_000
    assert s.profile().limits.max_lines_per_file == 50_000
    with pytest.raises(ConfigError, match="unknown limit"):
        Settings(provider="openai", limits={"max_widgets": 1}).profile()


def test_profiles_carry_urls_keys_tokenizers_and_prices() -> None:
    assert PROFILES["deepinfra"].base_url == "https://api.deepinfra.com/v1/openai"
    assert PROFILES["deepinfra"].api_key_env == "DEEPINFRA_TOKEN"
    small = Settings(provider="openai").model_spec()
    assert (small.tokenizer, small.max_input_tokens) == ("cl100k_base", 8191)
    assert small.batch_price_per_mtok == small.realtime_price_per_mtok / 2
    assert Settings().model_spec().tokenizer == "local-minilm"
    priced = Settings(provider="openai", prices={"batch": 1.0}).model_spec()
    assert priced.batch_price_per_mtok == 1.0


def test_generic_provider_from_base_url() -> None:
    s = Settings(
        provider="myvllm", base_url="http://127.0.0.1:8000/v1", model="bge", api_key_env="MY_KEY"
    )
    profile = s.profile()
    assert (profile.base_url, profile.api_key_env, profile.remote) == (
        "http://127.0.0.1:8000/v1",
        "MY_KEY",
        True,
    )
    assert s.model_spec().tokenizer == "cl100k_base"  # counted with a margin
    with pytest.raises(ConfigError, match="--base-url"):
        Settings(provider="myvllm").profile()


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (Settings(chunk_tokens=300), "254-token input limit"),
        (Settings(chunk_tokens=100, overlap_tokens=100), "overlap"),
        (Settings(model="text-embedding-3-small"), "not available on the local backend"),
    ],
)
def test_bad_settings_say_what_to_do(settings: Settings, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        settings.effective_chunk_tokens()
    assert info.value.hint  # every message says what to do next


# -- remembered settings never direct keys; api_key_env is a name ------------------------
def test_remembered_base_url_or_key_variable_must_be_confirmed(tmp_path: Path) -> None:
    memory = {"provider": "openai", "base_url": "http://10.0.0.9/v1", "api_key_env": "MY_KEY"}
    with pytest.raises(ConfigError, match=r"remembers base URL http://10\.0\.0\.9/v1") as info:
        settings_from({}, None, memory)
    assert "--base-url http://10.0.0.9/v1" in str(info.value)
    with pytest.raises(ConfigError, match="--api-key-env MY_KEY"):
        settings_from({"base_url": "http://10.0.0.9/v1"}, None, memory)
    s = settings_from({"base_url": "http://10.0.0.9/v1", "api_key_env": "MY_KEY"}, None, memory)
    assert (s.profile().base_url, s.profile().api_key_env) == ("http://10.0.0.9/v1", "MY_KEY")
    # The config file confirms as well as a flag does.
    cfg = write(tmp_path, 'base_url = "http://10.0.0.9/v1"\napi_key_env = "MY_KEY"\n')
    assert settings_from({}, cfg, memory).base_url == "http://10.0.0.9/v1"
    # A remembered custom provider needs its URL confirmed too.
    with pytest.raises(ConfigError, match="remembers base URL"):
        settings_from({}, None, {"provider": "myco", "base_url": "http://10.0.0.9/v1"})


def test_remembered_builtin_values_and_local_are_harmless() -> None:
    builtin = {"provider": "deepinfra", "base_url": PROFILES["deepinfra"].base_url}
    s = settings_from({}, None, {**builtin, "api_key_env": "DEEPINFRA_TOKEN"})
    assert (s.base_url, s.api_key_env) == (None, None)  # the code's strings apply
    assert s.profile().api_key_env == "DEEPINFRA_TOKEN"
    local = settings_from({}, None, {"base_url": "http://x/v1", "api_key_env": "X"})
    assert local.provider == "local" and (local.base_url, local.api_key_env) == (None, None)
    # Switching provider by flag does not carry the old provider's remembered URL along.
    with pytest.raises(ConfigError, match="for provider 'openai'"):
        settings_from({"provider": "openai"}, None, {"base_url": "http://x/v1"})


@pytest.mark.parametrize(
    "value",
    [
        "sk-test1234567890abcdefABCDEF",
        "sk_live_51HabcdefGHIJKL",
        "ghp_abcdefghijklmnopqrstuvwxyz0123",
        "AKIAIOSFODNN7EXAMPLE",
        "abcDEF1234567890abcdXYZ",
        "Ab3_kQ9zXw2_Lm8vT4pR7sYu1nBc5dEf",
        "has space",
        "with-dash",
        "1LEADING_DIGIT",
        "",
        "A" * 129,
    ],
)
def test_api_key_env_must_be_a_name_not_a_key(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="takes the NAME of an environment variable") as info:
        settings_from({"api_key_env": value}, None)
    assert value not in str(info.value) or not value
    cfg = write(tmp_path, f"api_key_env = {value!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError, match="takes the NAME of an environment variable") as info:
        settings_from({}, cfg)
    assert value not in str(info.value) or not value
    with pytest.raises(ConfigError):
        Settings(api_key_env=value)


@pytest.mark.parametrize(
    "name",
    [
        "OPENAI_API_KEY",
        "DEEPINFRA_TOKEN",
        "HF_TOKEN",
        "hf_token",
        "MyKey",
        "_X",
        "A" * 128,
        "AZURE_OPENAI_API_KEY_WESTEUROPE_2",
        "OPENAI_API_KEY_FOR_PROJECT_NUMBER_42",
    ],
)
def test_plausible_variable_names_pass(name: str) -> None:
    assert settings_from({"api_key_env": name}, None).profile().api_key_env == name


# -- models corpusbatch does not know (issue #10 item 1) ---------------------------------
def test_unknown_model_is_unknown_until_declared_or_learned(tmp_path: Path) -> None:
    from corpusbatch.config import TOKEN_MARGIN, ModelFacts

    generic = Settings(provider="acme", base_url="http://h/v1", model="acme/e1")
    spec = generic.model_spec()
    assert (spec.builtin, spec.dimensions, spec.supports_dimensions) == (False, 0, None)
    assert spec.estimated_tokens and spec.token_margin == TOKEN_MARGIN
    assert spec.max_input_tokens == int(8_191 * TOKEN_MARGIN)
    declared = Settings(
        provider="acme",
        base_url="http://h/v1",
        model="acme/e1",
        model_dimensions=96,
        model_accepts_dimensions=False,
    ).model_spec()
    assert (declared.dimensions, declared.supports_dimensions) == (96, False)
    learned = Settings(
        provider="deepinfra", model="thenlper/gte-large", learned=ModelFacts(1024, True)
    ).model_spec()
    assert (learned.dimensions, learned.supports_dimensions, learned.builtin) == (1024, True, False)
    # a declaration wins over what was learned; built-in models ignore both
    both = Settings(
        provider="acme",
        base_url="http://h/v1",
        model="acme/e1",
        model_dimensions=64,
        learned=ModelFacts(96, None),
    )
    assert both.model_spec().dimensions == 64
    assert Settings(provider="openai", model_dimensions=7).model_spec().dimensions == 1536
    # remembered for collect/status/verify, but a config file can not set `learned`
    assert remembered(both)["model_dimensions"] == 64
    cfg = write(tmp_path, "learned = 1\n")
    with pytest.raises(ConfigError, match="unknown key"):
        settings_from({}, cfg)


def test_model_facts_round_trip_merge_and_distrust_garbage() -> None:
    from corpusbatch.config import ModelFacts

    facts = ModelFacts(384, False, 1.25)
    assert ModelFacts.from_json(facts.to_json()) == facts
    assert ModelFacts.from_json("not json") == ModelFacts()
    assert (
        ModelFacts.from_json(
            '{"dimensions": -3, "accepts_dimensions": "yes", "token_ratio": "NaN"}'
        )
        == ModelFacts()
    )
    merged = ModelFacts(384, None, 1.5).merged(ModelFacts(None, True, 1.2))
    assert merged == ModelFacts(384, True, 1.5)  # a token ratio only grows


@pytest.mark.parametrize(
    ("ratio", "margin"), [(None, 0.75), (0.8, 0.75), (1.2, 0.75), (1.5, 0.6), (3.0, 0.3)]
)
def test_learned_token_ratio_tightens_every_token_limit_of_estimated_models(
    ratio: float | None, margin: float
) -> None:
    from corpusbatch.config import Limits, ModelFacts, planning_limits

    s = Settings(
        provider="acme", base_url="http://h/v1", model="m", learned=ModelFacts(8, None, ratio)
    )
    spec = s.model_spec()
    assert spec.token_margin == pytest.approx(margin)
    # the largest chunk stays under the 8,191-token limit when the provider counts the
    # ratio seen, or up to the margin's 1/0.75 when nothing above it was seen
    worst = max(ratio or 0.0, 1 / 0.75)
    assert spec.max_input_tokens * worst <= 8_191
    limits = planning_limits(Limits(max_tokens_per_file=1_000_000), spec.token_margin)
    assert limits.max_tokens_per_request == int(300_000 * margin)
    assert limits.max_tokens_per_file == int(1_000_000 * margin)
    assert limits.max_enqueued_tokens == int(3_000_000 * margin)
    assert limits.max_inputs_per_request == Limits().max_inputs_per_request  # not a token limit
    # exact tokenizers are never scaled, whatever was observed
    exact = Settings(provider="openai", learned=ModelFacts(token_ratio=ratio)).model_spec()
    assert exact.token_margin == 1.0
    assert planning_limits(Limits(), exact.token_margin) == Limits()


def test_dimensions_for_a_model_that_refuses_them() -> None:
    from corpusbatch.config import ModelFacts
    from corpusbatch.pipeline import resolve_identity

    base = {"provider": "acme", "base_url": "http://h/v1", "model": "m"}
    refuses = ModelFacts(48, False)
    with pytest.raises(ConfigError, match="does not accept --dimensions"):
        resolve_identity(Settings(**base, dimensions=32, learned=refuses))  # type: ignore[arg-type]
    own = resolve_identity(Settings(**base, dimensions=48, learned=refuses))  # type: ignore[arg-type]
    assert (own.dimensions, own.request_dimensions) == (48, None)  # nothing sent
    takes = resolve_identity(Settings(**base, dimensions=32, learned=ModelFacts(None, True)))  # type: ignore[arg-type]
    assert (takes.dimensions, takes.request_dimensions) == (32, 32)
    unknown = Settings(**base, dimensions=32, learned=ModelFacts())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not known yet"):
        resolve_identity(unknown)
    assert resolve_identity(unknown, unknown_ok=True).dimensions == 32
    assert resolve_identity(Settings(**base, learned=ModelFacts()), unknown_ok=True).dimensions == 0  # type: ignore[arg-type]
