"""Pictures of one character each, drawn with an installed font: the part the glyph real sets share.

`picovlm realset emoji` (picovlm/data/emoji.py) draws Noto Color Emoji, `picovlm realset cjk`
(picovlm/data/cjk.py) draws Chinese characters in three typefaces. Both need the same three things,
kept here so they behave alike:

  * `GlyphFont`: a font file from a Debian package, opened with a clear error naming the package when
    it is missing;
  * `GlyphFont.draw(text)`: the glyph centred on a white square (its ink, not its line box, is centred,
    so every picture has the same margin), or None when the font cannot draw `text` as one glyph: it
    has no glyph (nothing drawn, or the font's "missing glyph" box), or it draws an emoji sequence as
    several pictures side by side (a flag or a family the font does not join into one);
  * `png_bytes`: the RGB PNG the rows store, at the size the set asks for.

The rows are saved by `picovlm.data.split.save_rows`, as the Fashion-MNIST sets are.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, features

from picovlm.errors import PicovlmError

# A code point no font draws (the last private-use one): what a font draws for a glyph it lacks.
MISSING_PROBE = "\U0010fffd"
# Ink wider than this many font sizes is more than one glyph (one emoji is 1.25 sizes wide, a CJK
# character at most 1): the font drew a sequence it cannot join as its parts.
MAX_GLYPH_WIDTH = 1.5


@dataclass(frozen=True)
class FontFile:
    """One typeface of a font file: where the package puts it and how to draw with it."""

    name: str  # the typeface's name as an answer or a doc says it ("Noto Serif CJK SC")
    path: Path
    install: str  # the command that installs the file, for the error when it is missing
    size: int  # pixels per em to draw at (a colour bitmap font has one size: Noto Color Emoji's is 109)
    index: int = 0  # the face inside a .ttc collection
    colour: bool = False  # a colour font: draw its own colours instead of black


class GlyphFont:
    """An opened FontFile that draws single glyphs centred on a white `canvas` x `canvas` square."""

    def __init__(self, spec: FontFile, canvas: int):
        if not Path(spec.path).is_file():
            raise PicovlmError(
                f"{spec.path}: the font {spec.name} is not installed. Install it with `{spec.install}`"
            )
        if not features.check("raqm"):
            # without text shaping a sequence (an emoji with a skin tone, a flag) comes out as its parts
            raise PicovlmError(
                "Pillow cannot shape text here (no libraqm, or no libfribidi for it), so it cannot join an "
                "emoji sequence into one glyph: `apt-get install libfribidi0` (Pillow's PyPI wheel bundles "
                "libraqm and loads libfribidi from the system), or `apt-get install libraqm0` for a Pillow "
                "built from source"
            )
        try:
            self.font = ImageFont.truetype(
                str(spec.path), spec.size, index=spec.index, layout_engine=ImageFont.Layout.RAQM
            )
        except OSError as err:
            raise PicovlmError(
                f"{spec.path}: cannot open the font {spec.name} ({err}); reinstall: {spec.install}"
            ) from err
        self.spec = spec
        self.canvas = canvas
        missing = self._ink(MISSING_PROBE)
        self._missing = None if missing is None else missing.tobytes()

    def _ink(self, text: str) -> Image.Image | None:
        """`text` drawn on a transparent layer and cropped to its ink; None when nothing is drawn."""
        mode = "RGBA" if self.spec.colour else "L"
        left, top, right, bottom = self.font.getbbox(text, mode=mode)
        if right <= left or bottom <= top:
            return None
        layer = Image.new("RGBA", (right - left + 2, bottom - top + 2), (255, 255, 255, 0))
        ImageDraw.Draw(layer).text(
            (1 - left, 1 - top), text, font=self.font, fill=(0, 0, 0, 255), embedded_color=self.spec.colour
        )
        ink = layer.getchannel("A").getbbox()
        return layer.crop(ink) if ink else None

    def draw(self, text: str) -> Image.Image | None:
        """`text` as one glyph centred on white (RGB, canvas x canvas), or None when the font cannot."""
        glyph = self._ink(text)
        if glyph is None or glyph.width > MAX_GLYPH_WIDTH * self.spec.size:
            return None
        if self._missing is not None and glyph.tobytes() == self._missing:
            return None
        if max(glyph.size) > self.canvas:  # never crop a glyph: shrink it to fit instead
            scale = self.canvas / max(glyph.size)
            glyph = glyph.resize(
                (max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))),
                Image.Resampling.LANCZOS,
            )
        picture = Image.new("RGB", (self.canvas, self.canvas), "white")
        picture.paste(glyph, ((self.canvas - glyph.width) // 2, (self.canvas - glyph.height) // 2), glyph)
        return picture


def png_bytes(image: Image.Image, image_size: int) -> bytes:
    """`image` as RGB PNG bytes (what the rest of the pipeline expects), resized to image_size (0: as is)."""
    image = image.convert("RGB")
    if image_size and image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
