"""The parameter report against the blog's Table 1 (docs/params.md explains iterations 4 and 5)."""

import json

import pytest

from picovlm.cli import main
from picovlm.config import preset
from picovlm.model.params import count, param_report

# Published "LLM SIZE" and "VIT SIZE" of Table 1, per iteration.
TABLE_1 = {
    3: (3_593_592, 7_830_528),
    4: (3_593_592, 7_830_528),
    5: (3_594_456, 7_830_528),
    6: (7_216_560, 7_830_528),
    7: (5_402_052, 7_830_528),
    8: (5_367_060, 7_830_528),
    9: (7_209_648, 5_469_696),
    10: (7_209_648, 4_289_280),
    11: (10_850_760, 4_289_280),
}
# Columns whose own settings give other counts: the table's figures equal other head settings.
INCONSISTENT = {4, 5}


@pytest.mark.parametrize("iteration", sorted(TABLE_1))
def test_table_1_sizes(iteration):
    report = param_report(preset(f"super-small-{iteration:02d}"))
    llm, vit = TABLE_1[iteration]
    assert report.vit == vit
    if iteration in INCONSISTENT:
        assert report.lm != llm
    else:
        assert report.lm == llm


def test_inconsistent_columns_match_the_head_settings_explained_in_the_docs():
    # Iteration 4's published count is iteration 3's heads (4 heads, 1 kv head); iteration 5's is 6 heads, 2 kv.
    assert param_report(preset("super-small-04", lm_n_heads=4)).lm == TABLE_1[4][0]
    assert param_report(preset("super-small-05", lm_n_kv_heads=2)).lm == TABLE_1[5][0]


def test_report_counts_equal_a_real_model():
    from picovlm.model.vlm import VisionLanguageModel

    cfg = preset("tiny")
    model = VisionLanguageModel(cfg)
    report = param_report(cfg)
    assert report.total == count(model)
    assert report.vit == count(model.vision_encoder) and report.lm == count(model.decoder)
    assert param_report(preset("nanovlm-222m")).total == pytest.approx(222e6, rel=0.01)


def test_params_cli_prints_json(capsys):
    assert main(["params", "--preset", "super-small-11", "model.lm_vocab_size=49152", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["lm"] == 10_850_760 and figures["vit"] == 4_289_280
    assert figures["total"] == figures["vit"] + figures["projector"] + figures["lm"]
    assert main(["params", "--preset", "super-small-11", "model.lm_hidden_dim=144"]) == 0
    assert "ViT" in capsys.readouterr().out
    assert main(["params", "--preset", "super-small-11", "model.lm_n_heads=5"]) == 1
    assert "lm_n_heads" in capsys.readouterr().err
    # retrieval adds prompt lines, not weights: the blog's model with it has the blog's counts
    assert (
        main(["params", "--preset", "super-small-11-retrieval", "model.lm_vocab_size=49152", "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["total"] == figures["total"]


def test_params_reports_the_model_the_default_recipe_trains(capsys):
    """picovlm-small trains with the recipe's 1,024-token BPE, not the preset's 49,152 rows (issue 15)."""
    assert main(["params", "--preset", "picovlm-small", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    hidden = preset("picovlm-small").lm_hidden_dim
    assert figures["lm_vocab_size"] == 1024 and figures["lm_embedding"] == 1024 * hidden
    assert figures["lm"] == 455_112 and figures["total"] == 2_921_544
    assert "tokenizer_vocab_size" in figures["vocabulary"] and "lm_vocab_size=49152" in figures["vocabulary"]
    assert main(["params", "--preset", "picovlm-small"]) == 0
    text = capsys.readouterr().out
    assert "vocabulary: 1,024 tokens, what `picovlm train` gives this model" in text
    assert "total                2,921,544" in text
    # the published size stays one override away, and says it is as given
    assert main(["params", "--preset", "picovlm-small", "model.lm_vocab_size=49152", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["lm_embedding"] == 10_616_832 and figures["lm"] == 10_850_760
    assert "as given" in figures["vocabulary"]
    # the recipe's cap is a train field: changing it changes the report
    assert main(["params", "--preset", "picovlm-small", "train.tokenizer_vocab_size=2048", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lm_embedding"] == 2048 * hidden


def test_params_with_data_counts_the_bpe_the_trainer_would_train(tmp_path, capsys):
    from picovlm.data.cauldron import load_cauldron
    from picovlm.data.scenes import write_demo
    from picovlm.data.tokenizer import train_tokenizer
    from picovlm.train.loop import training_texts

    write_demo(tmp_path / "demo", n=80, seed=0, image_size=32)
    expected = len(train_tokenizer(training_texts(load_cauldron(tmp_path / "demo", split="train")), 1024))
    assert expected < 1024  # the demo texts have fewer merges to learn than the cap
    assert main(["params", "--preset", "picovlm-small", f"train.data_dir={tmp_path / 'demo'}", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["lm_vocab_size"] == expected
    assert figures["lm_embedding"] == expected * preset("picovlm-small").lm_hidden_dim
    # ... and the 32 px pictures as it reads them: 224 px / 32-px patches halved twice to 56 px / 8 px
    assert (figures["vit_img_size"], figures["vit_patch_size"]) == (56, 8) and "at most 32 px" in figures[
        "pictures"
    ]
    kept = ["params", "--preset", "picovlm-small", f"train.data_dir={tmp_path / 'demo'}"]
    assert main([*kept, "train.native_image_size=false", "--json"]) == 0
    as_configured = json.loads(capsys.readouterr().out)
    assert as_configured["vit_img_size"] == 224 and as_configured["pictures"] is None
    assert (
        as_configured["vit"] - figures["vit"]
        == 3 * (32 * 32 - 8 * 8) * preset("picovlm-small").vit_hidden_dim
    )
    # a run's own config.yaml states its vocabulary: reported as given
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  lm_vocab_size: 413\n")
    assert main(["params", "--preset", "picovlm-small", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lm_vocab_size"] == 413
