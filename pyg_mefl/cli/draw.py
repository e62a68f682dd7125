"""``predict --draw``: each face with its active AUs (probability >= threshold) listed beside it."""
import re
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

# FACS names of the AUs the published models score; sub AUs "AUL<k>"/"AUR<k>" are the left/right
# halves of AU k.
FACS_NAMES = {
    1: "inner brow raiser", 2: "outer brow raiser", 4: "brow lowerer", 5: "upper lid raiser",
    6: "cheek raiser", 7: "lid tightener", 9: "nose wrinkler", 10: "upper lip raiser",
    11: "nasolabial deepener", 12: "lip corner puller", 13: "sharp lip puller", 14: "dimpler",
    15: "lip corner depressor", 16: "lower lip depressor", 17: "chin raiser", 18: "lip pucker",
    19: "tongue show", 20: "lip stretcher", 22: "lip funneler", 23: "lip tightener",
    24: "lip pressor", 25: "lips part", 26: "jaw drop", 27: "mouth stretch", 32: "lip bite",
    38: "nostril dilator", 39: "nostril compressor",
}
MIN_HEIGHT = 448  # small face crops are enlarged so that the text stays readable
_AU_NAME = re.compile(r"^AU([LR]?)(\d+)$")


def describe(au_name: str) -> str:
    """``"AU12 lip corner puller"``, ``"AUL12 left lip corner puller"``; unknown names as they
    are."""
    match = _AU_NAME.match(au_name)
    if not match or int(match.group(2)) not in FACS_NAMES:
        return au_name
    side = {"L": "left ", "R": "right ", "": ""}[match.group(1)]
    return f"{au_name} {side}{FACS_NAMES[int(match.group(2))]}"


def draw_active_aus(image: Image.Image, au_names: Sequence[str], probs: Sequence[float],
                    threshold: float = 0.5) -> Image.Image:
    """A copy of ``image`` (RGB, enlarged to at least ``MIN_HEIGHT`` px high) with a panel on its
    right listing the AUs whose probability is at least ``threshold``, most probable first, each
    with its probability and a bar."""
    if image.height < MIN_HEIGHT:
        scale = MIN_HEIGHT / image.height
        image = image.resize((round(image.width * scale), MIN_HEIGHT), Image.BILINEAR)
    active = sorted(((p, name) for name, p in zip(au_names, probs) if p >= threshold),
                    reverse=True)
    font_size = max(12, image.height // 32)
    font = ImageFont.load_default(size=font_size)
    line = round(font_size * 1.7)
    texts = [f"{describe(name)}  {p:.2f}" for p, name in active] or ["no active AU"]
    measure = ImageDraw.Draw(image)
    panel = round(max(measure.textlength(text, font=font) for text in texts) + 2 * font_size)
    canvas = Image.new("RGB", (image.width + panel, max(image.height, line * (len(texts) + 1))),
                       (24, 24, 24))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    left = image.width + font_size
    header = f"active AUs (p >= {threshold:g})"
    draw.text((left, line // 4), header, font=font, fill=(200, 200, 200))
    for row, text in enumerate(texts, start=1):
        top = row * line
        if active:
            width = (panel - 2 * font_size) * min(max(active[row - 1][0], 0.0), 1.0)
            bar_top = top + font_size + 4
            draw.rectangle((left, bar_top, left + width, bar_top + 2), fill=(80, 170, 90))
        draw.text((left, top), text, font=font, fill=(255, 255, 255))
    return canvas
