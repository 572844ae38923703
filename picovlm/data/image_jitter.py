"""Training-time image augmentation that keeps the facts an answer states (`train.image_augment`).

A super-small model trained on a few thousand pictures memorises them: on the real-data suite the test
loss ended 1.3 nats per token above the train loss (docs/recipes.md). Showing each picture slightly
moved and resized every time it comes round makes the exact pixels worthless to memorise, so the
vision tower has to learn the shapes.

What is *not* done, because it can change what the answer says: flips and rotations (left and right,
a glyph's strokes and a flag's layout are facts), colour changes (colours are facts), and crops that
could cut the object away. The strip a shift uncovers is filled with the picture's own border colour,
so a symbol on white stays on white.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# How far a picture may move (a share of its side) and be scaled: small enough that an object on a
# margin stays in the frame, large enough that no two visits of a picture give the same pixels.
MAX_SHIFT = 0.08
SCALE_RANGE = (0.85, 1.1)


def border_colour(image: Image.Image) -> tuple[int, ...]:
    """The median colour of the outermost pixels: the background of a symbol, a sprite or a glyph."""
    pixels = np.asarray(image)
    edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return tuple(int(v) for v in np.median(edge, axis=0).reshape(-1))


def jitter_image(
    image: Image.Image,
    rng: np.random.Generator,
    max_shift: float = MAX_SHIFT,
    scale_range: tuple[float, float] = SCALE_RANGE,
) -> Image.Image:
    """The picture scaled about its centre by a random factor in `scale_range` and shifted by up to
    `max_shift` of its side in x and y; same size and mode, uncovered pixels in the border colour."""
    from picovlm.data.processor import to_rgb  # transparency over white first, as the model sees it

    image = to_rgb(image)
    width, height = image.size
    scale = rng.uniform(*scale_range)
    shift_x, shift_y = rng.uniform(-max_shift, max_shift, size=2) * (width, height)
    # PIL's affine map sends each output pixel (x, y) to the input pixel it is read from:
    # x_in = (x - centre - shift) / scale + centre.
    cx, cy = width / 2, height / 2
    inverse = (1 / scale, 0.0, cx - (cx + shift_x) / scale, 0.0, 1 / scale, cy - (cy + shift_y) / scale)
    return image.transform(
        image.size, Image.Transform.AFFINE, inverse, Image.Resampling.BILINEAR, fillcolor=border_colour(image)
    )
