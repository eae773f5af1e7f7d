"""Example images for the Space, drawn in code (no third-party pictures, so nothing to license or attribute).

Each scene mixes large flat areas (sky, sea, walls, paper) with detailed ones (textures, windows, text), so that a
redundancy codebook has something to drop and something to keep. The flat colours are the ones the embedded demo
codebook was built from (`llava_codebook.tiny.flat_colour_codebook`).
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SKY = (70, 130, 180)
GRASS = (34, 139, 34)
WHITE = (255, 255, 255)
GREY = (128, 128, 128)
RED = (200, 60, 50)
BLACK = (0, 0, 0)


def _noise(rng, height, width, base, spread=70):
    pixels = np.asarray(base, dtype=np.int16) + rng.integers(-spread, spread + 1, (height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def house_in_a_field(seed: int = 0) -> Image.Image:
    """Wide (640x400): flat sky and field, a textured house and tree."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (640, 400), SKY)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 260, 640, 400], fill=GRASS)
    draw.ellipse([60, 40, 200, 90], fill=WHITE)
    image.paste(_noise(rng, 120, 160, (170, 90, 60)), (380, 160))  # brick wall
    draw.polygon([(370, 160), (460, 90), (550, 160)], fill=(90, 40, 30))
    draw.rectangle([440, 220, 470, 280], fill=(60, 35, 20))
    draw.rectangle([400, 185, 425, 210], fill=(250, 230, 120))
    draw.rectangle([500, 185, 525, 210], fill=(250, 230, 120))
    draw.rectangle([150, 200, 166, 280], fill=(90, 60, 30))
    image.paste(_noise(rng, 110, 110, (40, 110, 40), 60), (103, 100), _disc(110))
    return image


def lighthouse(seed: int = 1) -> Image.Image:
    """Tall (360x640): flat sky, striped tower, textured sea and rocks."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (360, 640), SKY)
    draw = ImageDraw.Draw(image)
    image.paste(_noise(rng, 180, 360, (30, 80, 140), 50), (0, 460))
    for index, top in enumerate(range(170, 470, 50)):
        draw.rectangle([150, top, 210, top + 50], fill=RED if index % 2 == 0 else WHITE)
    draw.polygon([(140, 170), (180, 110), (220, 170)], fill=BLACK)
    draw.rectangle([165, 130, 195, 165], fill=(255, 230, 90))
    image.paste(_noise(rng, 60, 140, (90, 80, 70), 50), (110, 440))
    return image


def bar_chart(seed: int = 2) -> Image.Image:
    """Square (512x512): a chart on white paper; the empty paper is redundant, bars and labels are not."""
    image = Image.new("RGB", (512, 512), WHITE)
    draw = ImageDraw.Draw(image)
    draw.line([(60, 440), (480, 440)], fill=BLACK, width=3)
    draw.line([(60, 60), (60, 440)], fill=BLACK, width=3)
    for index, height in enumerate([120, 260, 190, 330, 80]):
        left = 90 + index * 78
        draw.rectangle([left, 440 - height, left + 50, 440], fill=[RED, SKY, GRASS, (240, 170, 40), GREY][index])
        draw.text((left + 10, 450), f"Q{index + 1}", fill=BLACK)
        draw.text((left + 8, 440 - height - 16), str(height), fill=BLACK)
    draw.text((200, 30), "sales per quarter", fill=BLACK)
    return image


def city_at_dusk(seed: int = 3) -> Image.Image:
    """Large (1600x1000): grey sky over towers with lit windows, to show a big AnyRes grid."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (1600, 1000), GREY)
    draw = ImageDraw.Draw(image)
    left = 0
    while left < 1600:
        width = int(rng.integers(120, 260))
        top = int(rng.integers(250, 650))
        draw.rectangle([left, top, left + width, 1000], fill=(40, 40, 55))
        for y in range(top + 20, 1000, 36):
            for x in range(left + 14, left + width - 20, 30):
                if rng.random() < 0.55:
                    draw.rectangle([x, y, x + 14, y + 18], fill=(250, 220, 130))
        left += width + int(rng.integers(10, 40))
    return image


def _disc(side: int) -> Image.Image:
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).ellipse([0, 0, side - 1, side - 1], fill=255)
    return mask


SCENES = {
    "house_in_a_field.png": (house_in_a_field, "What is in the field?"),
    "lighthouse.png": (lighthouse, "Describe the picture."),
    "bar_chart.png": (bar_chart, "Which quarter has the highest bar?"),
    "city_at_dusk.png": (city_at_dusk, "How many buildings are there?"),
}


def write_examples(directory: str | Path) -> list[list[str]]:
    """Draw every scene into `directory` (skipping files already there) and return `[[path, question], ...]`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (draw_scene, question) in SCENES.items():
        path = directory / name
        if not path.exists():
            draw_scene().save(path)
        rows.append([str(path), question])
    return rows
