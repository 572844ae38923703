import json

import pytest
import yaml

from picovlm.config import PRESETS, TrainConfig, VLMConfig, load_config, parse_overrides, preset, save_config
from picovlm.errors import ConfigError


def test_derived_values_follow_the_fields_they_depend_on():
    cfg = VLMConfig(vit_img_size=512, vit_patch_size=16, mp_pixel_shuffle_factor=4, lm_max_length=512)
    assert cfg.mp_image_token_length == (512 // 16 // 4) ** 2 == 64
    assert cfg.lm_head_dim == 576 // 9
    small = preset("super-small-11")
    assert small.mp_image_token_length == 49 and small.lm_head_dim == 36 and small.vit_head_dim == 768


@pytest.mark.parametrize(
    "changes, names",
    [
        (dict(lm_hidden_dim=216, lm_n_heads=5), ["lm_hidden_dim", "lm_n_heads"]),
        (dict(lm_n_heads=6, lm_n_kv_heads=4, lm_hidden_dim=216), ["lm_n_kv_heads"]),
        (dict(lm_hidden_dim=90, lm_n_heads=6, lm_n_kv_heads=1), ["RoPE", "lm_n_heads"]),
        (dict(vit_img_size=224, vit_patch_size=16, mp_pixel_shuffle_factor=4), ["mp_pixel_shuffle_factor"]),
        (dict(vit_img_size=230, vit_patch_size=16), ["vit_img_size", "vit_patch_size"]),
        (dict(vit_hidden_dim=768, vit_n_heads=5), ["vit_n_heads"]),
        (dict(lm_n_blocks=0), ["lm_n_blocks"]),
        (dict(retrieval_colour_weight=-1.0), ["retrieval_colour_weight", "thumbnails alone"]),
        (dict(retrieval_gradient_weight="best"), ["retrieval_gradient_weight", "use auto"]),
    ],
)
def test_invalid_combinations_name_the_field_and_the_fix(changes, names):
    with pytest.raises(ConfigError) as err:
        VLMConfig(**changes)
    for name in names:
        assert name in str(err.value)


def test_presets_exist_for_every_blog_iteration():
    for it in range(3, 12):
        assert f"super-small-{it:02d}" in PRESETS
    cfg = preset("super-small-08")
    assert (cfg.lm_hidden_dim, cfg.lm_inter_dim, cfg.lm_n_heads, cfg.lm_n_kv_heads) == (108, 96, 6, 1)
    assert (
        cfg.vit_n_blocks == 1 and cfg.lm_n_blocks == 1 and cfg.lm_vocab_size == 49152 and cfg.lm_tie_weights
    )
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("super-small-99")


def test_file_and_overrides_round_trip(tmp_path):
    model, train = load_config(
        "super-small-11", overrides=["model.lm_n_blocks=2", "lr_mp=0.001", "train.packing=true"]
    )
    assert model.lm_n_blocks == 2 and train.lr_mp == 0.001 and train.packing is True
    for name in ("run.yaml", "run.json"):
        save_config(tmp_path / name, model, train)
        model2, train2 = load_config(path=tmp_path / name)
        assert model2 == model and train2 == train
    # A file can name a preset and change fields on top of it.
    (tmp_path / "p.yaml").write_text("preset: super-small-03\nmodel:\n  lm_hidden_dim: 144\n")
    model3, _ = load_config(path=tmp_path / "p.yaml")
    assert model3.lm_hidden_dim == 144 and model3.lm_inter_dim == 192


def test_bad_overrides_and_files_get_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not of the form"):
        parse_overrides(["lm_n_blocks"])
    with pytest.raises(ConfigError, match="unknown field"):
        parse_overrides(["model.lm_layers=3"])
    (tmp_path / "bad.yaml").write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(path=tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")


def test_unknown_keys_in_an_old_config_warn_instead_of_failing(tmp_path):
    from picovlm.config import build_vlm_config

    values = {**preset("tiny").to_dict(), "lm_use_tokens": False, "vlm_checkpoint_path": "x"}
    with pytest.warns(UserWarning, match="lm_use_tokens"):
        cfg = build_vlm_config(json.loads(json.dumps(values)))
    assert cfg == preset("tiny")


def test_retired_fields_in_old_files_load_quietly(tmp_path, caplog):
    """vit_model_type, lm_model_type and lm_tokenizer were written by older versions and read by none:
    an old run's config.yaml and an old model folder's config.json still load, with a debug note only."""
    import logging
    import warnings

    from picovlm.config import build_vlm_config

    old = {"vit_model_type": "google/siglip-base-patch16-224", "lm_model_type": "HuggingFaceTB/SmolLM2-135M",
           "lm_tokenizer": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # fmt: skip
    run_config = tmp_path / "config.yaml"
    run_config.write_text(yaml.safe_dump({"preset": "tiny", "model": old, "train": {"max_steps": 3}}))
    model_config = tmp_path / "config.json"
    model_config.write_text(json.dumps({**preset("tiny").to_dict(), **old}))
    with warnings.catch_warnings(), caplog.at_level(logging.DEBUG, logger="picovlm.config"):
        warnings.simplefilter("error")  # not even a warning
        model_cfg, train_cfg = load_config(path=run_config)
        from_folder = build_vlm_config(json.loads(model_config.read_text()), str(model_config))
    assert model_cfg == from_folder == preset("tiny") and train_cfg.max_steps == 3
    assert "lm_tokenizer" in caplog.text
    assert not set(old) & set(preset("tiny").to_dict())  # gone from what new files hold


def test_values_of_the_wrong_type_are_config_errors():
    with pytest.raises(ConfigError, match="use null"):
        load_config("tiny", overrides=["train.max_steps=None"])
    with pytest.raises(ConfigError, match="lm_hidden_dim"):
        VLMConfig(lm_hidden_dim="216")
    assert TrainConfig(lr_mp=1).lr_mp == 1  # an int is a fine float


def test_exponent_notation_is_a_number_on_the_command_line_and_in_files(tmp_path):
    """PyYAML reads `6e-3` (no dot) as a string; a rate written so must still train at 0.006."""
    model, train = load_config(
        "tiny", overrides=["train.lr_mp=6e-3", "train.weight_decay=1E-1", "model.retrieval_colour_weight=2e0"]
    )
    assert train.lr_mp == 0.006 and isinstance(train.lr_mp, float) and train.weight_decay == 0.1
    assert model.retrieval_colour_weight == 2.0 and train.fact_loss_weight == "auto"
    (tmp_path / "run.yaml").write_text("train:\n  lr_vision_backbone: 2e-3\n  fact_loss_weight: 5e-1\n")
    _, from_file = load_config("tiny", path=tmp_path / "run.yaml")
    assert from_file.lr_vision_backbone == 0.002 and from_file.fact_loss_weight == 0.5
    for word in ("fast", "nan"):  # words stay words, and a float field refuses them by name
        with pytest.raises(ConfigError, match="lr_mp="):
            load_config("tiny", overrides=[f"train.lr_mp={word}"])


def test_no_preset_means_the_recipe_default_and_threads_are_checked(tmp_path):
    from picovlm.config import DEFAULT_PRESET

    model, train = load_config(overrides=["model.lm_n_blocks=2"])
    assert model == preset(DEFAULT_PRESET, lm_n_blocks=2) and train == TrainConfig()
    # its index weighs colours and strokes as training finds best; VLMConfig() (and older model files)
    # compare thumbnails alone
    assert (model.retrieval_colour_weight, model.retrieval_gradient_weight) == ("auto", "auto")
    assert (VLMConfig().retrieval_colour_weight, VLMConfig().retrieval_gradient_weight) == (0.0, 0.0)
    chosen = load_config(
        overrides=["model.retrieval_colour_weight=0", "model.retrieval_gradient_weight=1.5"]
    )[0]
    assert (chosen.retrieval_colour_weight, chosen.retrieval_gradient_weight) == (0.0, 1.5)
    # A file without a preset starts from the default too; one with a preset starts from that.
    (tmp_path / "f.yaml").write_text("model:\n  lm_hidden_dim: 144\n")
    assert load_config(path=tmp_path / "f.yaml")[0] == preset(DEFAULT_PRESET, lm_hidden_dim=144)
    with pytest.raises(ConfigError, match="threads=-1"):
        TrainConfig(threads=-1)
    with pytest.raises(ConfigError, match=r"sample_cache_mb=-1 is negative: use 0 \(off\)"):
        TrainConfig(sample_cache_mb=-1)
    with pytest.raises(ConfigError, match=r"label_smoothing=1.5 must be in \[0, 1\)"):
        TrainConfig(label_smoothing=1.5)
    # the fact loss takes "auto" (its default), 0 or a weight; from the command line too
    assert load_config(overrides=["train.fact_loss_weight=0.5"])[1].fact_loss_weight == 0.5
    with pytest.raises(ConfigError, match=r"fact_loss_weight='on': use auto, 0 \(off\) or a weight"):
        TrainConfig(fact_loss_weight="on")
