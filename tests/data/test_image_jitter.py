"""Training-time image augmentation (train.image_augment): moves and scales, never flips or recolours."""

from __future__ import annotations

import numpy as np
from PIL import Image

from picovlm.data.image_jitter import border_colour, jitter_image
from picovlm.data.pipeline import CauldronTorchDataset


def marked_picture() -> Image.Image:
    """A red square left of centre and a blue one right of it, on white."""
    pixels = np.full((64, 64, 3), 255, np.uint8)
    pixels[24:40, 12:26] = (220, 30, 30)
    pixels[24:40, 38:52] = (30, 30, 220)
    return Image.fromarray(pixels)


def centroid_x(pixels: np.ndarray, colour: tuple[int, int, int]) -> float:
    mask = np.abs(pixels.astype(int) - colour).sum(-1) < 60
    return float(np.nonzero(mask)[1].mean())


def test_jitter_moves_and_scales_but_keeps_layout_colours_and_background():
    picture = marked_picture()
    jittered = [np.asarray(jitter_image(picture, np.random.default_rng(seed))) for seed in range(20)]
    assert all(j.shape == (64, 64, 3) for j in jittered)
    # every draw differs from the picture and from the others
    assert all(not np.array_equal(j, np.asarray(picture)) for j in jittered)
    assert len({j.tobytes() for j in jittered}) == 20
    for j in jittered:
        # never flipped: red stays left of blue; both colours stay (nothing recoloured or cut away)
        assert centroid_x(j, (220, 30, 30)) < centroid_x(j, (30, 30, 220))
        # the uncovered border is the picture's white, not black
        assert border_colour(Image.fromarray(j)) == (255, 255, 255)
    # the same generator state gives the same picture
    again = np.asarray(jitter_image(picture, np.random.default_rng(3)))
    assert np.array_equal(again, jittered[3])


def test_transparent_pictures_are_jittered_over_white():
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((0, 128, 0, 255), (8, 8, 24, 24))
    out = jitter_image(rgba, np.random.default_rng(0))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


def test_the_training_dataset_draws_a_new_jitter_per_visit_repeatably(demo_dataset, processor):
    rows = demo_dataset.select(range(4))
    plain = CauldronTorchDataset(rows, processor)
    assert np.array_equal(plain[0]["pixel_values"], plain[0]["pixel_values"])
    first, second = (CauldronTorchDataset(rows, processor, augment=jitter_image, seed=5) for _ in range(2))
    visit1, visit2 = first[0], first[0]
    assert not np.array_equal(visit1["pixel_values"], visit2["pixel_values"])
    assert not np.array_equal(visit1["pixel_values"], plain[0]["pixel_values"])
    assert visit1["input_ids"] == plain[0]["input_ids"]  # the text is untouched
    # another dataset with the same seed repeats the same sequence of pictures
    assert np.array_equal(second[0]["pixel_values"], visit1["pixel_values"])
    assert np.array_equal(second[0]["pixel_values"], visit2["pixel_values"])
