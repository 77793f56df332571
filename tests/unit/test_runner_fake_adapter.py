# Written with AI assistance; review before relying on it.
"""The runner (cerebro/predict.py) with a fake adapter registered through the real adapter registry.

Everything but the model is real: settings from the environment, request validation, image loading
from files, data URIs and a real HTTP server on 127.0.0.1, error translation and metrics. The fake
describes the images it was given, so a test can see what reached the adapter.
"""

from __future__ import annotations

import base64
import http.server
import io
import logging
import pathlib
import re
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import cog
import pytest
import torch
from PIL import Image

import cerebro.adapters
from cerebro.adapters import Capabilities, GenerationStats, ModelAdapter, get_adapter, register
from cerebro.errors import (
    ConfigError,
    GenerationError,
    ImageError,
    InputError,
    PromptError,
    ServerError,
    URLError,
    WeightsError,
)
from cerebro.predict import Predictor, iterate, run_inputs
from cerebro.request import GenerationRequest
from cerebro.settings import Settings
from cerebro.utils import OPERATOR_LOGGER
from tests.support import MetricsPredictor

RED = (255, 0, 0)
BLUE = (0, 0, 255)


class FakeAdapter(ModelAdapter):
    """Yields one piece per image ("7x5 (255, 0, 0)"), then two words. The prompt picks a failure:
    "oom" (after one piece), "crash" (a plain RuntimeError) or "caller" (a PromptError)."""

    name: ClassVar[str] = "fake"
    capabilities = Capabilities(
        max_images=3,
        json_schema=True,
        streaming=True,
        max_context_tokens=1000,
        options=frozenset({"num_crops", "system_prompt"}),
    )
    TTFT, TOK_S = 0.123456, 12.3456

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.requests: list[GenerationRequest] = []
        self.yielded: list[str] = []
        self.warmups = 0

    @classmethod
    def load(cls, settings: Settings) -> FakeAdapter:
        return cls(settings)

    def warmup(self) -> float:
        self.warmups += 1
        return 0.5

    def prepare(self, request: GenerationRequest, stats: GenerationStats) -> GenerationRequest:
        self.requests.append(request)
        stats.input_token_count = 100 + len(request.images)
        if request.prompt == "caller":
            raise PromptError("the prompt has 2 image tag(s)", field="prompt", code="E1012")
        return request

    def stream(
        self, request: GenerationRequest, stats: GenerationStats, cancel: threading.Event | None = None
    ) -> Iterator[str]:
        if request.prompt == "crash":
            raise RuntimeError("shape mismatch in fake layer")
        pieces = [
            f"{img.width}x{img.height} {img.convert('RGB').getpixel((0, 0))}|" for img in request.images
        ]
        pieces += ["hello", " world"]
        for n, piece in enumerate(pieces, start=1):
            stats.output_token_count = n
            if n == 1:
                stats.time_to_first_token = self.TTFT
            self.yielded.append(piece)
            yield piece
            if request.prompt == "oom":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        stats.tokens_per_second = self.TOK_S
        stats.finish_reason = "stop"


def _inputs(**overrides: Any) -> dict[str, Any]:
    return run_inputs(
        **{"prompt": "describe", "max_new_tokens": 16, "seed": None, "num_crops": None, **overrides}
    )


def _run(predictor: MetricsPredictor, **overrides: Any) -> list[str]:
    predictor.metrics = {}
    return list(iterate(predictor.run(**_inputs(**overrides))))


