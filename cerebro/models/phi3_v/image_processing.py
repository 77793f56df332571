# Written with AI assistance; review before relying on it.
"""The Phi-3.5-vision HD transform: PIL images -> padded crops, image sizes and image-token counts.

Follows ../shared/PHI35V.md section 2. Pure PIL + torch (no torchvision). Sizes come from the crop size
(336 for CLIP ViT-L/14-336) and patch size, so tiny test models with other towers work too.

Not here: tokenization or prompt layout (processing.py), anything about the model's weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cerebro.errors import ImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MIN_NUM_CROPS, MAX_NUM_CROPS = 1, 16


@dataclass(frozen=True)
class HDLayout:
    """Where one image lands after the HD transform. Heights and widths are in pixels of the padded image."""

    resized_w: int  # landscape orientation: the longer side, before padding
    resized_h: int
    height: int  # final (portrait restored), multiples of crop_size
    width: int
    h_crop: int
    w_crop: int
    transposed: bool


def hd_layout(width: int, height: int, num_crops: int, crop_size: int = 336) -> HDLayout:
    """Largest scale s with s * ceil(s / ratio) <= num_crops, computed in landscape orientation.

    Raises ImageError (E1104) when the aspect ratio is so extreme that the short side rounds to 0 pixels.
    """
    if width < 1 or height < 1:
        raise ImageError(f"a {width}x{height} image has no pixels to process", code="E1104")
    transposed = width < height
    w, h = (height, width) if transposed else (width, height)
    ratio = w / h
    scale = 1
    while (scale + 1) * math.ceil((scale + 1) / ratio) <= num_crops:
        scale += 1
    new_w = crop_size * scale
    new_h = int(new_w / ratio)  # truncation, as the official code does
    if new_h < 1:
        raise ImageError(
            f"a {width}x{height} image is too thin to process: at {new_w} pixels long its short side "
            "rounds to "
            f"0 pixels; the aspect ratio is {ratio:.0f}:1 and the limit is {new_w}:1",
            code="E1104",
        )
    padded_h = math.ceil(new_h / crop_size) * crop_size
    h_crop, w_crop = padded_h // crop_size, new_w // crop_size
    if transposed:
        return HDLayout(new_w, new_h, new_w, padded_h, w_crop, h_crop, True)
    return HDLayout(new_w, new_h, padded_h, new_w, h_crop, w_crop, False)


def num_image_tokens(h_crop: int, w_crop: int, crop_size: int = 336, patch_size: int = 14) -> int:
    """Tokens one image takes: g*g per crop (local crops + global view), g row separators per grid row of
    the local grid and of the global view, and one separator between them; g = patches per side / 2."""
    g = crop_size // patch_size // 2  # 12 for 336/14
    return g * g * (h_crop * w_crop + 1) + g * (h_crop + 1) + 1


def to_rgb(image: Image.Image) -> Image.Image:
    """Plain `convert("RGB")`: alpha is dropped, not composited.

    ../shared/PHI35V.md says non-RGB images are composited over white, but the golden outputs of the official
    code (cases nc1_rgba_640x480, nc4_rgba_640x480, nc4_palette_200x300) match a plain conversion bit for bit
    and differ from compositing by up to 3.75 after normalization: the official processor converts to RGB
    before its own compositing step, which then has nothing left to do. Parity with the checkpoint's own
    preprocessing wins.
    """
    return image if image.mode == "RGB" else image.convert("RGB")


class Phi3VImageProcessor:
    """Callable on a list of PIL images; returns pixel_values, image_sizes and num_img_tokens."""

    def __init__(
        self,
        num_crops: int = 4,
        image_mean: tuple[float, ...] = CLIP_MEAN,
        image_std: tuple[float, ...] = CLIP_STD,
        crop_size: int = 336,
        patch_size: int = 14,
    ) -> None:
        if not isinstance(num_crops, int) or not MIN_NUM_CROPS <= num_crops <= MAX_NUM_CROPS:
            raise ValueError(f"num_crops is {num_crops!r}; it must be an integer from 1 to 16")
        self.num_crops = num_crops
        self.crop_size = crop_size
        self.patch_size = patch_size
        self.mean = torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1)
        self._mean = self.mean.view(3).numpy()  # 3 float32 values, one per channel, for numpy ops
        self._std = self.std.view(3).numpy()

    def layout(self, width: int, height: int) -> HDLayout:
        return hd_layout(width, height, self.num_crops, self.crop_size)

    def num_image_tokens(self, width: int, height: int) -> int:
        lay = self.layout(width, height)
        return num_image_tokens(lay.h_crop, lay.w_crop, self.crop_size, self.patch_size)

    def hd_tensor(self, image: Image.Image) -> torch.Tensor:
        """One image -> its normalized padded HD tensor [3, H', W'], contiguous (H', W' multiples of S).

        Normalization runs one channel plane at a time, in place, in numpy: single-threaded and contiguous,
        with no torch thread-pool hand-off (on a 2-core machine with another process busy, each hand-off
        stalled for several ms). Every step is an IEEE float32 op in the official order
        ((x / 255) - mean) / std, so the result is bit-identical to torch's; a fused form such as
        x * a + b is not (tests/unit/test_phi3v_image_speed_parity.py checks with torch.equal).
        """
        image = to_rgb(image)
        lay = self.layout(*image.size)
        if lay.transposed:
            image = image.transpose(Image.Transpose.TRANSPOSE)
        image = image.resize((lay.resized_w, lay.resized_h), Image.Resampling.BILINEAR)
        padded_h = lay.h_crop * self.crop_size if not lay.transposed else lay.w_crop * self.crop_size
        canvas = Image.new("RGB", (lay.resized_w, padded_h), (255, 255, 255))
        canvas.paste(image, (0, (padded_h - lay.resized_h) // 2))  # top = floor(extra / 2)
        if lay.transposed:
            canvas = canvas.transpose(Image.Transpose.TRANSPOSE)
        hd = torch.empty(3, lay.height, lay.width, dtype=torch.float32)  # 3, H', W'
        planes = hd.numpy()  # the same memory
        for c, band in enumerate(canvas.split()):  # split: PIL de-interleaves H', W', 3 into 3 x (H', W')
            plane = planes[c]  # H', W'
            np.divide(np.asarray(band), np.float32(255.0), out=plane)  # uint8 -> float32, x / 255
            np.subtract(plane, self._mean[c], out=plane)
            np.divide(plane, self._std[c], out=plane)
        return hd

    def crops(self, hd: torch.Tensor) -> torch.Tensor:
        """[3, H', W'] -> [num_crops + 1, 3, S, S]: global view, row-major tiles, zero padding crops."""
        s = self.crop_size
        out = torch.empty(self.num_crops + 1, 3, s, s, dtype=torch.float32)
        self._crops_into(hd, out)
        return out

    def _crops_into(self, hd: torch.Tensor, out: torch.Tensor) -> None:
        """Write the crops of `hd` [3, H', W'] into `out` [num_crops + 1, 3, S, S], every entry of it."""
        s = self.crop_size
        _, height, width = hd.shape
        h_crop, w_crop = height // s, width // s
        n = h_crop * w_crop
        glb = F.interpolate(hd[None], size=(s, s), mode="bicubic", align_corners=False)  # 1, 3, S, S
        crops = out.numpy()  # the same memory: plain copies, single-threaded as in hd_tensor
        crops[0] = glb.numpy()[0]
        grid = hd.detach().numpy().reshape(3, h_crop, s, w_crop, s)  # 3, h, S, w, S
        tiles = crops[1 : 1 + n].reshape(h_crop, w_crop, 3, s, s)  # h, w, 3, S, S (a view: out is contiguous)
        np.copyto(tiles, grid.transpose(1, 3, 0, 2, 4))  # h, w, 3, S, S
        crops[1 + n :] = 0.0  # padding crops

    def __call__(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise ImageError(
                    f"images[{i}] is a {type(image).__name__}, not a PIL image",
                    field=f"images[{i}]",
                    code="E1105",
                )
        s = self.crop_size
        pixel_values = torch.empty(len(images), self.num_crops + 1, 3, s, s, dtype=torch.float32)
        sizes, counts = [], []
        for i, image in enumerate(images):
            try:
                hd = self.hd_tensor(image)
            except ImageError as err:
                raise ImageError(f"images[{i}]: {err.message}", field=f"images[{i}]", code=err.code) from None
            _, height, width = hd.shape
            self._crops_into(hd, pixel_values[i])
            sizes.append([height, width])
            counts.append(
                num_image_tokens(
                    height // self.crop_size, width // self.crop_size, self.crop_size, self.patch_size
                )
            )
        return {
            "pixel_values": pixel_values,  # N, num_crops + 1, 3, S, S
            "image_sizes": torch.tensor(sizes, dtype=torch.long),  # N, 2 as (H', W')
            "num_img_tokens": torch.tensor(counts, dtype=torch.long),  # N
        }
