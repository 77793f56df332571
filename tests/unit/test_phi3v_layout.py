# Written with AI assistance; review before relying on it.
"""HD-transform arithmetic and crop layout of cerebro.models.phi3_v.image_processing.

The golden table (every size x num_crops the official processor was asked about) needs ../shared; the
formula values quoted in ../shared/PHI35V.md, the sweeps and the crop layout need nothing but torch and PIL.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cerebro.errors import ImageError, InputError
from cerebro.models.phi3_v import Phi3VImageProcessor, hd_layout, num_image_tokens
from tests.conftest import require_shared

S = 336
SWEEP_SIZES = [
    (1, 1),
    (7, 3),
    (50, 40),
    (336, 336),
    (337, 336),
    (400, 1280),
    (500, 501),
    (640, 480),
    (1000, 3000),
    (1024, 768),
    (1344, 1008),
    (1920, 1080),
    (2000, 1500),
    (4000, 100),
    (10, 2000),
    (3001, 17),
]


# ----------------------------------------------------------------- the official table (needs ../shared)


def _golden_table() -> list[dict]:
    path = require_shared("fixtures/phi35v-golden/manifest.json")
    table = json.loads(path.read_text())["num_img_tokens_table"]
    assert len(table) > 100, f"the manifest's num_img_tokens_table has only {len(table)} rows"
    return table


@pytest.mark.fixtures
def test_hd_layout_matches_every_row_of_the_golden_table() -> None:
    wrong = []
    for row in _golden_table():
        w, h, n = row["width"], row["height"], row["num_crops"]
        lay = hd_layout(w, h, n)
        got = (lay.width, lay.height, [lay.h_crop, lay.w_crop])
        want = (row["hd_width"], row["hd_height"], row["crop_grid_hw"])
        if got != want:
            wrong.append(f"{w}x{h} num_crops={n}: got (hd_w, hd_h, grid)={got}, official {want}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.fixtures
def test_num_image_tokens_matches_every_row_of_the_golden_table() -> None:
    wrong = []
    for row in _golden_table():
        w, h, n = row["width"], row["height"], row["num_crops"]
        h_crop, w_crop = row["crop_grid_hw"]
        by_grid = num_image_tokens(h_crop, w_crop)
        by_size = Phi3VImageProcessor(num_crops=n).num_image_tokens(w, h)
        if by_grid != row["num_img_tokens"] or by_size != row["num_img_tokens"]:
            wrong.append(
                f"{w}x{h} num_crops={n}: num_image_tokens({h_crop}, {w_crop})={by_grid}, "
                f"processor={by_size}, official {row['num_img_tokens']}"
            )
    assert not wrong, "\n".join(wrong)


# ----------------------------------------------------------------- formula values from PHI35V.md


@pytest.mark.parametrize("size", SWEEP_SIZES)
def test_num_crops_1_always_gives_313_tokens(size: tuple[int, int]) -> None:
    assert Phi3VImageProcessor(num_crops=1).num_image_tokens(*size) == 313


@pytest.mark.parametrize(
    ("num_crops", "width", "height", "tokens"),
    [
        (4, 336, 336, 757),
        (4, 1000, 1000, 757),
        (4, 1280, 400, 601),
        (4, 300, 1100, 625),
        (16, 50, 40, 2509),
        (16, 1280, 400, 1909),
    ],
)
def test_token_counts_quoted_in_phi35v_md(num_crops: int, width: int, height: int, tokens: int) -> None:
    assert Phi3VImageProcessor(num_crops=num_crops).num_image_tokens(width, height) == tokens


def test_num_image_tokens_formula() -> None:
    # N = 144 * (h*w + 1) + 12 * (h + 1) + 1
    for h in range(1, 17):
        for w in range(1, 17):
            assert num_image_tokens(h, w) == 144 * (h * w + 1) + 12 * (h + 1) + 1
    # A tiny tower (crop 56, patch 14) has g = 2 merged cells per side.
    assert num_image_tokens(1, 1, crop_size=56, patch_size=14) == 4 * 2 + 2 * 2 + 1


# ----------------------------------------------------------------- sweeps


@pytest.mark.parametrize("num_crops", range(1, 17))
def test_grid_fits_num_crops_and_scale_is_the_largest(num_crops: int) -> None:
    for w, h in SWEEP_SIZES:
        lay = hd_layout(w, h, num_crops)
        assert lay.h_crop * lay.w_crop <= num_crops, f"{w}x{h} at {num_crops}: grid {lay.h_crop}x{lay.w_crop}"
        assert (lay.height, lay.width) == (lay.h_crop * S, lay.w_crop * S)
        # The long side is scaled to 336*s with s the largest such that s*ceil(s/ratio) fits.
        ratio = max(w, h) / min(w, h)
        s = max(lay.h_crop, lay.w_crop)
        assert s * math.ceil(s / ratio) <= num_crops
        assert (s + 1) * math.ceil((s + 1) / ratio) > num_crops, (
            f"{w}x{h} at {num_crops}: s={s} is not maximal"
        )
        assert lay.resized_w == S * s
        assert lay.resized_h == int(S * s / ratio)


@pytest.mark.parametrize("num_crops", [1, 2, 4, 7, 9, 16])
def test_portrait_and_landscape_are_transposes(num_crops: int) -> None:
    for w, h in SWEEP_SIZES:
        a, b = hd_layout(w, h, num_crops), hd_layout(h, w, num_crops)
        assert (a.h_crop, a.w_crop) == (b.w_crop, b.h_crop), f"{w}x{h} vs {h}x{w} at {num_crops}"
        assert (a.height, a.width) == (b.width, b.height)
        assert a.transposed == (w < h) and b.transposed == (h < w)
        # Tokens are NOT symmetric: row separators follow the number of rows.
        tok_a = num_image_tokens(a.h_crop, a.w_crop)
        assert tok_a - num_image_tokens(b.h_crop, b.w_crop) == 12 * (a.h_crop - b.h_crop)


# ----------------------------------------------------------------- errors


@pytest.mark.parametrize("size", [(100000, 1), (1, 100000)])
def test_too_thin_image_raises_e1104_naming_the_size(size: tuple[int, int]) -> None:
    with pytest.raises(ImageError) as err:
        hd_layout(*size, num_crops=1)
    assert err.value.code == "E1104"
    assert isinstance(err.value, InputError)
    assert f"{size[0]}x{size[1]}" in err.value.message


def test_too_thin_image_through_the_processor_names_the_image() -> None:
    ok = Image.new("RGB", (64, 48), (10, 20, 30))
    thin = Image.new("RGB", (100000, 1), (10, 20, 30))
    with pytest.raises(ImageError) as err:
        Phi3VImageProcessor(num_crops=1)([ok, thin])
    assert err.value.code == "E1104"
    assert err.value.field == "images[1]"
    assert "images[1]" in err.value.message and "100000x1" in err.value.message


@pytest.mark.parametrize("size", [(0, 10), (10, 0)])
def test_zero_sized_image_is_e1104(size: tuple[int, int]) -> None:
    with pytest.raises(ImageError) as err:
        Phi3VImageProcessor(num_crops=4)([Image.new("RGB", size)])
    assert err.value.code == "E1104" and f"{size[0]}x{size[1]}" in err.value.message


@pytest.mark.parametrize("num_crops", [0, -1, 17, 100, 4.0, "4", None])
def test_num_crops_outside_1_to_16_is_a_value_error(num_crops: object) -> None:
    with pytest.raises(ValueError, match="num_crops"):
        Phi3VImageProcessor(num_crops=num_crops)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_crops", [1, 16])
def test_num_crops_bounds_are_accepted(num_crops: int) -> None:
    assert Phi3VImageProcessor(num_crops=num_crops).num_crops == num_crops


# ----------------------------------------------------------------- crops and padding


def test_crops_are_row_major_tiles_then_zero_padding() -> None:
    proc = Phi3VImageProcessor(num_crops=9)
    gen = torch.Generator().manual_seed(0)
    rows, cols = 2, 3
    hd = torch.randn(3, rows * S, cols * S, generator=gen)  # 3, H', W'
    crops = proc.crops(hd)
    assert crops.shape == (9 + 1, 3, S, S)
    want_global = F.interpolate(hd[None], size=(S, S), mode="bicubic", align_corners=False)[0]
    torch.testing.assert_close(crops[0], want_global, rtol=0, atol=0)
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        assert torch.equal(crops[1 + k], hd[:, r * S : (r + 1) * S, c * S : (c + 1) * S]), f"tile {k}"
    padding = crops[1 + rows * cols :]
    assert padding.shape[0] == 9 - rows * cols
    assert torch.count_nonzero(padding) == 0


def test_crops_with_a_full_grid_have_no_padding() -> None:
    proc = Phi3VImageProcessor(num_crops=4)
    hd = torch.arange(3 * 2 * S * 2 * S, dtype=torch.float32).reshape(3, 2 * S, 2 * S)
    crops = proc.crops(hd)
    assert crops.shape[0] == 5
    assert torch.equal(crops[4], hd[:, S:, S:])  # last tile = bottom-right, row-major


def _white_and_black(proc: Phi3VImageProcessor) -> tuple[torch.Tensor, torch.Tensor]:
    white = ((1.0 - proc.mean) / proc.std).view(3)
    black = ((0.0 - proc.mean) / proc.std).view(3)
    return white, black


@pytest.mark.parametrize(("width", "height"), [(672, 503), (700, 333), (1280, 401)])
def test_white_bars_top_is_floor_of_half_the_extra(width: int, height: int) -> None:
    proc = Phi3VImageProcessor(num_crops=4)
    lay = proc.layout(width, height)
    assert not lay.transposed
    extra = lay.height - lay.resized_h
    assert extra > 0
    top, bottom = extra // 2, extra - extra // 2
    hd = proc.hd_tensor(Image.new("RGB", (width, height), (0, 0, 0)))
    assert hd.shape == (3, lay.height, lay.width)
    white, black = _white_and_black(proc)
    row_means = hd.mean(dim=2).T  # H', 3
    torch.testing.assert_close(row_means[:top], white.expand(top, 3))
    torch.testing.assert_close(row_means[top : top + lay.resized_h], black.expand(lay.resized_h, 3))
    torch.testing.assert_close(row_means[lay.height - bottom :], white.expand(bottom, 3))


def test_odd_extra_puts_the_smaller_bar_on_top() -> None:
    proc = Phi3VImageProcessor(num_crops=4)
    # Pick a size whose padding is odd, so floor vs ceil matters.
    width, height = next(
        (w, 400)
        for w in range(700, 1400)
        if (proc.layout(w, 400).height - proc.layout(w, 400).resized_h) % 2 == 1
    )
    lay = proc.layout(width, height)
    extra = lay.height - lay.resized_h
    hd = proc.hd_tensor(Image.new("RGB", (width, height), (0, 0, 0)))
    white, black = _white_and_black(proc)
    col = hd[:, :, lay.width // 2].T  # H', 3
    torch.testing.assert_close(col[extra // 2 - 1], white)
    torch.testing.assert_close(col[extra // 2], black)
    torch.testing.assert_close(col[extra // 2 + lay.resized_h - 1], black)
    torch.testing.assert_close(col[extra // 2 + lay.resized_h], white)


def test_portrait_images_get_their_bars_left_and_right() -> None:
    proc = Phi3VImageProcessor(num_crops=4)
    width, height = 401, 1280
    lay = proc.layout(width, height)
    assert lay.transposed
    extra = lay.width - lay.resized_h  # the short side, now horizontal
    left = extra // 2
    hd = proc.hd_tensor(Image.new("RGB", (width, height), (0, 0, 0)))
    assert hd.shape == (3, lay.height, lay.width)
    white, black = _white_and_black(proc)
    col_means = hd.mean(dim=1).T  # W', 3
    torch.testing.assert_close(col_means[:left], white.expand(left, 3))
    torch.testing.assert_close(col_means[left : left + lay.resized_h], black.expand(lay.resized_h, 3))
    torch.testing.assert_close(col_means[left + lay.resized_h :], white.expand(extra - left, 3))


def test_processor_output_shapes_follow_the_layout() -> None:
    proc = Phi3VImageProcessor(num_crops=4)
    out = proc([Image.new("RGB", (1280, 400), (9, 9, 9)), Image.new("RGB", (300, 1100), (9, 9, 9))])
    assert out["pixel_values"].shape == (2, 5, 3, S, S)
    assert out["image_sizes"].tolist() == [[336, 1008], [1008, 336]]
    assert out["num_img_tokens"].tolist() == [601, 625]
