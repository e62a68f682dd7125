"""``predict --draw``: each face with its box, landmarks, id and active AUs (probability >=
threshold: one for all AUs, or the model's own per AU) listed beside the picture."""
import re
from typing import List, Optional, Sequence, Tuple, Union

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


# one colour per face id, distinct on photos (cycled past ten faces)
FACE_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]
WHITE, GREY = (255, 255, 255), (160, 160, 160)


def _enlarged(image: Image.Image) -> Tuple[Image.Image, float]:
    if image.height >= MIN_HEIGHT:
        return image, 1.0
    scale = MIN_HEIGHT / image.height
    return image.resize((round(image.width * scale), MIN_HEIGHT), Image.BILINEAR), scale


Threshold = Union[float, Sequence[float]]  # one for all AUs, or one per AU in au_names order


def _per_au(threshold: Threshold, count: int) -> List[float]:
    return [float(threshold)] * count if isinstance(threshold, (int, float)) \
        else list(threshold)


def _active_lines(au_names: Sequence[str], probs: Sequence[float], threshold: Threshold,
                  indent: str = "") -> List[Tuple[str, tuple, Optional[float]]]:
    active = sorted(((p, name) for name, p, t in zip(au_names, probs,
                                                     _per_au(threshold, len(au_names)))
                     if p >= t), reverse=True)
    return [(f"{indent}{describe(name)}  {p:.2f}", WHITE, p) for p, name in active] or [
        (f"{indent}no active AU", GREY, None)]


def _most_probable(au_names, probs, threshold: Threshold, limit: int, indent: str = ""):
    """The ``limit`` most probable active AUs' lines, and a line for how many more there are."""
    lines = _active_lines(au_names, probs, threshold, indent)
    if len(lines) > limit:
        lines = lines[:limit] + [(f"{indent}+{len(lines) - limit} more", GREY, None)]
    return lines


