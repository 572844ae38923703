"""Small cauldron-schema datasets on disk for the grow tests: the demo set, and a second, different one."""

from __future__ import annotations

import io

import pytest
from PIL import Image

CITY_FACTS = [
    ("Paris", "France", 2102650, "the Seine"),
    ("Vienna", "Austria", 1982097, "the Danube"),
    ("Cairo", "Egypt", 9539673, "the Nile"),
    ("Lisbon", "Portugal", 545923, "the Tagus"),
    ("Warsaw", "Poland", 1861975, "the Vistula"),
    ("Budapest", "Hungary", 1706851, "the Danube"),
]


def png_bytes(colour: tuple[int, int, int], size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def city_rows() -> list[dict]:
    """A second, different set: city photos with factual answers full of names and numbers, no groups."""
    rows = []
    for i, (city, country, people, river) in enumerate(CITY_FACTS):
        answer = (
            f"This is {city}, the capital of {country}. About {people:,} people live there. "
            f"The city lies on {river}."
        )
        rows.append(
            {
                "images": [{"bytes": png_bytes((40 * i, 100, 200 - 30 * i)), "path": f"city{i}.png"}],
                "texts": [{"user": "Which city is this?", "assistant": answer, "source": "cities"}],
            }
        )
    return rows


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    from picovlm.data.cauldron import save_cauldron
    from picovlm.data.scenes import make_demo_dataset

    path = tmp_path_factory.mktemp("data") / "demo"
    save_cauldron(make_demo_dataset(8, seed=1, image_size=32), path)
    return path


@pytest.fixture(scope="session")
def cities_dir(tmp_path_factory):
    from datasets import Dataset

    from picovlm.data.cauldron import cauldron_features, save_cauldron

    path = tmp_path_factory.mktemp("data") / "cities"
    save_cauldron(Dataset.from_list(city_rows(), features=cauldron_features()), path)
    return path
