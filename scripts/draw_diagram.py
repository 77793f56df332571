# Written with AI assistance; review before relying on it.
"""Draw docs/cerebro.png: how one request flows through Cerebro, as boxes and arrows.

    python scripts/draw_diagram.py             # write docs/cerebro.png
    python scripts/draw_diagram.py --out x.png

Pillow only. It uses DejaVu Sans when installed (Debian: fonts-dejavu-core) and Pillow's built-in
font otherwise, so the picture is the same on every machine with the same Pillow and fonts. A label
that does not fit its box is an error, not a clipped picture. The picture is drawn by hand here; it
is not derived from the code, so update it when the request path changes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")

WIDTH, HEIGHT = 1400, 1330
INK = (33, 37, 41)
MUTED = (88, 96, 105)
ARROW = (70, 78, 88)
RETURN = (30, 120, 60)
FILLS = {
    "client": ((225, 238, 252), (52, 110, 180)),
    "platform": ((236, 230, 250), (112, 84, 170)),
    "runner": ((253, 241, 219), (186, 122, 20)),
    "adapter": ((226, 244, 230), (46, 130, 70)),
    "model": ((242, 243, 245), (100, 108, 118)),
    "part": ((255, 255, 255), (100, 108, 118)),
}

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def font(size: int, *, bold: bool = False) -> Font:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(FONT_DIR / name), size)
    except OSError:
        return ImageFont.load_default(size=size)


TITLE = font(38, bold=True)
HEAD = font(29, bold=True)
BODY = font(24)
LABEL = font(22)


def box(
    draw: ImageDraw.ImageDraw, xy: tuple[int, int, int, int], kind: str, title: str, lines: list[str]
) -> None:
    """A rounded box with a bold title and centred lines; raises if any text is wider than the box."""
    fill, outline = FILLS[kind]
    draw.rounded_rectangle(xy, radius=14, fill=fill, outline=outline, width=3)
    x0, y0, x1, y1 = xy
    y = y0 + 16
    for text, face, colour in [(title, HEAD, INK), *((line, BODY, MUTED) for line in lines)]:
        width = draw.textlength(text, font=face)
        if width > x1 - x0 - 24:
            raise ValueError(f"{text!r} is {width:.0f} px wide; the box allows {x1 - x0 - 24} px")
        draw.text(((x0 + x1) / 2, y), text, font=face, fill=colour, anchor="ma")
        y += 44 if face is HEAD else 32
    if y > y1:
        raise ValueError(f"the text of {title!r} needs {y - y0} px; the box is {y1 - y0} px tall")


def arrow(draw: ImageDraw.ImageDraw, points: list[tuple[int, int]], colour=ARROW, width: int = 4) -> None:
    """A polyline ending in a filled arrowhead; the last segment must be horizontal or vertical."""
    draw.line(points, fill=colour, width=width, joint="curve")
    (xa, ya), (xb, yb) = points[-2], points[-1]
    dx, dy = (xb > xa) - (xb < xa), (yb > ya) - (yb < ya)
    size = 16
    back = (xb - dx * size, yb - dy * size)
    side = (dy * size * 0.6, dx * size * 0.6)
    draw.polygon(
        [(xb, yb), (back[0] + side[0], back[1] + side[1]), (back[0] - side[0], back[1] - side[1])],
        fill=colour,
    )


def label(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour=MUTED, anchor: str = "mm"
) -> None:
    """Text on a white backing so it stays legible where it crosses a line."""
    left, top, right, bottom = draw.textbbox(xy, text, font=LABEL, anchor=anchor)
    draw.rectangle((left - 6, top - 4, right + 6, bottom + 4), fill=(255, 255, 255))
    draw.text(xy, text, font=LABEL, fill=colour, anchor=anchor)


def vertical_label(image: Image.Image, centre: tuple[int, int], text: str, colour) -> None:
    """Text rotated to read bottom-to-top, centred on `centre`."""
    probe = ImageDraw.Draw(image)
    left, top, right, bottom = probe.textbbox((0, 0), text, font=LABEL)
    strip = Image.new("RGB", (int(right - left) + 12, int(bottom - top) + 8), (255, 255, 255))
    ImageDraw.Draw(strip).text((6 - left, 4 - top), text, font=LABEL, fill=colour)
    strip = strip.rotate(90, expand=True)
    image.paste(strip, (centre[0] - strip.width // 2, centre[1] - strip.height // 2))


def draw_diagram() -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((WIDTH / 2, 28), "Cerebro: one request, end to end", font=TITLE, fill=INK, anchor="ma")

    client = (300, 100, 1100, 240)
    box(
        draw,
        client,
        "client",
        "Client",
        ["cerebro predict (CLI)  ·  replicate Python client", "curl or any HTTP client"],
    )

    replicate = (80, 340, 660, 520)
    cog = (740, 340, 1320, 520)
    box(
        draw,
        replicate,
        "platform",
        "Replicate API",
        [
            "api.replicate.com/v1 · token auth, queue",
            "runs the Cerebro Cog image on a GPU",
            "streams tokens (SSE urls.stream)",
        ],
    )
    box(
        draw,
        cog,
        "platform",
        "Self-hosted Cog container",
        [
            "coglet HTTP server · POST /predictions",
            "same image, your GPU",
            "SSE with Accept: text/event-stream",
        ],
    )
    arrow(draw, [(560, 240), (560, 290), (370, 290), (370, 340)])
    arrow(draw, [(840, 240), (840, 290), (1030, 290), (1030, 340)])
    label(draw, (700, 290), "prompt + images (URLs or data: URIs)")

    runner = (300, 610, 1100, 750)
    box(
        draw,
        runner,
        "runner",
        "cerebro/predict.py  —  the Cog runner",
        [
            "validates inputs; errors name field, value, limit (E1xxx)",
            "no tensor code: a request in, tokens out",
        ],
    )
    arrow(draw, [(370, 520), (370, 565), (560, 565), (560, 610)])
    arrow(draw, [(1030, 520), (1030, 565), (840, 565), (840, 610)])

    adapter = (300, 810, 1100, 950)
    box(
        draw,
        adapter,
        "adapter",
        "Model adapter  —  cerebro/adapters",
        ["declares capabilities: images, JSON schema, streaming", "turns the request into a token stream"],
    )
    arrow(draw, [(700, 750), (700, 810)])

    model = (80, 1010, 1320, 1300)
    draw.rounded_rectangle(model, radius=14, fill=FILLS["model"][0], outline=FILLS["model"][1], width=3)
    draw.text(
        (700, 1026), "Phi-3.5-vision, native  —  cerebro/models/phi3_v", font=HEAD, fill=INK, anchor="ma"
    )
    arrow(draw, [(700, 950), (700, 1010)])
    parts = [
        ((110, 1080, 470, 1275), "Processor", ["HD transform:", "336 px crops", "+ a global view"]),
        ((520, 1080, 880, 1275), "CLIP vision tower", ["+ HD merge", "→ image embeddings", "in the prompt"]),
        (
            (930, 1080, 1290, 1275),
            "Phi-3 decoder",
            ["text + image tokens", "→ next token,", "JSON-constrained"],
        ),
    ]
    for xy, title, lines in parts:
        box(draw, xy, "part", title, lines)
    arrow(draw, [(470, 1178), (520, 1178)])
    arrow(draw, [(880, 1178), (930, 1178)])

    # The way back: tokens leave the decoder and reach the client, streamed or as one JSON answer.
    arrow(draw, [(1290, 1120), (1365, 1120), (1365, 170), (1100, 170)], colour=RETURN)
    vertical_label(image, (1365, 640), "streamed tokens (SSE) or the JSON answer", RETURN)
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "cerebro.png")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw_diagram().save(args.out, format="PNG", optimize=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
