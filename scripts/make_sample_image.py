"""Write assets/sample.png: the small image the demo edits (a red circle and a blue square on a
light background, 256x256). Deterministic, no downloads; rerun to regenerate."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 256


def make_sample() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (236, 232, 220))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 188, SIZE, SIZE), fill=(120, 170, 90))  # grass
    draw.ellipse((40, 60, 130, 150), fill=(210, 40, 40), outline=(90, 10, 10), width=3)  # red circle
    draw.rectangle((150, 96, 220, 166), fill=(40, 80, 200), outline=(10, 20, 80), width=3)  # blue square
    return image


def main() -> None:
    out = Path(__file__).resolve().parent.parent / "assets" / "sample.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    make_sample().save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main()
