# Written with AI assistance; review before relying on it.
"""Phi3VProcessor with the real tokenizer (../shared/fixtures/phi35v-tiny): tag validation, error codes and
messages, text-only and multi-image prompts, image modes, and where the num_crops default comes from."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cerebro.errors import ImageError, InputError, PromptError
from cerebro.models.phi3_v import Phi3VImageProcessor, Phi3VProcessor

pytestmark = pytest.mark.fixtures
BOS = 1


@pytest.fixture(scope="module")
def processor(tokenizer_dir: Path) -> Phi3VProcessor:
    return Phi3VProcessor.from_pretrained(tokenizer_dir, num_crops=4)


def _img(width: int = 64, height: int = 48, mode: str = "RGB", color: object = (200, 30, 90)) -> Image.Image:
    return Image.new(mode, (width, height), color)  # type: ignore[arg-type]


def _runs(ids: list[int]) -> list[tuple[int, int, int]]:
    """(value, start, length) of every maximal run of one negative id."""
    runs: list[tuple[int, int, int]] = []
    for i, v in enumerate(ids):
        if v < 0 and runs and runs[-1][0] == v and runs[-1][1] + runs[-1][2] == i:
            runs[-1] = (v, runs[-1][1], runs[-1][2] + 1)
        elif v < 0:
            runs.append((v, i, 1))
    return runs


# ----------------------------------------------------------------- tag errors


@pytest.mark.parametrize(
    ("prompt", "num_images", "must_name"),
    [
        ("<|image_2|>\nWhat is this?", 1, ["<|image_2|>"]),  # numbers not 1..n
        ("<|image_2|> and <|image_1|>", 2, ["<|image_2|>", "<|image_1|>", "in order"]),  # out of order
        ("<|image_1|> and <|image_1|>", 2, ["<|image_1|>", "each once"]),  # repeated, count matches
        ("<|image_1|> and <|image_1|>", 1, ["2 image tag", "1 image"]),  # repeated, count differs
        ("<|image_1|> <|image_2|> <|image_3|>", 2, ["3 image tag", "2 image"]),  # more tags than images
        ("<|image_1|> only one", 3, ["1 image tag", "3 image"]),  # fewer tags than images
        ("Describe the pictures.", 2, ["0 image tag", "2 image"]),  # images without tags
        ("<|image_1|> Describe.", 0, ["1 image tag", "0 image"]),  # a tag without images
    ],
)
def test_tag_errors_are_prompt_errors_e1012(
    processor: Phi3VProcessor, prompt: str, num_images: int, must_name: list[str]
) -> None:
    images = [_img() for _ in range(num_images)] or None
    with pytest.raises(PromptError) as err:
        processor(text=prompt, images=images)
    assert isinstance(err.value, InputError) and isinstance(err.value, ValueError)
    assert err.value.code == "E1012"
    assert err.value.field == "prompt"
    assert str(err.value).startswith("E1012 ")
    for needle in must_name:
        assert needle in err.value.message, f"{needle!r} not in {err.value.message!r}"


@pytest.mark.parametrize(
    ("bad", "type_name"),
    [(np.zeros((32, 32, 3), dtype=np.uint8), "ndarray"), ("photo.png", "str"), (b"\x89PNG", "bytes")],
)
def test_a_non_image_object_is_e1105_naming_its_index(
    processor: Phi3VProcessor, bad: object, type_name: str
) -> None:
    with pytest.raises(ImageError) as err:
        processor(text="<|image_1|> <|image_2|> compare", images=[_img(), bad])  # type: ignore[list-item]
    assert isinstance(err.value, InputError)
    assert err.value.code == "E1105"
    assert err.value.field == "images[1]"
    assert "images[1]" in err.value.message and type_name in err.value.message


@pytest.mark.parametrize("bad", ["photo.png", np.zeros((8, 8, 3), dtype=np.uint8)])
def test_images_that_are_not_a_list_or_an_image_are_e1105(processor: Phi3VProcessor, bad: object) -> None:
    with pytest.raises(ImageError) as err:
        processor(text="<|image_1|> what?", images=bad)  # type: ignore[arg-type]
    assert err.value.code == "E1105"
    assert err.value.field == "images"
    assert type(bad).__name__ in err.value.message


def test_missing_text_is_a_prompt_error(processor: Phi3VProcessor) -> None:
    with pytest.raises(PromptError) as err:
        processor(text=None, images=None)
    assert err.value.code == "E1010"
    with pytest.raises(PromptError) as err:
        processor(text=["one", "two"], images=None)
    assert err.value.code == "E1001" and "length 2" in err.value.message


# ----------------------------------------------------------------- prompts that work


def test_text_only_prompt_has_no_image_keys(processor: Phi3VProcessor) -> None:
    prompt = processor.apply_chat_template([{"role": "user", "content": "Hello there"}])
    out = processor(text=prompt)
    assert "pixel_values" not in out and "image_sizes" not in out
    ids = out["input_ids"]
    assert ids.shape[0] == 1 and ids.dtype == torch.long
    assert ids[0, 0].item() == BOS
    assert int((ids < 0).sum()) == 0
    assert torch.equal(out["attention_mask"], torch.ones_like(ids))
    assert ids[0].tolist() == processor.tokenizer(prompt).input_ids


def test_three_images_give_three_runs_in_order(processor: Phi3VProcessor) -> None:
    # Sizes whose token counts at num_crops=4 are quoted in PHI35V.md: square 757, 1280x400 601, 300x1100 625.
    images = [_img(336, 336), _img(1280, 400), _img(300, 1100)]
    expected_lengths = [757, 601, 625]
    chunks = ["First ", " then ", " and ", " - which is largest?"]
    prompt = "".join(c + (f"<|image_{k + 1}|>" if k < 3 else "") for k, c in enumerate(chunks))
    out = processor(text=prompt, images=images)
    ids = out["input_ids"][0].tolist()

    runs = _runs(ids)
    assert [(v, n) for v, _, n in runs] == list(zip([-1, -2, -3], expected_lengths, strict=True))
    assert out["num_img_tokens"].tolist() == expected_lengths
    assert out["pixel_values"].shape == (3, 5, 3, 336, 336)
    assert out["image_sizes"].tolist() == [[672, 672], [336, 1008], [1008, 336]]

    # Every text chunk (including the ones after an image) is tokenized on its own and starts with BOS.
    bounds = [0] + [i for _, s, n in runs for i in (s, s + n)] + [len(ids)]
    text_parts = [ids[bounds[i] : bounds[i + 1]] for i in range(0, len(bounds), 2)]
    assert len(text_parts) == 4
    for chunk, part in zip(chunks, text_parts, strict=True):
        assert part[0] == BOS
        assert part == processor.tokenizer(chunk).input_ids
    assert len(ids) == sum(len(p) for p in text_parts) + sum(expected_lengths)


def test_a_tag_at_the_very_start_still_gets_a_bos_chunk(processor: Phi3VProcessor) -> None:
    out = processor(text="<|image_1|>", images=[_img()])
    ids = out["input_ids"][0].tolist()
    n = out["num_img_tokens"].item()
    assert ids == [BOS] + [-1] * n + [BOS]


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "I;16"])
def test_non_rgb_modes_are_accepted(processor: Phi3VProcessor, mode: str) -> None:
    color = {"L": 120, "RGBA": (10, 200, 30, 128), "LA": (120, 200), "P": 3, "I;16": 300}[mode]
    out = processor(text="<|image_1|> what?", images=[_img(500, 300, mode, color)])
    pv = out["pixel_values"]
    assert pv.shape == (1, 5, 3, 336, 336)
    assert torch.isfinite(pv).all()


def test_grayscale_equals_its_rgb_conversion(processor: Phi3VProcessor) -> None:
    gray = Image.radial_gradient("L").resize((400, 300))
    a = processor(text="<|image_1|>", images=[gray])["pixel_values"]
    b = processor(text="<|image_1|>", images=[gray.convert("RGB")])["pixel_values"]
    assert torch.equal(a, b)


def test_cmyk_jpeg_is_accepted(processor: Phi3VProcessor) -> None:
    buf = io.BytesIO()
    Image.new("CMYK", (320, 240), (0, 128, 255, 10)).save(buf, format="JPEG")
    buf.seek(0)
    image = Image.open(buf)
    assert image.mode == "CMYK"
    out = processor(text="<|image_1|> colour?", images=[image])
    assert out["pixel_values"].shape == (1, 5, 3, 336, 336)
    assert out["image_sizes"].tolist() == [[672, 672]]
    assert torch.isfinite(out["pixel_values"]).all()


def test_a_single_image_need_not_be_in_a_list(processor: Phi3VProcessor) -> None:
    a = processor(text="<|image_1|> x", images=_img())
    b = processor(text="<|image_1|> x", images=[_img()])
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])


# ----------------------------------------------------------------- num_crops


@pytest.fixture(scope="module")
def folder_with_num_crops_9(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("num-crops-9")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        shutil.copyfile(tokenizer_dir / name, out / name)
    pre = json.loads((tokenizer_dir / "preprocessor_config.json").read_text())
    pre["num_crops"] = 9
    (out / "preprocessor_config.json").write_text(json.dumps(pre))
    return out


def test_num_crops_default_comes_from_preprocessor_config(folder_with_num_crops_9: Path) -> None:
    proc = Phi3VProcessor.from_pretrained(folder_with_num_crops_9)
    assert proc.num_crops == 9
    out = proc(text="<|image_1|>", images=[_img(1000, 1000)])
    assert out["pixel_values"].shape == (1, 10, 3, 336, 336)
    assert out["image_sizes"].tolist() == [[1008, 1008]]


def test_shared_folder_default_is_4(tokenizer_dir: Path) -> None:
    assert Phi3VProcessor.from_pretrained(tokenizer_dir).num_crops == 4


@pytest.mark.parametrize("num_crops", [1, 16])
def test_num_crops_can_be_overridden(folder_with_num_crops_9: Path, num_crops: int) -> None:
    proc = Phi3VProcessor.from_pretrained(folder_with_num_crops_9, num_crops=num_crops)
    assert proc.num_crops == num_crops
    out = proc(text="<|image_1|>", images=[_img(1280, 400)])
    assert out["pixel_values"].shape == (1, num_crops + 1, 3, 336, 336)
    assert out["num_img_tokens"].item() == {1: 313, 16: 1909}[num_crops]


def test_num_crops_override_out_of_range_is_a_value_error(tokenizer_dir: Path) -> None:
    with pytest.raises(ValueError, match="num_crops"):
        Phi3VProcessor.from_pretrained(tokenizer_dir, num_crops=17)


def test_processor_without_tokenizer_folder_matches_image_processor(processor: Phi3VProcessor) -> None:
    image = Image.linear_gradient("L").convert("RGB").resize((700, 260))
    a = processor(text="<|image_1|>", images=[image])
    b = Phi3VImageProcessor(num_crops=4)([image])
    assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert torch.equal(a["image_sizes"], b["image_sizes"])
