# Written with AI assistance; review before relying on it.
"""Settings.from_env: the defaults, every CEREBRO_* variable parsed, and bad values named in the error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cerebro.errors import ConfigError
from cerebro.settings import DEFAULT_MODEL_DIR, Settings

INTEGER_VARS = {
    "CEREBRO_MAX_IMAGES": "max_images",
    "CEREBRO_MAX_IMAGE_BYTES": "max_image_bytes",
    "CEREBRO_MAX_IMAGE_PIXELS": "max_image_pixels",
    "CEREBRO_MAX_CONTEXT_TOKENS": "max_context_tokens",
    "CEREBRO_MAX_BATCH": "max_batch",
    "CEREBRO_KV_CACHE_TOKENS": "kv_cache_tokens",
}
FLAG_VARS = {
    "CEREBRO_ALLOW_LOOPBACK_URLS": "allow_loopback_urls",
    "CEREBRO_ALLOW_PRIVATE_URLS": "allow_private_urls",
    "CEREBRO_WARMUP": "warmup",
    "CEREBRO_CUDA_GRAPHS": "cuda_graphs",
}
TEXT_VARS = {
    "CEREBRO_FAMILY": "family",
    "CEREBRO_DTYPE": "dtype",
    "CEREBRO_ATTENTION": "attention",
}
ALL_VARS = [
    "CEREBRO_MODEL_DIR",
    "CEREBRO_DEVICE",
    "CEREBRO_LOG_LEVEL",
    "CEREBRO_ENGINE",
    *INTEGER_VARS,
    *FLAG_VARS,
    *TEXT_VARS,
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ALL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.model_dir == Path(DEFAULT_MODEL_DIR) == Path("/model-cache")
    assert (s.family, s.device, s.dtype, s.attention) == ("auto", "", "auto", "sdpa")
    assert (s.max_images, s.max_image_bytes, s.max_image_pixels) == (8, 20 * 1024 * 1024, 50_000_000)
    assert s.max_context_tokens == 32768
    assert (s.allow_loopback_urls, s.allow_private_urls, s.warmup) == (False, False, True)
    assert s.log_level == "INFO"
    # 0 = chosen at load time from the device and its free memory (cerebro/engine/__init__.py)
    assert (s.engine, s.max_batch, s.kv_cache_tokens, s.cuda_graphs) == ("batched", 0, 0, True)


def test_every_variable_is_parsed() -> None:
    env = {
        "CEREBRO_MODEL_DIR": "/tmp/weights",
        "CEREBRO_FAMILY": "fake",
        "CEREBRO_DEVICE": "cuda:1",
        "CEREBRO_DTYPE": "float16",
        "CEREBRO_ATTENTION": "eager",
        "CEREBRO_MAX_IMAGES": "3",
        "CEREBRO_MAX_IMAGE_BYTES": "1000",
        "CEREBRO_MAX_IMAGE_PIXELS": "2000",
        "CEREBRO_MAX_REQUEST_PIXELS": "3000",
        "CEREBRO_PREPROCESS_MEMORY_MB": "512",
        "CEREBRO_MAX_CONTEXT_TOKENS": "400",
        "CEREBRO_ALLOW_LOOPBACK_URLS": "true",
        "CEREBRO_ALLOW_PRIVATE_URLS": "yes",
        "CEREBRO_ALLOW_LOCAL_FILES": "on",
        "CEREBRO_FETCH_TIMEOUT_S": "7",
        "CEREBRO_WARMUP": "false",
        "CEREBRO_LOG_LEVEL": "debug",
        "CEREBRO_ENGINE": "Plain",
        "CEREBRO_MAX_BATCH": "4",
        "CEREBRO_KV_CACHE_TOKENS": "8192",
        "CEREBRO_CUDA_GRAPHS": "off",
    }
    s = Settings.from_env(env)
    assert s == Settings(
        model_dir=Path("/tmp/weights"),
        family="fake",
        device="cuda:1",
        dtype="float16",
        attention="eager",
        max_images=3,
        max_image_bytes=1000,
        max_image_pixels=2000,
        max_request_pixels=3000,
        preprocess_memory_mb=512,
        max_context_tokens=400,
        allow_local_files=True,
        fetch_timeout_s=7,
        allow_loopback_urls=True,
        allow_private_urls=True,
        warmup=False,
        log_level="DEBUG",
        engine="plain",
        max_batch=4,
        kv_cache_tokens=8192,
        cuda_graphs=False,
    )
    # every field differs from its default, so no variable can be silently ignored
    defaults = Settings()
    for f in dataclasses.fields(Settings):
        assert getattr(s, f.name) != getattr(defaults, f.name), f.name


def test_from_env_reads_os_environ_when_given_nothing(clean_env: pytest.MonkeyPatch) -> None:
    assert Settings.from_env() == Settings()
    clean_env.setenv("CEREBRO_MAX_IMAGES", "2")
    clean_env.setenv("CEREBRO_MODEL_DIR", "/elsewhere")
    s = Settings.from_env()
    assert (s.max_images, s.model_dir) == (2, Path("/elsewhere"))
    assert Settings() == Settings.from_env({})  # the dataclass defaults never read the environment


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().max_images = 3  # type: ignore[misc]


@pytest.mark.parametrize("name", ALL_VARS)
@pytest.mark.parametrize("raw", ["", "   "], ids=["empty", "blank"])
def test_empty_or_blank_means_default(name: str, raw: str) -> None:
    assert Settings.from_env({name: raw}) == Settings()


@pytest.mark.parametrize(("name", "attr"), sorted(INTEGER_VARS.items()))
def test_integers_are_parsed_with_surrounding_space(name: str, attr: str) -> None:
    assert getattr(Settings.from_env({name: " 12 "}), attr) == 12
    assert getattr(Settings.from_env({name: "1"}), attr) == 1


@pytest.mark.parametrize(("name", "attr"), sorted(INTEGER_VARS.items()))
@pytest.mark.parametrize("raw", ["abc", "1.5", "1e3", "12MB", "0x10"])
def test_bad_integer_names_the_variable(name: str, attr: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=rf"^E2001 {name}='{raw}' is not an integer") as info:
        Settings.from_env({name: raw})
    assert info.value.field == name


@pytest.mark.parametrize(("name", "attr"), sorted(INTEGER_VARS.items()))
@pytest.mark.parametrize("raw", ["0", "-3"])
def test_integer_below_one_names_the_variable(name: str, attr: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=rf"^E2001 {name}={raw} must be at least 1") as info:
        Settings.from_env({name: raw})
    assert info.value.field == name


@pytest.mark.parametrize(("name", "attr"), sorted(FLAG_VARS.items()))
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        (" Yes ", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("False", False),
        ("no", False),
        ("OFF", False),
    ],
)
def test_booleans(name: str, attr: str, raw: str, expected: bool) -> None:
    assert getattr(Settings.from_env({name: raw}), attr) is expected


@pytest.mark.parametrize("name", sorted(FLAG_VARS))
@pytest.mark.parametrize("raw", ["maybe", "2", "enabled", "t", "y"])
def test_bad_boolean_names_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=rf"^E2001 {name}='{raw}' is not a boolean") as info:
        Settings.from_env({name: raw})
    assert info.value.field == name
    assert "use true or false" in info.value.message


@pytest.mark.parametrize(("name", "attr"), sorted(TEXT_VARS.items()))
def test_text_variables_are_stripped(name: str, attr: str) -> None:
    assert getattr(Settings.from_env({name: "  value  "}), attr) == "value"


def test_model_dir_device_and_log_level_are_normalised() -> None:
    s = Settings.from_env(
        {"CEREBRO_MODEL_DIR": " /w ", "CEREBRO_DEVICE": " cpu ", "CEREBRO_LOG_LEVEL": " warning"}
    )
    assert (s.model_dir, s.device, s.log_level) == (Path("/w"), "cpu", "WARNING")


def test_unknown_engine_names_the_variable_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"CEREBRO_ENGINE='fast'; use one of batched, plain") as info:
        Settings.from_env({"CEREBRO_ENGINE": "fast"})
    assert info.value.field == "CEREBRO_ENGINE"