def _with_panel(image: Image.Image, lines, threshold: Threshold, font) -> Image.Image:
    """``image`` with a panel on its right: a header, then each ``(text, colour, bar)`` line
    (``bar`` a probability drawn as a bar under the text, or None)."""
    font_size = font.size
    line = round(font_size * 1.7)
    levels = {float(threshold)} if isinstance(threshold, (int, float)) else set(threshold)
    header = (f"active AUs (p >= {levels.pop():g})" if len(levels) == 1
              else "active AUs (p >= the AU's threshold)")
    measure = ImageDraw.Draw(image)
    panel = round(max(measure.textlength(text, font=font) for text in
                      [header] + [text for text, _, _ in lines]) + 2 * font_size)
    canvas = Image.new("RGB", (image.width + panel, max(image.height, line * (len(lines) + 1))),
                       (24, 24, 24))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    left = image.width + font_size
    draw.text((left, line // 4), header, font=font, fill=(200, 200, 200))
    for row, (text, colour, bar) in enumerate(lines, start=1):
        top = row * line
        if bar is not None:
            width = (panel - 2 * font_size) * min(max(bar, 0.0), 1.0)
            bar_top = top + font_size + 4
            draw.rectangle((left, bar_top, left + width, bar_top + 2), fill=(80, 170, 90))
        draw.text((left, top), text, font=font, fill=colour)
    return canvas


def draw_active_aus(image: Image.Image, au_names: Sequence[str], probs: Sequence[float],
                    threshold: Threshold = 0.5) -> Image.Image:
    """A copy of ``image`` (RGB, enlarged to at least ``MIN_HEIGHT`` px high) with a panel on its
    right listing the AUs whose probability is at least ``threshold`` (one number, or one per AU
    in ``au_names`` order), most probable first, each
    with its probability and a bar."""
    image, _ = _enlarged(image)
    font = ImageFont.load_default(size=max(12, image.height // 32))
    return _with_panel(image, _active_lines(au_names, probs, threshold), threshold, font)


def draw_faces(image: Image.Image, rows: Sequence, au_names: Sequence[str],
               threshold: Threshold = 0.5) -> Image.Image:
    """A copy of ``image`` with each face of ``rows`` (the :class:`~pyg_mefl.faces.FaceRow` of
    one frame) drawn: its box and landmarks in the face's colour and its id; in a panel on the
    right each face's active AUs (probability >= ``threshold``) with bars. A whole-image face (no
    landmarks) is drawn as :func:`draw_active_aus` draws it."""
    faces = [row for row in rows if row.success]
    if len(faces) == 1 and faces[0].landmarks is None:
        return draw_active_aus(image, au_names, faces[0].probs, threshold)
    image, scale = _enlarged(image)
    font = ImageFont.load_default(size=max(12, min(image.height // 32, 28)))
    # as many AUs per face as keep the panel about as high as the picture (3 at least)
    fit = image.height // round(font.size * 1.7) - 1
    per_face = max(3, fit // max(1, len(faces)) - 2)
    lines = []
    for row in faces:
        colour = FACE_COLOURS[row.face_id % len(FACE_COLOURS)]
        lines.append((f"face {row.face_id}  (detector {row.confidence:.2f})", colour, None))
        lines += _most_probable(au_names, row.probs, threshold, per_face, indent="  ")
    draw = ImageDraw.Draw(image)
    width = max(2, round(image.height / 240))
    for row in faces:
        colour = FACE_COLOURS[row.face_id % len(FACE_COLOURS)]
        x1, y1, x2, y2 = (v * scale for v in row.box)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        for x, y in zip(row.landmarks[0::2], row.landmarks[1::2]):
            x, y = x * scale, y * scale
            draw.ellipse((x - width, y - width, x + width, y + width), fill=colour)
        label = str(row.face_id)
        left, top, right, bottom = draw.textbbox((x1, y1), label, font=font)
        top = y1 - (bottom - top) - 2 * width
        draw.rectangle((x1, top, x1 + (right - left) + 2 * width, y1), fill=colour)
        draw.text((x1 + width, top), label, font=font, fill=(0, 0, 0))
    return _with_panel(image, lines or [("no face found", GREY, None)], threshold, font)


def draw_faces_in_frame(image: Image.Image, rows: Sequence, au_names: Sequence[str],
                        threshold: Threshold = 0.5, max_aus: int = 6) -> Image.Image:
    """A copy of the video frame ``image``, same size, with each face of ``rows`` drawn in it: its
    box, landmarks and id, and beside the box its ``max_aus`` most probable active AUs (FACS
    names, a bar each) on a dark label; a frame without a face is marked so in a corner."""
    frame = image.convert("RGB")
    overlay = Image.new("RGBA", frame.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    font = ImageFont.load_default(size=max(10, min(frame.height // 36, 22)))
    line = round(font.size * 1.7)
    width = max(1, round(frame.height / 300))
    faces = [row for row in rows if row.success]
    for row in faces:
        colour = FACE_COLOURS[row.face_id % len(FACE_COLOURS)]
        x1, y1, x2, y2 = row.box
        draw.rectangle((x1, y1, x2, y2), outline=colour + (255,), width=width)
        for x, y in zip(row.landmarks[0::2], row.landmarks[1::2]):
            draw.ellipse((x - width - 1, y - width - 1, x + width + 1, y + width + 1),
                         fill=colour + (255,))
        lines = [(f"face {row.face_id}", colour, None)]
        lines += _most_probable(au_names, row.probs, threshold, max_aus)
        label_width = max(draw.textlength(text, font=font) for text, _, _ in lines) + font.size
        left = x2 + 2 * width if x2 + 2 * width + label_width <= frame.width else \
            max(0, x1 - 2 * width - label_width)
        top = min(max(0, y1), max(0, frame.height - line * len(lines) - width))
        draw.rectangle((left, top, left + label_width, top + line * len(lines) + width),
                       fill=(0, 0, 0, 170))
        for number, (text, text_colour, bar) in enumerate(lines):
            y = top + number * line + width
            draw.text((left + font.size // 2, y), text, font=font, fill=text_colour + (255,))
            if bar is not None:
                length = (label_width - font.size) * min(max(bar, 0.0), 1.0)
                draw.rectangle((left + font.size // 2, y + font.size + 3,
                                left + font.size // 2 + length, y + font.size + 4),
                               fill=(80, 170, 90, 255))
    if not faces:
        text = "no face found"
        draw.rectangle((0, 0, draw.textlength(text, font=font) + font.size, line + width),
                       fill=(0, 0, 0, 170))
        draw.text((font.size // 2, width), text, font=font, fill=(200, 200, 200, 255))
    return Image.alpha_composite(frame.convert("RGBA"), overlay).convert("RGB")
