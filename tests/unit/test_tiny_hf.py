# Written with AI assistance; review before relying on it.
"""Tiny transformers-native checkpoints (cerebro/models/tiny_hf.py) load back offline through transformers'
Auto classes and run: each folder's config, tokenizer ids and chat template; the processor's image tokens
and pixels for a 64x48 image; greedy generation that repeats exactly, also without the KV cache; seeded
weights; the E2012 refusal; and `cerebro tiny-model --kind caption`.

Each checkpoint is built once for the module (well under a second each); loading and generating are as fast.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
    VisionEncoderDecoderModel,
)
from transformers.utils import is_torchvision_available

from cerebro.__main__ import main
from cerebro.client import EXIT_OK, EXIT_USAGE
from cerebro.errors import WeightsError
from cerebro.models import tiny_hf

pytestmark = [pytest.mark.fixtures]

VLMS = ("smolvlm", "qwen2_vl")
KINDS = (*VLMS, "caption")
EXPECTED = {  # kind: (model_type, architecture class)
    "smolvlm": ("idefics3", Idefics3ForConditionalGeneration),
    "qwen2_vl": ("qwen2_vl", Qwen2VLForConditionalGeneration),
    "caption": ("vision-encoder-decoder", VisionEncoderDecoderModel),
}
# Fixed by the builders: the Phi-3.5 tokenizer's 32045 ids, then each family's tokens in order.
TOKEN_IDS = {
    "smolvlm": {"<|im_start|>": 32045, "<image>": 32047, "<end_of_utterance>": 32048},
    "qwen2_vl": {"<|im_start|>": 32045, "<|im_end|>": 32046, "<|image_pad|>": 32049},
}
IMAGE_TOKEN = {"smolvlm": "<image>", "qwen2_vl": "<|image_pad|>"}
END_OF_TURN = {"smolvlm": 32048, "qwen2_vl": 32046, "caption": 32000}
NEW_TOKENS = 5


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-hf")
    return {kind: tiny_hf.WRITERS[kind](root / kind, tokenizer_dir) for kind in KINDS}


@pytest.fixture(scope="module")
def models(folders: dict[str, Path]) -> dict[str, Any]:
    return {kind: AutoModelForImageTextToText.from_pretrained(str(folders[kind])) for kind in KINDS}


@pytest.fixture(scope="module")
def processors(folders: dict[str, Path]) -> dict[str, Any]:
    return {
        "smolvlm": AutoProcessor.from_pretrained(str(folders["smolvlm"])),
        "qwen2_vl": tiny_hf.qwen2_vl_processor(folders["qwen2_vl"]),
        "caption": AutoImageProcessor.from_pretrained(str(folders["caption"])),
    }


def _photo() -> Image.Image:
    """A deterministic 64x48 RGB image with structure in every channel."""
    y, x = torch.meshgrid(torch.arange(48), torch.arange(64), indexing="ij")
    rgb = torch.stack([x * 4, y * 5, (x * y) % 256], dim=-1).clamp(0, 255).to(torch.uint8)
    return Image.fromarray(rgb.numpy(), "RGB")


def _inputs(processor: Any) -> Any:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(text=prompt, images=[_photo()], return_tensors="pt")


def _generate(kind: str, model: Any, processors: dict[str, Any], **options: Any) -> list[int]:
    """The new token ids of one greedy generate call on the photo (with the prompt for the VLMs)."""
    if kind == "caption":
        pixels = processors["caption"](_photo(), return_tensors="pt")
        out = model.generate(pixel_values=pixels.pixel_values, max_new_tokens=NEW_TOKENS, do_sample=False)
        return out[0, 1:].tolist()  # after decoder_start_token_id
    inputs = _inputs(processors[kind])
    out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, **options)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_config_names_the_family_and_the_auto_class_loads_it(
    kind: str, folders: dict[str, Path], models: dict[str, Any]
) -> None:
    model_type, architecture = EXPECTED[kind]
    config = json.loads((folders[kind] / "config.json").read_text())
    assert config["model_type"] == model_type
    assert config["architectures"] == [architecture.__name__]
    assert type(models[kind]) is architecture
    assert (folders[kind] / "model.safetensors").is_file()


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_loads_from_the_folder_with_fixed_ids_and_no_remote_code(
    kind: str, folders: dict[str, Path], models: dict[str, Any]
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(folders[kind]))
    for token, token_id in TOKEN_IDS.get(kind, {}).items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id, token
        assert tokenizer(token, add_special_tokens=False).input_ids == [token_id], token  # one piece
    assert tokenizer.eos_token_id == END_OF_TURN[kind]
    assert tokenizer.pad_token_id == 32000
    assert len(tokenizer) <= models[kind].config.get_text_config().vocab_size
    saved = json.loads((folders[kind] / "tokenizer_config.json").read_text())
    assert "auto_map" not in saved and "Phi3V" not in json.dumps(saved)  # nothing of Phi-3.5's remote code


@pytest.mark.parametrize("kind", VLMS)
def test_chat_template_takes_content_parts_and_plain_strings(kind: str, processors: dict[str, Any]) -> None:
    processor = processors[kind]
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    text = processor.apply_chat_template(parts, add_generation_prompt=True)
    assert text.count(IMAGE_TOKEN[kind]) == 1 and "Hi" in text
    plain = processor.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert "Hi" in plain and IMAGE_TOKEN[kind] not in plain


@pytest.mark.parametrize(
    ("kind", "image_tokens", "pixel_shape"),
    [
        # 64x48 -> padded to 64x64 -> 2 x 2 crops of 32 plus the whole image: 5 crops of 4 tokens
        ("smolvlm", 20, (1, 5, 3, 32, 32)),
        # 64x48 -> 56x56 -> 4 x 4 patches of 14 (2 frames x 3 x 14 x 14 = 1176 values), merged 2 x 2: 4 tokens
        ("qwen2_vl", 4, (16, 1176)),
    ],
)
def test_processor_expands_the_image_token_and_makes_pixels(
    kind: str, image_tokens: int, pixel_shape: tuple[int, ...], processors: dict[str, Any], models: Any
) -> None:
    inputs = _inputs(processors[kind])
    image_id = models[kind].config.image_token_id
    assert image_id == TOKEN_IDS[kind][IMAGE_TOKEN[kind]]
    assert int((inputs["input_ids"][0] == image_id).sum()) == image_tokens
    assert tuple(inputs["pixel_values"].shape) == pixel_shape
    if kind == "qwen2_vl":
        assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]
        # M-RoPE needs to know which ids are image tokens: the model refuses image inputs without this.
        assert inputs["mm_token_type_ids"][0].tolist() == (inputs["input_ids"][0] == image_id).long().tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_generation_is_deterministic(
    kind: str, models: dict[str, Any], processors: dict[str, Any]
) -> None:
    first = _generate(kind, models[kind], processors)
    assert len(first) == NEW_TOKENS or first[-1] in _stops(models[kind])
    assert _generate(kind, models[kind], processors) == first


@pytest.mark.parametrize("kind", VLMS)
def test_cached_decoding_matches_uncached(
    kind: str, models: dict[str, Any], processors: dict[str, Any]
) -> None:
    # For Qwen2-VL this checks the decoding positions: with the cache, each new token's M-RoPE position is
    # its text position plus the rope delta computed at prefill; without it, all positions are recomputed.
    cached = _generate(kind, models[kind], processors)
    assert _generate(kind, models[kind], processors, use_cache=False) == cached


def _stops(model: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    return eos if isinstance(eos, list) else [eos]


@pytest.mark.parametrize("kind", KINDS)
def test_generation_stops_at_the_end_of_turn_or_end_of_text(kind: str, models: dict[str, Any]) -> None:
    assert set(_stops(models[kind])) == {END_OF_TURN[kind], 32000}


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_weights_other_seed_other_weights(
    kind: str, folders: dict[str, Path], tokenizer_dir: Path, tmp_path: Path
) -> None:
    again = tiny_hf.WRITERS[kind](tmp_path / "again", tokenizer_dir, seed=0)
    other = tiny_hf.WRITERS[kind](tmp_path / "other", tokenizer_dir, seed=1)
    first, second, third = (load_file(str(d / "model.safetensors")) for d in (folders[kind], again, other))
    assert first.keys() == second.keys()
    name = max(first, key=lambda n: first[n].numel())  # the largest tensor (an embedding)
    assert torch.equal(first[name], second[name])
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert not torch.equal(first[name], third[name])


def test_building_leaves_the_callers_random_stream_alone(tokenizer_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_hf.write_tiny_captioner(tmp_path / "caption", tokenizer_dir, seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.skipif(not is_torchvision_available(), reason="Qwen2VLProcessor needs torchvision")
def test_qwen2_vl_folder_loads_through_auto_processor_with_torchvision(folders: dict[str, Path]) -> None:
    assert type(AutoProcessor.from_pretrained(str(folders["qwen2_vl"]))) is Qwen2VLProcessor


@pytest.mark.skipif(is_torchvision_available(), reason="torchvision is installed")
def test_without_torchvision_qwen2_vl_gets_the_processor_without_its_video_half(
    folders: dict[str, Path], processors: dict[str, Any]
) -> None:
    # transformers 5.23 loads a Qwen2-VL video processor unconditionally, and it needs torchvision.
    with pytest.raises(ImportError, match=r"[Tt]orchvision"):
        AutoProcessor.from_pretrained(str(folders["qwen2_vl"]))
    processor = processors["qwen2_vl"]
    assert isinstance(processor, Qwen2VLProcessor) and not hasattr(processor, "video_processor")
    assert json.loads((folders["qwen2_vl"] / "processor_config.json").read_text()) == {
        "processor_class": "Qwen2VLProcessor"
    }


def test_smolvlm_processor_is_idefics3s(processors: dict[str, Any]) -> None:
    # SmolVLMProcessor needs num2words (not a dependency); SmolVLM v1 checkpoints use idefics3 anyway.
    assert type(processors["smolvlm"]) is Idefics3Processor
    assert processors["smolvlm"].image_seq_len == 4


@pytest.mark.parametrize("kind", KINDS)
def test_a_tokenizer_dir_without_tokenizer_json_is_e2012(kind: str, tmp_path: Path) -> None:
    (tmp_path / "tok").mkdir()
    out = tmp_path / "out"
    with pytest.raises(WeightsError) as caught:
        tiny_hf.WRITERS[kind](out, tmp_path / "tok")
    assert caught.value.code == "E2012" and caught.value.field == "tokenizer_dir"
    assert "tokenizer.json" in str(caught.value) and "\n" not in str(caught.value)
    assert not out.exists()


def test_cli_writes_a_captioner(
    tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = io.StringIO(), io.StringIO()
    target = tmp_path / "caption"
    argv = ["tiny-model", str(target), "--tokenizer-dir", str(tokenizer_dir), "--kind", "caption"]
    assert main(argv, out=out, err=err) == EXIT_OK, err.getvalue()
    assert out.getvalue() == (
        f"wrote a tiny random-weight caption model to {target} (its answers are meaningless text)\n"
    )
    assert err.getvalue() == "" and "Writing model shards" not in capsys.readouterr().err
    assert json.loads((target / "config.json").read_text())["model_type"] == "vision-encoder-decoder"
    model = VisionEncoderDecoderModel.from_pretrained(str(target))
    pixels = AutoImageProcessor.from_pretrained(str(target))(_photo(), return_tensors="pt").pixel_values
    assert model.generate(pixel_values=pixels, max_new_tokens=2, do_sample=False).shape[1] <= 3


def test_cli_refuses_phi3_v_options_for_other_kinds(tokenizer_dir: Path, tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    argv = ["tiny-model", str(tmp_path / "q"), "--tokenizer-dir", str(tokenizer_dir), "--kind", "qwen2_vl"]
    assert main([*argv, "--num-crops", "16"], out=out, err=err) == EXIT_USAGE
    assert err.getvalue().splitlines() == [
        "error: InputError: E1001 --num-crops applies to --kind phi3_v only, not to --kind qwen2_vl"
    ]
    assert not (tmp_path / "q").exists()
