# Written with AI assistance; review before relying on it.
"""The hf_vlm family (cerebro/families/hf_vlm.py) end to end on tiny random-weight checkpoints of two
transformers-native architectures, written by cerebro.models.tiny_hf:

    smolvlm    Idefics3ForConditionalGeneration (Llama decoder): plain path and batching engine
    qwen2_vl   Qwen2VLForConditionalGeneration (3-D M-RoPE): plain path only

Covered: the plain path against transformers' own `generate` (1 and 2 images; for Qwen2-VL with image
positions that shift the later ones, so decode-step positions matter); the batching engine against the
plain path for two concurrent SmolVLM requests of different lengths, and its re-encode reusing image
features; and the runner, which picks the family from config.json: streamed text, metrics, a JSON schema,
num_crops refused, caller text that types control tokens or the image placeholder.

No mocks: the real loader, processors, tokenizers, engines and Cog runner. Answers are meaningless but
deterministic; open-ended JSON strings and integers never end with random weights, so the schema bounds
them.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from cerebro.adapters import GenerationStats
from cerebro.core import ServingCore
from cerebro.engine import Engine, PlainEngine, TokenStream
from cerebro.errors import InputError, PromptError, WeightsError
from cerebro.families.base import LoadOptions
from cerebro.families.hf_vlm import HFVisionLanguageFamily
from cerebro.models.tiny_hf import write_tiny_qwen2_vl, write_tiny_smolvlm
from cerebro.predict import iterate, run_inputs
from cerebro.request import GenerationRequest
from tests.support import MetricsPredictor, greedy_job, plain_tokens, quadrants, set_up_predictor

pytestmark = pytest.mark.fixtures

CPU = torch.device("cpu")
ARCHS = ("smolvlm", "qwen2_vl")
WRITERS = {"smolvlm": write_tiny_smolvlm, "qwen2_vl": write_tiny_qwen2_vl}
END_OF_TURN = {"smolvlm": "<end_of_utterance>", "qwen2_vl": "<|im_end|>"}
PLACEHOLDER = {"smolvlm": "<image>", "qwen2_vl": "<|image_pad|>"}
MAX_NEW = 10
TIMEOUT_S = 120.0  # guards against a hung stream; never an assertion about speed
SCHEMA = {
    "type": "object",
    "properties": {
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "label": {"type": "string", "maxLength": 6},
        "ok": {"type": "boolean"},
    },
    "required": ["count", "label", "ok"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, Path]:
    return {
        arch: WRITERS[arch](tmp_path_factory.mktemp(f"tiny-{arch}"), tokenizer_dir, seed=5) for arch in ARCHS
    }


@pytest.fixture(scope="module")
def families(model_dirs: dict[str, Path]) -> dict[str, HFVisionLanguageFamily]:
    options = LoadOptions(CPU, torch.float32, "sdpa")
    return {arch: HFVisionLanguageFamily.load(model_dirs[arch], options) for arch in ARCHS}


@pytest.fixture(scope="module")
def predictors(model_dirs: dict[str, Path]) -> Iterator[dict[str, MetricsPredictor]]:
    made: dict[str, MetricsPredictor] = {}
    for arch in ARCHS:  # CEREBRO_FAMILY unset: auto; the warm-up request runs through the engine
        runner = set_up_predictor(model_dirs[arch], CEREBRO_WARMUP="true")
        made[arch] = runner
    yield made
    for runner in made.values():
        assert isinstance(runner.adapter, ServingCore)
        runner.adapter.engine.close()


def _stripes() -> Image.Image:
    img = Image.new("RGB", (30, 90), (240, 240, 240))
    for y in range(0, 90, 10):
        img.paste((0, 0, 0), (0, y, 30, y + 5))
    return img


IMAGES = (quadrants(), _stripes())


def _data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _request(prompt: str, n_images: int = 1, **kwargs: Any) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, images=IMAGES[:n_images], **{"max_new_tokens": MAX_NEW, **kwargs})


def _plain(family: HFVisionLanguageFamily, request: GenerationRequest, stop_ids: frozenset[int]) -> list[int]:
    return plain_tokens(family, request, stop_ids)


def _run(predictor: MetricsPredictor, **overrides: Any) -> str:
    predictor.metrics = {}
    inputs = run_inputs(
        **{
            "prompt": "Describe the image.",
            "image": _data_uri(IMAGES[0]),
            "max_new_tokens": MAX_NEW,
            **overrides,
        }
    )
    return "".join(iterate(predictor.run(**inputs)))


# ------------------------------------------------------------------------------------------ loading


def test_each_architecture_loads_with_its_stop_tokens_and_engine(
    families: dict[str, HFVisionLanguageFamily],
) -> None:
    for arch, family in families.items():
        tokenizer = family.tokenizer
        end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN[arch])
        assert family.end_of_turn == END_OF_TURN[arch]  # read off the chat template
        # The end of turn (also the tokenizer's EOS here) and generation_config's <|endoftext|>.
        assert family.stop_ids == {end_of_turn, tokenizer.convert_tokens_to_ids("<|endoftext|>")}
        assert family.vocab_size == family.model.get_output_embeddings().out_features == len(tokenizer)
        assert family.max_positions == 2048
        assert family.options == {"system_prompt"}  # num_crops is not one
    assert families["smolvlm"].decoder() is not None
    assert families["smolvlm"].describe()["decoder"] == "batching"
    assert families["qwen2_vl"].decoder() is None  # M-RoPE: plain path only
    assert "M-RoPE" in families["qwen2_vl"].describe()["decoder"]


def _drop_a_tensor(folder: Path) -> None:
    tensors = load_file(folder / "model.safetensors")
    del tensors[next(k for k in sorted(tensors) if "input_layernorm" in k)]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def _reshape_a_tensor(folder: Path) -> None:
    tensors = load_file(folder / "model.safetensors")
    tensors[next(k for k in sorted(tensors) if "up_proj" in k)] = torch.zeros(3, 3)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("breakage", "code"),
    [
        (lambda d: (d / "model.safetensors").unlink(), "E2010"),
        (_drop_a_tensor, "E2011"),
        (_reshape_a_tensor, "E2011"),
        (lambda d: (d / "chat_template.jinja").unlink(), "E2012"),
        (lambda d: (d / "tokenizer.json").unlink(), "E2012"),
    ],
    ids=["no-weights", "missing-tensor", "wrong-shape", "no-chat-template", "no-tokenizer"],
)
def test_a_broken_folder_is_a_coded_weights_error(
    model_dirs: dict[str, Path], tmp_path: Path, breakage: Callable[[Path], None], code: str
) -> None:
    folder = Path(shutil.copytree(model_dirs["smolvlm"], tmp_path / "broken"))
    breakage(folder)
    with pytest.raises(WeightsError) as info:
        HFVisionLanguageFamily.load(folder, LoadOptions(CPU, torch.float32, "sdpa"))
    assert (info.value.code, info.value.field) == (code, "CEREBRO_MODEL_DIR")


# ------------------------------------------------------------------------------------------ plain path


@pytest.mark.parametrize("n_images", [1, 2])
@pytest.mark.parametrize("arch", ARCHS)
def test_plain_path_greedy_tokens_equal_transformers_generate(
    families: dict[str, HFVisionLanguageFamily], arch: str, n_images: int
) -> None:
    family = families[arch]
    request = _request("What is in the picture?", n_images, max_new_tokens=12)
    inputs = family.model_inputs(request)
    assert inputs.image_tokens == int((inputs.input_ids == family.image_token_id).sum()) > 0
    mine = _plain(family, request, family.stop_ids)
    with torch.inference_mode():
        reference = family.model.generate(
            input_ids=inputs.input_ids,
            attention_mask=torch.ones_like(inputs.input_ids),
            **inputs.extras,
            max_new_tokens=12,
            do_sample=False,
        )
    assert mine == reference[0, inputs.input_ids.shape[1] :].tolist()
    assert len(mine) >= 4  # the premise: several decode steps, not an immediate stop
    if arch == "qwen2_vl":
        # The premise for decode-step positions: image tokens take fewer positions than tokens, so every
        # later position is shifted (rope_deltas != 0), and a plain 0..T-1 count would be wrong.
        assert int(family.model.model.rope_deltas.abs().sum()) > 0


# ------------------------------------------------------------------------------------- batching engine


def _read(stream: TokenStream, out: list[int], done: threading.Event) -> None:
    try:
        out.extend(stream)
    finally:
        done.set()


def test_smolvlm_batching_engine_equals_the_plain_path_for_concurrent_requests(
    families: dict[str, HFVisionLanguageFamily],
) -> None:
    family = families["smolvlm"]
    requests = [
        _request("Hi.", 1, max_new_tokens=9),
        _request(
            "Compare these two pictures in detail, please.", 2, max_new_tokens=14, system_prompt="Be exact."
        ),
    ]
    expected = [_plain(family, r, frozenset()) for r in requests]
    decoder = family.decoder()
    assert decoder is not None
    engine = Engine(decoder, rows=2, capacity=512, cuda_graphs=False)
    try:
        jobs = [greedy_job(family, request) for request in requests]
        assert jobs[0].input_ids.shape[1] < jobs[1].input_ids.shape[1]  # different lengths
        results: list[list[int]] = [[], []]
        done = [threading.Event(), threading.Event()]
        for job in jobs:
            engine.submit(job)
        for job, out, event in zip(jobs, results, done, strict=True):
            threading.Thread(target=_read, args=(job.stream, out, event), daemon=True).start()
        assert all(event.wait(TIMEOUT_S) for event in done)
    finally:
        engine.close()
    assert results == expected
    assert [j.stream.finish_reason for j in jobs] == ["length", "length"]


def test_smolvlm_serving_core_on_the_engine_keeps_sampling_json_and_cancel_per_request(
    families: dict[str, HFVisionLanguageFamily],
) -> None:
    """The serving core over the batching engine (2 rows, 3 requests): a sampled request gives the plain
    engine's answer for its seed, a JSON request validates, and a cancelled one (400 tokens uncancelled)
    ends without disturbing the other two."""
    family = families["smolvlm"]
    decoder = family.decoder()
    assert decoder is not None
    batched = ServingCore(family, 2048, Engine(decoder, rows=2, capacity=512, cuda_graphs=False))
    plain = ServingCore(family, 2048, PlainEngine(family.plain_model(), capacity=512))
    sampled = _request("Hi.", 1, max_new_tokens=12, temperature=0.9, top_k=30, seed=11)
    constrained = _request("Count.", 1, max_new_tokens=48, json_schema=SCHEMA)
    doomed = _request("Go on.", 2, max_new_tokens=400)
    results: dict[str, str] = {}
    first_piece = threading.Event()
    cancel = threading.Event()

    def run(name: str, request: GenerationRequest) -> None:
        stats = GenerationStats()
        pieces = []
        for piece in batched.stream(
            batched.prepare(request, stats), stats, cancel if name == "doomed" else None
        ):
            pieces.append(piece)
            if name == "doomed":
                first_piece.set()
        results[name] = "".join(pieces)
        results[f"{name}.finish"] = stats.finish_reason

    try:
        doomed_thread = threading.Thread(target=run, args=("doomed", doomed), daemon=True)
        doomed_thread.start()
        assert first_piece.wait(TIMEOUT_S)
        others = [
            threading.Thread(target=run, args=(name, request), daemon=True)
            for name, request in (("sampled", sampled), ("constrained", constrained))
        ]
        for thread in others:
            thread.start()
        cancel.set()
        for thread in (doomed_thread, *others):
            thread.join(TIMEOUT_S)
        assert results["doomed.finish"] == "cancelled"
        assert results["sampled"] == "".join(plain.generate(sampled, GenerationStats()))
        jsonschema.validate(json.loads(results["constrained"]), SCHEMA)
        assert results["constrained.finish"] == "stop"
        assert batched.engine.load() == (0, 0)  # every row freed
    finally:
        batched.engine.close()
        plain.engine.close()


def test_smolvlm_re_encode_reuses_image_features_and_leaves_generated_image_ids_alone(
    families: dict[str, HFVisionLanguageFamily],
) -> None:
    family = families["smolvlm"]
    inputs = family.model_inputs(_request("Describe.", 2))
    with torch.inference_mode():
        embeds, features = family.embed_prompt(inputs.input_ids, inputs.extras, None)
        assert features.shape[0] == inputs.image_tokens
        again, reused = family.embed_prompt(inputs.input_ids, {}, features)  # no pixels: no vision tower
        assert reused is features
        torch.testing.assert_close(again, embeds)
        # The model's own merge gives the same embeddings.
        model = family.model.model
        text_embeds = model.get_input_embeddings()(inputs.input_ids)
        image_hidden = torch.cat(
            list(model.get_image_features(**inputs.extras, return_dict=True).pooler_output)
        )
        own = model.inputs_merger(inputs.input_ids, text_embeds, image_hidden)
        torch.testing.assert_close(embeds, own)
        # A re-encode of prompt + answer where the answer holds an image id: that one stays a token.
        image_id = torch.tensor([[family.image_token_id]])
        longer = torch.cat([inputs.input_ids, image_id], dim=1)
        embeds_longer, _ = family.embed_prompt(longer, {}, features)
        torch.testing.assert_close(embeds_longer[:, :-1], embeds)
        torch.testing.assert_close(embeds_longer[0, -1], model.get_input_embeddings()(image_id)[0, 0])


# ---------------------------------------------------------------------------------------------- runner


@pytest.mark.parametrize("arch", ARCHS)
def test_runner_streams_the_plain_paths_answer_with_metrics(
    predictors: dict[str, MetricsPredictor], arch: str
) -> None:
    predictor = predictors[arch]
    core = predictor.adapter
    assert isinstance(core, ServingCore)
    assert isinstance(core.family, HFVisionLanguageFamily)  # chosen from config.json's model_type
    assert isinstance(core.engine, Engine if arch == "smolvlm" else PlainEngine)
    predictor.metrics = {}
    pieces = list(
        iterate(
            predictor.run(
                **run_inputs(prompt="Describe the image.", image=_data_uri(IMAGES[0]), max_new_tokens=8)
            )
        )
    )
    request = _request("Describe the image.", 1, max_new_tokens=8)
    tokens = _plain(core.family, request, core.stop_ids)
    answer = [t for t in tokens if t not in core.stop_ids]
    assert len([p for p in pieces if p]) >= 2
    assert "".join(pieces) == core.tokenizer.decode(answer, skip_special_tokens=True)
    assert predictor.metrics["input_token_count"] == core.family.model_inputs(request).input_ids.shape[1]
    assert predictor.metrics["output_token_count"] == len(tokens)
    assert predictor.metrics["time_to_first_token"] > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_runner_json_schema_answer_validates(predictors: dict[str, MetricsPredictor], arch: str) -> None:
    predictor = predictors[arch]
    text = _run(predictor, json_schema=json.dumps(SCHEMA), max_new_tokens=120)
    jsonschema.validate(json.loads(text), SCHEMA)
    assert predictor.metrics["output_token_count"] < 120  # it ended by itself, not at the limit


@pytest.mark.parametrize("arch", ARCHS)
def test_runner_refuses_num_crops_with_e1002(predictors: dict[str, MetricsPredictor], arch: str) -> None:
    with pytest.raises(InputError) as info:
        _run(predictors[arch], num_crops=4)
    assert (info.value.code, info.value.field) == ("E1002", "num_crops")
    assert predictors[arch].metrics.get("output_token_count", 0) == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_a_typed_end_of_turn_token_stays_text(
    predictors: dict[str, MetricsPredictor], families: dict[str, HFVisionLanguageFamily], arch: str
) -> None:
    family = families[arch]
    token = END_OF_TURN[arch]
    token_id = family.tokenizer.convert_tokens_to_ids(token)
    plain = family.model_inputs(_request("Say it, then go on."))
    typed = family.model_inputs(_request(f"Say {token} then go on.", system_prompt=f"Never {token} early."))
    # Only the template's own end-of-turn tokens (after the system and the user message) are that id.
    assert int((plain.input_ids == token_id).sum()) == 1
    assert int((typed.input_ids == token_id).sum()) == 2
    assert typed.input_ids.shape[1] > plain.input_ids.shape[1] + 10
    assert typed.image_tokens == plain.image_tokens
    # The typed text is tokenized as the characters it is.
    text_ids = family.text_encoder.encode(token, [(0, len(token))]) if family.text_encoder else []
    assert text_ids and token_id not in text_ids
    ids = typed.input_ids[0].tolist()
    assert any(ids[i : i + len(text_ids)] == text_ids for i in range(len(ids)))
    # Per-token inputs follow the new ids (Qwen2-VL's mm_token_type_ids: 1 on image tokens).
    if "mm_token_type_ids" in typed.extras:
        expected = (typed.input_ids == family.image_token_id).to(typed.extras["mm_token_type_ids"].dtype)
        assert torch.equal(typed.extras["mm_token_type_ids"], expected)
    # A prompt with nothing typed gets exactly the processor's own ids.
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Say it, then go on."}]}
    ]
    rendered = family.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    own = family.processor(text=[rendered], images=[[IMAGES[0]]], return_tensors="pt")
    assert torch.equal(plain.input_ids, own["input_ids"])
    # Through the runner the typed token neither ends the turn nor fails the request.
    text = _run(predictors[arch], prompt=f"Say {token} then go on.", system_prompt=f"Never {token} early.")
    assert predictors[arch].metrics["input_token_count"] == typed.input_ids.shape[1]
    assert predictors[arch].metrics["output_token_count"] >= 1
    assert isinstance(text, str)


@pytest.mark.parametrize("field", ["prompt", "system_prompt"])
@pytest.mark.parametrize("arch", ARCHS)
def test_a_typed_image_placeholder_is_e1012_naming_the_field(
    predictors: dict[str, MetricsPredictor], arch: str, field: str
) -> None:
    overrides = {field: f"Look at {PLACEHOLDER[arch]} here."}
    with pytest.raises(PromptError) as info:
        _run(predictors[arch], **overrides)
    assert (info.value.code, info.value.field) == ("E1012", field)
    assert PLACEHOLDER[arch] in info.value.message
