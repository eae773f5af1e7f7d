"""A mixed set of test images drawn in code, so that a benchmark needs no dataset: a flat one, a natural-looking scene,
a text-heavy page and a slide (mostly flat, with a picture and a title). Deterministic for a given seed.

    python benchmarks/mixed_images.py OUT_DIR     # writes flat.png, natural.png, text.png, slide.png

`llava-codebook profile --images OUT_DIR` then profiles them.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = (
    "the model reads every tile of the image before it decides what to drop so the vision tower sets a floor under "
    "any saving a codebook of redundant tokens can lower it by never encoding a tile whose part of the picture is "
    "already known to be redundant from the base view"
).split()


def _smooth_noise(height: int, width: int, cells: int, rng) -> np.ndarray:
    """Low-frequency noise in [0, 1]: random values on a coarse grid, resized bicubically."""
    coarse = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32) / 255


def flat(width: int = 672, height: int = 672) -> Image.Image:
    """One colour: every token of every crop is alike."""
    return Image.new("RGB", (width, height), (228, 228, 234))


def natural(width: int = 896, height: int = 672, seed: int = 0) -> Image.Image:
    """A landscape: a sky gradient, textured mountains and ground, a sun, trees, and sensor-like pixel noise."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    sky = (1 - rows) * np.array([70, 130, 200], np.float32) + rows * np.array([200, 225, 245], np.float32)
    pixels = np.broadcast_to(sky, (height, width, 3)).copy()
    horizon = int(height * 0.55)
    ridge = horizon - (_smooth_noise(1, width, 8, rng)[0] * height * 0.3).astype(int)
    texture = _smooth_noise(height, width, 24, rng)
    for x in range(width):
        pixels[ridge[x] : horizon, x] = np.array([95, 105, 120]) * (0.7 + 0.6 * texture[ridge[x] : horizon, x, None])
    ground = np.array([70, 120, 50], np.float32) * (0.6 + 0.8 * texture[horizon:, :, None])
    pixels[horizon:] = ground
    picture = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    sun = (int(width * 0.78), int(height * 0.16), int(height * 0.07))
    draw.ellipse([sun[0] - sun[2], sun[1] - sun[2], sun[0] + sun[2], sun[1] + sun[2]], fill=(255, 235, 160))
    for _ in range(12):
        x = int(rng.integers(0, width))
        y = int(rng.integers(horizon, height))
        size = int(height * (0.04 + 0.08 * (y - horizon) / (height - horizon)))
        draw.rectangle([x - size // 8, y - size // 2, x + size // 8, y], fill=(80, 55, 30))
        draw.polygon(
            [(x - size // 2, y - size // 3), (x + size // 2, y - size // 3), (x, y - 2 * size)], fill=(30, 90, 40)
        )
    noisy = np.asarray(picture, np.float32) + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def text(width: int = 672, height: int = 896, seed: int = 1) -> Image.Image:
    """A page of text: a heading, then two columns of small print."""
    rng = np.random.default_rng(seed)
    page = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    margin = width // 14
    draw.text((margin, margin), "Tile skipping", fill=(0, 0, 0), font=ImageFont.load_default(size=height // 18))
    font = ImageFont.load_default(size=max(10, height // 60))
    line = int(font.size * 1.4)
    column = (width - 3 * margin) // 2
    for left in (margin, 2 * margin + column):
        y = margin + height // 10
        while y < height - margin:
            words, x = [], left
            while True:
                word = WORDS[int(rng.integers(0, len(WORDS)))]
                advance = draw.textlength(word + " ", font=font)
                if x + advance > left + column:
                    break
                words.append(word)
                x += advance
            draw.text((left, y), " ".join(words), fill=(20, 20, 20), font=font)
            y += line
    return page


def slide(width: int = 1280, height: int = 720, seed: int = 2) -> Image.Image:
    """A presentation slide: a flat background, a title, and a small picture in the lower right corner."""
    page = Image.new("RGB", (width, height), (245, 245, 240))
    draw = ImageDraw.Draw(page)
    draw.text((width // 16, height // 12), "Results", fill=(30, 30, 60), font=ImageFont.load_default(size=height // 10))
    inset = natural(width // 3, height // 3, seed)
    page.paste(inset, (width - inset.width - width // 16, height - inset.height - height // 12))
    return page


def mixed_set() -> dict[str, Image.Image]:
    """name -> image: flat, natural, text, slide (four aspect ratios, so four AnyRes tile grids)."""
    return {"flat": flat(), "natural": natural(), "text": text(), "slide": slide()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder to write the PNG files to (created if missing)")
    out = Path(parser.parse_args(argv).out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, image in mixed_set().items():
        image.save(out / f"{name}.png")
    print(f"Wrote {', '.join(mixed_set())} to {out}")


if __name__ == "__main__":
    main()
