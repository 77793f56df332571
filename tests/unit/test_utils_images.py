# Written with AI assistance; review before relying on it.
"""Image loading and validation in cerebro.utils, on real files that PIL writes at test time."""

from __future__ import annotations

import base64
import io
import os
import pathlib
import re
import struct
import zlib

import cog
import pytest
from PIL import Image

from cerebro.errors import ImageError, InputError, URLError
from cerebro.utils import (
    ImageLimits,
    decode_data_uri,
    decode_image_bytes,
    is_data_uri,
    is_url,
    load_image,
)

FIELD = "images[1]"
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _save(path: pathlib.Path, img: Image.Image, **params: object) -> pathlib.Path:
    img.save(path, **params)
    return path


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height mode "1" but whose data is 16 bytes: any attempt to
    decode it fails as truncated, so an E1102 from it proves the size was checked before load()."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def _raises(code: str, exc_type: type[InputError] = ImageError) -> pytest.RaisesExc[InputError]:
    """Expect `exc_type` with `code`, rendered as "<code> <message>" and naming FIELD."""
    return pytest.raises(exc_type, match=rf"^{code} .*{re.escape(FIELD)}")


# ---------------------------------------------------------------------------------- accepted images


@pytest.mark.parametrize(
    ("name", "mode", "params"),
    [
        ("rgb.jpg", "RGB", {"quality": 95}),
        ("rgb.png", "RGB", {}),
        ("rgba.png", "RGBA", {}),
        ("l.png", "L", {}),
        ("la.png", "LA", {}),
        ("p.png", "P", {}),
        ("l.jpg", "L", {}),
        ("cmyk.jpg", "CMYK", {}),
        ("rgb.webp", "RGB", {"lossless": True}),
        ("rgba.webp", "RGBA", {"lossless": True}),
        ("p.gif", "P", {}),
        ("rgb.bmp", "RGB", {}),
        ("rgb.tif", "RGB", {}),
        ("cmyk.tif", "CMYK", {}),
    ],
)
def test_every_accepted_format_loads_with_its_mode_and_size(
    tmp_path: pathlib.Path, name: str, mode: str, params: dict[str, object]
) -> None:
    img = Image.new("RGBA", (37, 21), (*RED, 255))
    img.paste((*BLUE, 128), (0, 0, 10, 10))  # real transparency, or WebP would drop the alpha band
    img = img.convert(mode)
    path = _save(tmp_path / name, img, **params)

    loaded = load_image(path, field=FIELD, local_files=True)

    assert loaded.size == (37, 21)
    assert loaded.mode == mode  # the model's processor converts; loading must not
    if not name.endswith(".jpg"):  # lossless formats keep the exact pixels
        bands = 4 if "A" in mode else 3  # a GIF palette has no partial alpha
        for xy in ((5, 5), (20, 15)):
            assert loaded.convert("RGBA").getpixel(xy)[:bands] == img.convert("RGBA").getpixel(xy)[:bands]


def test_path_kinds_and_raw_bytes_all_load(tmp_path: pathlib.Path) -> None:
    path = _save(tmp_path / "a.png", Image.new("RGB", (4, 3), GREEN))

    for source in (str(path), path, cog.Path(path), path.read_bytes(), bytearray(path.read_bytes())):
        loaded = load_image(source, field=FIELD, local_files=True)
        assert (loaded.size, loaded.getpixel((0, 0))) == ((4, 3), GREEN)


def test_exif_orientation_6_is_applied(tmp_path: pathlib.Path) -> None:
    img = Image.new("RGB", (40, 20), BLUE)
    img.paste(RED, (0, 0, 10, 10))  # a marker in the top-left corner
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _save(tmp_path / "rotated.jpg", img, exif=exif.tobytes(), quality=95)

    loaded = load_image(path, field=FIELD, local_files=True)

    assert loaded.size == (20, 40)
    r, g, b = loaded.getpixel((15, 5))  # the marker moved to the top-right corner
    assert r > 200 and g < 60 and b < 60
    assert loaded.getexif().get(0x0112, 1) == 1  # not applied twice downstream


def test_animated_gif_gives_its_first_frame_only(tmp_path: pathlib.Path) -> None:
    frames = [Image.new("RGB", (8, 8), colour).convert("P") for colour in (RED, GREEN, BLUE)]
    path = _save(tmp_path / "anim.gif", frames[0], save_all=True, append_images=frames[1:], duration=50)
    with Image.open(path) as written:
        assert written.n_frames == 3

    loaded = load_image(path, field=FIELD, local_files=True)

    assert loaded.convert("RGB").getpixel((0, 0)) == RED
    assert getattr(loaded, "n_frames", 1) == 1