def _png(
    path: pathlib.Path, colour: tuple[int, int, int] = RED, size: tuple[int, int] = (7, 5)
) -> pathlib.Path:
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> pytest.MonkeyPatch:
    """The fake registered in a copy of the registry (restored afterwards), a folder with config.json."""
    for name in ("CEREBRO_MAX_IMAGES", "CEREBRO_MAX_IMAGE_BYTES", "CEREBRO_MAX_IMAGE_PIXELS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cerebro.adapters, "_REGISTRY", dict(cerebro.adapters._REGISTRY))
    register("fake", FakeAdapter)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    monkeypatch.setenv("CEREBRO_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("CEREBRO_FAMILY", "fake")
    monkeypatch.setenv("CEREBRO_WARMUP", "false")
    monkeypatch.setenv("CEREBRO_ALLOW_LOOPBACK_URLS", "false")
    monkeypatch.setenv("CEREBRO_ALLOW_PRIVATE_URLS", "false")
    # These tests pass real files by path, as the CLI does; over HTTP paths are refused (tested below).
    monkeypatch.setenv("CEREBRO_ALLOW_LOCAL_FILES", "true")
    return monkeypatch


def _predictor() -> MetricsPredictor:
    predictor = MetricsPredictor()
    predictor.metrics = {}
    predictor.setup()
    return predictor


@pytest.fixture
def predictor(env: pytest.MonkeyPatch) -> MetricsPredictor:
    return _predictor()


def _fake(predictor: Predictor) -> FakeAdapter:
    assert isinstance(predictor.adapter, FakeAdapter)
    return predictor.adapter


# ----------------------------------------------------------------------------------- setup and registry


def test_setup_loads_the_registered_adapter_with_the_settings(
    env: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    env.setenv("CEREBRO_MAX_CONTEXT_TOKENS", "77")
    fake = _fake(_predictor())
    assert fake.settings.family == "fake"
    assert fake.settings.max_context_tokens == 77
    assert fake.settings.model_dir == tmp_path / "model"


@pytest.mark.parametrize(("flag", "calls"), [("true", 1), ("false", 0)])
def test_warmup_runs_only_when_enabled(env: pytest.MonkeyPatch, flag: str, calls: int) -> None:
    env.setenv("CEREBRO_WARMUP", flag)
    assert _fake(_predictor()).warmups == calls


@pytest.mark.parametrize("make", [False, True], ids=["missing", "no-config"])
def test_missing_weights_dir_is_e2010_saying_where_and_how_to_fix(
    env: pytest.MonkeyPatch, tmp_path: pathlib.Path, make: bool
) -> None:
    where = tmp_path / "nowhere"
    if make:
        where.mkdir()
        (where / "model.safetensors").write_bytes(b"")
    env.setenv("CEREBRO_MODEL_DIR", str(where))
    with pytest.raises(WeightsError, match=r"^E2010 no model weights in ") as info:
        _predictor()
    err = info.value
    assert (err.code, err.field) == ("E2010", "CEREBRO_MODEL_DIR")
    assert str(where) in err.message
    assert "config.json" in err.message
    assert "set CEREBRO_MODEL_DIR" in err.message
    assert "bash scripts/demo --tiny" in err.message
    assert not err.is_caller_error


def test_unknown_family_is_a_config_error_listing_the_known_ones(env: pytest.MonkeyPatch) -> None:
    from cerebro.core import ServingCore

    assert get_adapter("nope") is ServingCore  # every unregistered name is the serving core's to resolve
    env.setenv("CEREBRO_FAMILY", "nope")
    with pytest.raises(ConfigError, match=r"^E2001 CEREBRO_FAMILY='nope' is not a model family") as info:
        _predictor()
    assert (
        "'phi3_v'" in info.value.message
        and "'caption'" in info.value.message
        and "auto" in info.value.message
    )


def test_register_and_get_adapter_round_trip(env: pytest.MonkeyPatch) -> None:
    assert get_adapter("fake") is FakeAdapter
    register("fake_by_path", f"{__name__}:FakeAdapter")  # "module:Class", imported on first use
    assert get_adapter("fake_by_path") is FakeAdapter


# ---------------------------------------------------------------------------------- streaming, metrics


def test_pieces_stream_in_order_as_they_are_made(predictor: MetricsPredictor, tmp_path: pathlib.Path) -> None:
    red, blue = _png(tmp_path / "red.png"), _png(tmp_path / "blue.png", BLUE, (3, 9))
    stream = iterate(predictor.run(**_inputs(image=red, images=[blue])))
    fake = _fake(predictor)
    assert fake.requests == []  # nothing runs before the caller iterates
    first = next(iter(stream))
    assert first == "7x5 (255, 0, 0)|"
    assert fake.yielded == [first]  # the runner passes each piece on as soon as it exists
    assert [first, *stream] == ["7x5 (255, 0, 0)|", "3x9 (0, 0, 255)|", "hello", " world"]


def test_metrics_are_recorded(predictor: MetricsPredictor, tmp_path: pathlib.Path) -> None:
    _run(predictor, image=_png(tmp_path / "a.png"))
    assert predictor.metrics == {
        "input_token_count": 101,
        "output_token_count": 3,
        "time_to_first_token": round(FakeAdapter.TTFT, 4),
        "tokens_per_second": round(FakeAdapter.TOK_S, 2),
    }


def test_the_adapter_gets_the_validated_request(predictor: MetricsPredictor, tmp_path: pathlib.Path) -> None:
    png = _png(tmp_path / "a.png")
    _run(
        predictor,
        image=png,
        system_prompt="  be brief ",
        max_new_tokens=5.0,
        temperature=1,
        seed=7,
        num_crops=2,
        json_schema='{"type": "string"}',
    )
    (request,) = _fake(predictor).requests
    assert request.system_prompt == "be brief"
    assert (request.max_new_tokens, request.temperature, request.seed, request.num_crops) == (5, 1.0, 7, 2)
    assert type(request.max_new_tokens) is int
    assert request.json_schema == {"type": "string"}


@pytest.mark.parametrize("kind", [str, cog.Path])
def test_a_lone_value_in_images_counts_as_one_image(
    predictor: MetricsPredictor, tmp_path: pathlib.Path, kind: type
) -> None:
    out = _run(predictor, images=kind(_png(tmp_path / "a.png")))
    assert out == ["7x5 (255, 0, 0)|", "hello", " world"]
    assert predictor.metrics["input_token_count"] == 101  # one image, not one per character


def test_max_images_is_the_smaller_of_deployment_and_adapter(
    env: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    png = _png(tmp_path / "a.png")
    predictor = _predictor()  # deployment allows 8, the fake 3
    assert len(_run(predictor, images=[png] * 3)) == 5
    with pytest.raises(ImageError, match="4 images given; the limit is 3"):
        _run(predictor, images=[png] * 4)
    env.setenv("CEREBRO_MAX_IMAGES", "2")
    with pytest.raises(ImageError, match="3 images given; the limit is 2"):
        _run(_predictor(), images=[png] * 3)


# -------------------------------------------------------------------------------------------- errors


def test_errors_surface_while_iterating(predictor: MetricsPredictor) -> None:
    stream = iterate(predictor.run(**_inputs(prompt="")))  # no error yet: run() only builds the stream
    with pytest.raises(PromptError, match=r"^E1010 "):
        next(iter(stream))


def test_out_of_memory_is_e2031_and_the_runner_keeps_working(
    predictor: MetricsPredictor, tmp_path: pathlib.Path
) -> None:
    png = _png(tmp_path / "a.png")
    got: list[str] = []
    with pytest.raises(GenerationError, match=r"^E2031 the GPU ran out of memory") as info:
        got.extend(iterate(predictor.run(**_inputs(prompt="oom", image=png))))
    err = info.value
    assert err.code == "E2031"
    assert not err.is_caller_error
    assert isinstance(err.__cause__, torch.cuda.OutOfMemoryError)
    assert got == ["7x5 (255, 0, 0)|"]  # what was streamed before the failure stays streamed
    assert predictor.metrics["input_token_count"] == 101  # metrics are recorded for failures too
    assert _run(predictor, image=png) == ["7x5 (255, 0, 0)|", "hello", " world"]


def test_unexpected_error_is_e2000_internal_error(
    predictor: MetricsPredictor, tmp_path: pathlib.Path
) -> None:
    png = _png(tmp_path / "a.png")
    with pytest.raises(ServerError) as info:
        _run(predictor, prompt="crash", image=png)
    err = info.value
    assert type(err) is ServerError
    # The caller learns an incident id, never the exception's text (it can carry paths and internals).
    assert re.fullmatch(
        r"E2000 internal error \(incident [0-9a-f]{12}\); the operator's log has the details", str(err)
    )
    assert "shape mismatch" not in str(err)
    assert isinstance(err.__cause__, RuntimeError)
    assert _run(predictor, image=png)[-1] == " world"


def test_caller_errors_keep_their_code(predictor: MetricsPredictor, tmp_path: pathlib.Path) -> None:
    png = _png(tmp_path / "a.png")
    with pytest.raises(PromptError) as info:  # raised inside the adapter
        _run(predictor, prompt="caller", image=png)
    assert (info.value.code, info.value.field) == ("E1012", "prompt")
    assert info.value.is_caller_error
    with pytest.raises(InputError) as info:  # raised by validation, before the adapter
        _run(predictor, image=png, temperature=3.0)
    assert (info.value.code, info.value.field) == ("E1001", "temperature")
    assert len(_fake(predictor).requests) == 1


# ------------------------------------------------------------------------------------------- images


def _data_uri(colour: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (4, 6), colour).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def image_server() -> Iterator[str]:
    """http://127.0.0.1:<port>: /red.png is a 2x8 red PNG; anything else is 404."""
    buf = io.BytesIO()
    Image.new("RGB", (2, 8), RED).save(buf, format="PNG")
    body = buf.getvalue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            found = self.path == "/red.png"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "image/png" if found else "text/plain")
            self.send_header("Content-Length", str(len(body) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_images_from_a_file_a_data_uri_and_a_loopback_url(
    env: pytest.MonkeyPatch, tmp_path: pathlib.Path, image_server: str
) -> None:
    env.setenv("CEREBRO_ALLOW_LOOPBACK_URLS", "true")
    predictor = _predictor()
    out = _run(
        predictor,
        image=str(_png(tmp_path / "a.png", BLUE)),
        images=[_data_uri((0, 255, 0)), f"{image_server}/red.png"],
    )
    assert out[:3] == ["7x5 (0, 0, 255)|", "4x6 (0, 255, 0)|", "2x8 (255, 0, 0)|"]


def test_a_loopback_url_is_refused_by_default(predictor: MetricsPredictor, image_server: str) -> None:
    with pytest.raises(URLError, match=r"^E1200 image points at 127\.0\.0\.1, a loopback") as info:
        _run(predictor, image=f"{image_server}/red.png")
    assert info.value.field == "image"
    assert _fake(predictor).requests == []


def test_a_failed_fetch_is_e1201(env: pytest.MonkeyPatch, image_server: str) -> None:
    env.setenv("CEREBRO_ALLOW_LOOPBACK_URLS", "true")
    with pytest.raises(URLError, match=r"^E1201 images\[0\] could not be fetched .*HTTP 404"):
        _run(_predictor(), images=[f"{image_server}/missing.png"])


@pytest.mark.parametrize(("as_image", "field"), [(True, "image"), (False, "images[1]")])
def test_a_corrupt_file_is_e1103_naming_the_field(
    predictor: MetricsPredictor, tmp_path: pathlib.Path, as_image: bool, field: str
) -> None:
    good = _png(tmp_path / "good.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:40])  # a PNG cut off inside its first chunk
    inputs = {"image": corrupt} if as_image else {"images": [good, corrupt]}
    with pytest.raises(ImageError) as info:
        _run(predictor, **inputs)
    err = info.value
    assert (err.code, err.field) == ("E1103", field)
    assert str(err).startswith(f"E1103 {field} cannot be decoded")
    assert _fake(predictor).requests == []


def test_image_byte_limit_comes_from_settings(env: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    png = _png(tmp_path / "a.png")
    env.setenv("CEREBRO_MAX_IMAGE_BYTES", str(png.stat().st_size - 1))
    with pytest.raises(ImageError) as info:
        _run(_predictor(), image=png)
    assert (info.value.code, info.value.field) == ("E1101", "image")


def test_each_prediction_has_its_own_metrics(predictor: MetricsPredictor, tmp_path: pathlib.Path) -> None:
    png = _png(tmp_path / "a.png")
    for n in (1, 2, 3):
        _run(predictor, images=[png] * n)
        assert predictor.metrics["input_token_count"] == 100 + n


def test_paths_are_refused_unless_the_deployment_allows_local_files(
    env: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    env.setenv("CEREBRO_ALLOW_LOCAL_FILES", "false")
    predictor = _predictor()
    real, missing = _png(tmp_path / "real.png"), tmp_path / "missing.png"
    messages = []
    for source in (real, str(real), str(missing), "/dev/stdin", "/proc/self/fd/0", "a\x00b"):
        with pytest.raises(ImageError) as info:
            _run(predictor, image=source)
        assert (info.value.code, info.value.field) == ("E1106", "image")
        # The path itself is quoted (a prefix of it); everything else must be the same words.
        messages.append(re.sub(r"'.*'(\.\.\. \(\d+ characters\))?", "PATH", info.value.message))
    # The same words whether the file exists or not: no existence oracle.
    assert messages[0] == messages[1] == messages[2]
    assert predictor.adapter.requests == []  # type: ignore[attr-defined]


def test_an_internal_errors_traceback_reaches_only_the_operators_log(
    predictor: MetricsPredictor, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Inside Cog, the "cerebro" loggers write to the prediction's logs, which its caller reads; the
    # operator's logger writes to the server's own log. Both handlers see every record here.
    loggers = [logging.getLogger("cerebro"), logging.getLogger(OPERATOR_LOGGER)]
    for logger in loggers:
        logger.addHandler(caplog.handler)
    try:
        with pytest.raises(ServerError) as info:
            _run(predictor, prompt="crash", image=_png(tmp_path / "a.png"))
    finally:
        for logger in loggers:
            logger.removeHandler(caplog.handler)
    incident = re.search(r"incident ([0-9a-f]{12})", str(info.value)).group(1)  # type: ignore[union-attr]
    caller_side = [r for r in caplog.records if r.name.startswith("cerebro.")]
    operator_side = [r for r in caplog.records if r.name == OPERATOR_LOGGER]
    assert caller_side and all(r.exc_info is None for r in caller_side)
    assert not any("shape mismatch" in r.getMessage() for r in caller_side)
    assert [incident in r.getMessage() for r in operator_side] == [True]
    assert isinstance(operator_side[0].exc_info[1], RuntimeError)  # type: ignore[index]


# ---------------------------------------------------------------------------------- capabilities


class CaptionerLikeAdapter(FakeAdapter):
    """A model without num_crops, without constrained decoding, whose prompt is optional."""

    capabilities = Capabilities(
        max_images=1, json_schema=False, streaming=True, max_context_tokens=1000, prompt_required=False
    )


@pytest.mark.parametrize(
    ("inputs", "code", "field"),
    [
        ({"num_crops": 4}, "E1002", "num_crops"),
        ({"system_prompt": "be brief"}, "E1002", "system_prompt"),
        ({"json_schema": '{"type": "string"}'}, "E1303", "json_schema"),
    ],
)
def test_what_the_model_cannot_honour_is_refused_before_any_work(
    env: pytest.MonkeyPatch, tmp_path: pathlib.Path, inputs: dict[str, Any], code: str, field: str
) -> None:
    register("captioner", CaptionerLikeAdapter)
    env.setenv("CEREBRO_FAMILY", "captioner")
    predictor = _predictor()
    missing = tmp_path / "never-read.png"  # a local path that does not exist: reading it would be E1103
    with pytest.raises(InputError) as info:
        _run(predictor, image=missing, **inputs)
    assert (info.value.code, info.value.field) == (code, field)
    assert field in info.value.message
    adapter = predictor.adapter
    assert isinstance(adapter, CaptionerLikeAdapter) and adapter.requests == []
    # The same model serves a request without them, and with no prompt at all.
    assert _run(predictor, image=_png(tmp_path / "ok.png"), prompt="")
    assert adapter.requests[-1].prompt == ""
