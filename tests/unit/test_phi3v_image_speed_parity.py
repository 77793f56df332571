# Written with AI assistance; review before relying on it.
"""The fast HD transform (contiguous, in place, one output buffer) is bit-identical to the plain one.

`_reference` below is a frozen copy of the algorithm as it was before the speed-up (PIL canvas + paste,
channel-last float ops, zeros + stack), which the golden cases validated. Outputs are compared with
torch.equal, never allclose: a reordered float op differs only in the last bit. No fixtures needed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cerebro.models.phi3_v import Phi3VImageProcessor
from cerebro.models.phi3_v.image_processing import to_rgb

S = 336


def _reference(proc: Phi3VImageProcessor, images: list[Image.Image]) -> dict[str, torch.Tensor]:
    """Frozen copy of Phi3VImageProcessor.__call__ / hd_tensor / crops before the speed-up."""
    pixel_values, sizes = [], []
    for image in images:
        image = to_rgb(image)
        lay = proc.layout(*image.size)
        if lay.transposed:
            image = image.transpose(Image.Transpose.TRANSPOSE)
        image = image.resize((lay.resized_w, lay.resized_h), Image.Resampling.BILINEAR)
        padded_h = lay.h_crop * S if not lay.transposed else lay.w_crop * S
        canvas = Image.new("RGB", (lay.resized_w, padded_h), (255, 255, 255))
        canvas.paste(image, (0, (padded_h - lay.resized_h) // 2))
        if lay.transposed:
            canvas = canvas.transpose(Image.Transpose.TRANSPOSE)
        pixels = torch.from_numpy(np.asarray(canvas, dtype=np.uint8).copy())  # H', W', 3
        chw = pixels.permute(2, 0, 1).to(torch.float32).div(255.0)  # 3, H', W'
        hd = chw.sub(proc.mean).div(proc.std)
        _, height, width = hd.shape
        h_crop, w_crop = height // S, width // S
        glb = F.interpolate(hd[None], size=(S, S), mode="bicubic", align_corners=False)  # 1, 3, S, S
        tiles = hd.reshape(3, h_crop, S, w_crop, S).permute(1, 3, 0, 2, 4).reshape(h_crop * w_crop, 3, S, S)
        out = torch.zeros(proc.num_crops + 1, 3, S, S, dtype=torch.float32)
        out[0] = glb[0]
        out[1 : 1 + h_crop * w_crop] = tiles
        pixel_values.append(out)
        sizes.append([height, width])
    return {"pixel_values": torch.stack(pixel_values), "image_sizes": torch.tensor(sizes, dtype=torch.long)}


def _noise(width: int, height: int, mode: str, seed: int) -> Image.Image:
    """Random pixels (every uint8 value occurs), so each normalisation constant and rounding is exercised."""
    rng = np.random.default_rng(seed)
    bands = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2, "P": 1, "CMYK": 4}[mode]
    data = rng.integers(0, 256, (height, width, bands), dtype=np.uint8)
    if mode in ("L", "P"):
        image = Image.fromarray(data[:, :, 0], "L")
        if mode == "P":
            image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        return image
    return Image.fromarray(data, mode)


CASES = [
    # (width, height, mode): landscape, portrait, square, exact multiples, tiny, thin, odd padding
    (2000, 1500, "RGB"),
    (1024, 768, "RGB"),
    (336, 336, "RGB"),
    (1500, 2000, "RGB"),
    (672, 503, "RGB"),
    (401, 1280, "RGB"),
    (1280, 401, "RGBA"),
    (50, 40, "L"),
    (200, 300, "P"),
    (640, 480, "LA"),
    (97, 1999, "CMYK"),
    (1, 1, "RGB"),
    (1008, 1008, "RGB"),
    (3000, 90, "RGB"),
]


@pytest.mark.parametrize("num_crops", [1, 4, 9, 16])
def test_processor_is_bit_identical_to_the_reference(num_crops: int) -> None:
    proc = Phi3VImageProcessor(num_crops=num_crops)
    for k, (width, height, mode) in enumerate(CASES):
        image = _noise(width, height, mode, seed=1000 * num_crops + k)
        got, want = proc([image]), _reference(proc, [image])
        assert got["pixel_values"].dtype == torch.float32
        assert got["pixel_values"].shape == want["pixel_values"].shape, (width, height, mode)
        assert torch.equal(got["pixel_values"], want["pixel_values"]), (width, height, mode)
        assert torch.equal(got["image_sizes"], want["image_sizes"]), (width, height, mode)


def test_a_batch_of_mixed_images_is_bit_identical_and_contiguous() -> None:
    proc = Phi3VImageProcessor(num_crops=4)
    images = [_noise(w, h, m, seed=k) for k, (w, h, m) in enumerate(CASES[:8])]
    got, want = proc(images), _reference(proc, images)
    assert got["pixel_values"].is_contiguous()
    assert torch.equal(got["pixel_values"], want["pixel_values"])
    assert torch.equal(got["image_sizes"], want["image_sizes"])


def test_crops_accept_a_non_contiguous_hd_tensor() -> None:
    proc = Phi3VImageProcessor(num_crops=9)
    gen = torch.Generator().manual_seed(0)
    hd = torch.randn(2 * S, 3 * S, 3, generator=gen).permute(2, 0, 1)  # 3, H', W' channel-last strides
    assert torch.equal(proc.crops(hd), proc.crops(hd.contiguous()))
    assert torch.count_nonzero(proc.crops(hd)[7:]) == 0