def test_jpeg_that_pillow_calls_mpo_is_accepted(tmp_path: pathlib.Path) -> None:
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), GREEN)]
    path = _save(tmp_path / "two.jpg", frames[0], format="MPO", save_all=True, append_images=frames[1:])
    with Image.open(path) as written:
        assert written.format == "MPO"

    assert load_image(path, field=FIELD, local_files=True).size == (8, 8)


# ------------------------------------------------------------------------------- refused images


def test_truncated_png_is_E1103(tmp_path: pathlib.Path) -> None:
    noisy = Image.effect_noise((64, 64), 100).convert("RGB")  # noise, so the data does not compress away
    data = _png_bytes(noisy)
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])

    with _raises("E1103"):
        load_image(path, field=FIELD, local_files=True)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("random.png", bytes(range(256)) * 8),
        ("notes.png", b"this is a text file, not a picture\n"),
        ("empty.png", b""),
    ],
)
def test_bytes_that_are_not_an_image_are_E1103(tmp_path: pathlib.Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    with _raises("E1103"):
        load_image(path, field=FIELD, local_files=True)


@pytest.mark.parametrize(("suffix", "pillow_name"), [(".ico", "ICO"), (".ppm", "PPM"), (".pcx", "PCX")])
def test_formats_pillow_reads_but_we_do_not_accept_are_E1103_naming_the_format(
    tmp_path: pathlib.Path, suffix: str, pillow_name: str
) -> None:
    path = _save(tmp_path / f"image{suffix}", Image.new("RGB", (16, 16), RED))

    with _raises("E1103") as info:
        load_image(path, field=FIELD, local_files=True)
    assert pillow_name in info.value.message
    assert "JPEG, PNG, WebP, GIF, BMP, TIFF" in info.value.message


def test_missing_file_and_directory_are_E1103_naming_the_path(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope.png"
    with _raises("E1103") as info:
        load_image(missing, field=FIELD, local_files=True)
    assert str(missing) in info.value.message

    with _raises("E1103"):
        load_image(tmp_path, field=FIELD, local_files=True)


def test_bomb_header_is_E1102_without_decoding(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(8000, 8000))  # 64 MP in a file of under 100 bytes
    assert os.path.getsize(path) < 100

    with _raises("E1102") as info:
        load_image(path, field=FIELD, local_files=True)
    assert "8000x8000 = 64000000 pixels; the limit is 50000000 pixels" in info.value.message


def test_pillow_decompression_bomb_error_is_E1102() -> None:
    # 900 MP is over twice Pillow's own limit, so Image.open raises before our check runs.
    with _raises("E1102"):
        decode_image_bytes(_png_header(30000, 30000), field=FIELD, limits=ImageLimits())


def test_pillow_decompression_bomb_warning_is_E1102_even_when_our_limit_is_higher() -> None:
    # 100 MP is between Pillow's warning and error thresholds; with our limit raised to 200 MP only
    # the warning, turned into an error, stops the decode (which would otherwise fail as E1103).
    limits = ImageLimits(max_pixels=200_000_000)
    with _raises("E1102"):
        decode_image_bytes(_png_header(10000, 10000), field=FIELD, limits=limits)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's global is left alone


def test_small_pixel_limit_is_E1102_naming_size_and_limit() -> None:
    data = _png_bytes(Image.new("RGB", (100, 100)))

    with _raises("E1102") as info:
        decode_image_bytes(data, field=FIELD, limits=ImageLimits(max_pixels=9_999))
    assert "100x100 = 10000 pixels; the limit is 9999 pixels" in info.value.message
    assert decode_image_bytes(data, field=FIELD, limits=ImageLimits(max_pixels=10_000)).size == (100, 100)


def test_file_over_max_bytes_is_E1101_naming_size_and_limit(tmp_path: pathlib.Path) -> None:
    path = _save(tmp_path / "a.png", Image.new("RGB", (50, 50)))
    size = os.path.getsize(path)

    with _raises("E1101") as info:
        load_image(path, field=FIELD, local_files=True, limits=ImageLimits(max_bytes=size - 1))
    assert f"{size} bytes; the limit is {size - 1} bytes" in info.value.message
    with _raises("E1101"):
        load_image(path.read_bytes(), field=FIELD, limits=ImageLimits(max_bytes=size - 1))
    assert load_image(path, field=FIELD, local_files=True, limits=ImageLimits(max_bytes=size)).size == (
        50,
        50,
    )


def test_side_under_min_side_is_E1104() -> None:
    data = _png_bytes(Image.new("RGB", (50, 1)))

    with _raises("E1104") as info:
        decode_image_bytes(data, field=FIELD, limits=ImageLimits(min_side=2))
    assert "50x1" in info.value.message
    assert decode_image_bytes(data, field=FIELD, limits=ImageLimits()).size == (50, 1)


def test_a_source_of_the_wrong_type_is_E1105() -> None:
    with _raises("E1105"):
        load_image(12345, field=FIELD)  # type: ignore[arg-type]


def test_a_url_without_a_fetch_policy_is_refused_as_not_enabled() -> None:
    with _raises("E1200", URLError) as info:
        load_image("http://127.0.0.1:9/a.png", field=FIELD)
    assert "not enabled" in info.value.message


# ------------------------------------------------------------------------------------- data URIs


def _data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def test_data_uri_loads_with_line_breaks_and_missing_padding() -> None:
    data = _png_bytes(Image.new("RGB", (3, 2), BLUE))
    uri = _data_uri(data).rstrip("=")
    wrapped = uri[:40] + "\n" + uri[40:80] + "\r\n " + uri[80:]

    for source in (uri, wrapped, _data_uri(data, "IMAGE/JPEG")):  # declared type need not match
        loaded = load_image(source, field=FIELD, local_files=True)
        assert (loaded.size, loaded.getpixel((0, 0))) == ((3, 2), BLUE)


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("data:image/png;base64,iVBOR$$$not*base64", "base64"),
        ("data:text/plain;base64,aGVsbG8=", "text/plain"),
        ("data:;base64,aGVsbG8=", "text/plain"),
        ("data:image/png,%89PNG", "not base64-encoded"),
        ("data:image/png;base64", "without a ','"),
    ],
)
def test_bad_data_uris_are_E1103(uri: str, words: str) -> None:
    with _raises("E1103") as info:
        load_image(uri, field=FIELD)
    assert words in info.value.message


def test_data_uri_too_long_is_E1101_before_decoding() -> None:
    # Invalid base64 on purpose: decoding it would give E1103, so E1101 shows the length came first.
    uri = "data:image/png;base64," + "!" * 2000
    with _raises("E1101"):
        decode_data_uri(uri, field=FIELD, max_bytes=1000)

    good = _data_uri(b"\x00" * 1001)
    with _raises("E1101"):
        decode_data_uri(good, field=FIELD, max_bytes=1000)
    assert len(decode_data_uri(good, field=FIELD, max_bytes=1001)) == 1001


def test_is_url_and_is_data_uri_route_sources() -> None:
    assert is_url("https://example.com/a.png")
    assert is_url("file:///etc/passwd")  # routed to fetch_url, which refuses the scheme
    assert not is_url("/tmp/a.png")
    assert not is_url("C:\\images\\a.png")
    assert not is_url("data:image/png;base64,AAAA")
    assert is_data_uri("DATA:image/png;base64,AAAA")
    assert not is_data_uri("/tmp/data:x.png")


# --------------------------------------------------------------------------------- local paths


def test_a_path_is_refused_by_default_the_same_way_whether_it_exists_or_not(tmp_path: pathlib.Path) -> None:
    real = _save(tmp_path / "real.png", Image.new("RGB", (4, 4), RED))
    messages = []
    for source in (real, str(real), str(tmp_path / "missing.png"), "/dev/stdin", ""):
        with _raises("E1106") as info:
            load_image(source, field=FIELD)
        # The path itself is quoted (a prefix of it); everything else must be the same words.
        messages.append(re.sub(r"'.*'(\.\.\. \(\d+ characters\))?", "PATH", info.value.message))
    assert messages[0] == messages[1] == messages[2] == messages[3]
    assert "reads no local files" in messages[0]


def test_a_fifo_or_device_is_refused_without_blocking(tmp_path: pathlib.Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    for source in (fifo, pathlib.Path("/dev/zero")):
        with _raises("E1103") as info:
            load_image(source, field=FIELD, local_files=True)
        assert "not a regular file" in info.value.message


def test_a_path_with_a_nul_byte_is_a_caller_error(tmp_path: pathlib.Path) -> None:
    with _raises("E1103") as info:
        load_image(str(tmp_path / "a\x00b.png"), field=FIELD, local_files=True)
    assert "not a valid path" in info.value.message


def test_no_orientation_tag_means_no_copy_and_a_tag_still_turns_the_image(tmp_path: pathlib.Path) -> None:
    plain = load_image(
        _save(tmp_path / "plain.jpg", Image.new("RGB", (6, 4), RED)), field=FIELD, local_files=True
    )
    assert plain.size == (6, 4)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    turned = _save(tmp_path / "turned.jpg", Image.new("RGB", (6, 4), RED), exif=exif.tobytes())
    assert load_image(turned, field=FIELD, local_files=True).size == (4, 6)
