"""Hugging Face checkpoints: our towers load transformers' SigLIP / SigLIP2 / Llama and compute the same thing.

Each test builds a tiny random transformers model, saves it to a folder with save_pretrained, loads it
through the very functions that real checkpoints use (picovlm.model.hf), and compares outputs in fp32
on the CPU. transformers is imported here only: picovlm's runtime never imports it.
"""

import dataclasses
import json
import shutil

import pytest
import torch
import transformers  # a dev extra: the parity tests fail, never skip, without it

from picovlm.errors import PicovlmError
from picovlm.model.hf import (
    config_from_hf,
    language_to_hf,
    load_language_weights,
    load_vision_weights,
    save_hf,
    vision_to_hf,
    vlm_from_pretrained_towers,
)
from picovlm.model.vision import ViT
from picovlm.model.vlm import VisionLanguageModel, positions_from_mask

SIGLIP = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32,
    patch_size=8, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh", vision_use_head=False,
)  # fmt: skip
LLAMA = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=120, rope_theta=50000.0, rms_norm_eps=1e-5, max_position_embeddings=256,
)  # fmt: skip


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere: HF's init leaves norms at 1 and biases at 0, which would hide a swap."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def hf_siglip(n_layers=3, **changes):
    torch.manual_seed(0)
    cfg = transformers.SiglipVisionConfig(**{**SIGLIP, "num_hidden_layers": n_layers, **changes})
    return perturbed(transformers.SiglipVisionModel(cfg).eval(), seed=1)


def hf_llama(n_layers=3, **changes):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**{**LLAMA, "num_hidden_layers": n_layers, **changes})
    cfg._attn_implementation = "eager"  # the reference: plain softmax attention, not our SDPA path
    return perturbed(transformers.LlamaForCausalLM(cfg).eval(), seed=2)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Saved folders: a SigLIP vision model, a SiglipModel (text tower + pooling head), tied/untied Llamas."""
    root = tmp_path_factory.mktemp("hf")
    hf_siglip().save_pretrained(root / "siglip")
    full_cfg = transformers.SiglipConfig(
        vision_config={**SIGLIP, "vision_use_head": True},
        text_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=50
        ),
    )
    torch.manual_seed(0)
    perturbed(transformers.SiglipModel(full_cfg)).save_pretrained(root / "siglip-full")
    hf_llama(tie_word_embeddings=True).save_pretrained(root / "llama-tied")
    hf_llama(tie_word_embeddings=False).save_pretrained(root / "llama-untied")
    # large checkpoints come in shards with an index (SmolLM2-1.7B, SigLIP-so400m): the same, cut small
    hf_siglip().save_pretrained(root / "siglip-sharded", max_shard_size="20KB")
    hf_llama(tie_word_embeddings=False).save_pretrained(root / "llama-sharded", max_shard_size="20KB")
    return root


def images(n=2, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def left_padded_batch(vocab=120):
    g = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, vocab, (3, 9), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0  # left padding, as generation uses
    attention_mask[2, :5] = 0
    return input_ids, attention_mask


# --- Vision -----------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["siglip", "siglip-full", "siglip-sharded"])
def test_siglip_vision_tower_matches_transformers(checkpoints, folder):
    cfg = config_from_hf(checkpoints / folder, checkpoints / "llama-tied")
    vit = ViT(cfg).eval()
    report = load_vision_weights(vit, checkpoints / folder)
    assert (report.blocks_loaded, report.blocks_available) == (3, 3)
    reference = transformers.SiglipVisionModel.from_pretrained(checkpoints / folder).eval()
    if folder == "siglip-full":  # a SiglipModel: vision tower under vision_model., pooling head skipped
        assert any("vision_model." in n for n in report.notes) and any("head" in n for n in report.notes)
    pixels = images()
    with torch.no_grad():
        expected = reference(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(vit(pixels), expected)


@pytest.mark.parametrize("image_size", [32, 64])  # 64: positions resized from the 4x4 grid to 8x8
def test_siglip2_linear_patch_embedding_matches_transformers(tmp_path, image_size):
    torch.manual_seed(0)
    hf_cfg = transformers.Siglip2VisionConfig(
        **{k: v for k, v in SIGLIP.items() if k != "image_size"}, num_patches=16
    )
    reference = perturbed(transformers.Siglip2VisionModel(hf_cfg))
    reference.save_pretrained(tmp_path)
    cfg = config_from_hf(tmp_path, lm_hidden_dim=32, lm_inter_dim=64, lm_n_heads=4, lm_n_kv_heads=2)
    assert cfg.vit_img_size == 32  # from num_patches x patch_size
    cfg = dataclasses.replace(cfg, vit_img_size=image_size)
    vit = ViT(cfg).eval()
    assert load_vision_weights(vit, tmp_path).fmt == "siglip2"
    pixels = images(size=image_size)
    # SigLIP2 takes pre-cut patches, each flattened as (row, column, channel)
    B, P, g = pixels.shape[0], 8, image_size // 8
    patches = pixels.view(B, 3, g, P, g, P).permute(0, 2, 4, 3, 5, 1).reshape(B, g * g, P * P * 3)
    with torch.no_grad():
        expected = reference(
            pixel_values=patches,
            pixel_attention_mask=torch.ones(B, g * g, dtype=torch.long),
            spatial_shapes=torch.tensor([[g, g]] * B),
        ).last_hidden_state
        torch.testing.assert_close(vit(pixels), expected)


def test_vision_truncation_keeps_the_first_blocks(checkpoints):
    cfg = config_from_hf(checkpoints / "siglip", checkpoints / "llama-tied", vit_n_blocks=2)
    vit = ViT(cfg).eval()
    report = load_vision_weights(vit, checkpoints / "siglip")
    assert (report.blocks_loaded, report.blocks_available) == (2, 3)
    assert any("truncated" in n for n in report.notes)
    three = transformers.SiglipVisionModel.from_pretrained(checkpoints / "siglip")
    two = transformers.SiglipVisionModel(
        transformers.SiglipVisionConfig(**{**SIGLIP, "num_hidden_layers": 2})
    )
    result = two.load_state_dict(three.state_dict(), strict=False)
    assert not result.missing_keys and all(".layers.2." in k for k in result.unexpected_keys)
    pixels = images()
    with torch.no_grad():
        torch.testing.assert_close(vit(pixels), two.eval()(pixel_values=pixels).last_hidden_state)


def test_vision_positions_are_resized_for_another_image_size(checkpoints):
    cfg = config_from_hf(checkpoints / "siglip", checkpoints / "llama-tied", vit_img_size=64)
    vit = ViT(cfg).eval()
    report = load_vision_weights(vit, checkpoints / "siglip")
    assert any("4x4 grid to 8x8" in n for n in report.notes)
    reference = transformers.SiglipVisionModel.from_pretrained(checkpoints / "siglip").eval()
    pixels = images(size=64)
    with torch.no_grad():  # transformers resizes the same way when asked to interpolate
        expected = reference(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        torch.testing.assert_close(vit(pixels), expected)


# --- Language model -----------------------------------------------------------------------------


def our_logits(model, input_ids, attention_mask):
    with torch.no_grad():
        return model(input_ids, attention_mask=attention_mask).logits


def hf_logits(reference, input_ids, attention_mask):
    with torch.no_grad():
        position_ids = positions_from_mask(attention_mask, input_ids.shape)
        return reference(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits


@pytest.mark.parametrize(
    "folder, extra_vocab", [("llama-tied", 0), ("llama-untied", 0), ("llama-tied", 3), ("llama-sharded", 0)]
)
def test_llama_logits_match_transformers(checkpoints, folder, extra_vocab):
    cfg = config_from_hf(checkpoints / "siglip", checkpoints / folder, lm_vocab_size=120 + extra_vocab)
    assert cfg.lm_tie_weights == (folder == "llama-tied") and cfg.lm_re_base == 50000.0
    if folder.endswith("sharded"):
        assert len(list((checkpoints / folder).glob("*.safetensors"))) > 2  # really in several shards
    model = VisionLanguageModel(cfg).eval()
    report = load_language_weights(model, checkpoints / folder)
    assert report.blocks_loaded == 3
    reference = transformers.LlamaForCausalLM.from_pretrained(checkpoints / folder).eval()
    input_ids, attention_mask = left_padded_batch()
    ours = our_logits(model, input_ids, attention_mask)
    theirs = hf_logits(reference, input_ids, attention_mask)
    real = attention_mask.bool()  # padding positions are never read, and the two fill them differently
    torch.testing.assert_close(ours[..., :120][real], theirs[real])
    if extra_vocab:  # picovlm's added tokens start at the mean pretrained embedding
        embed = model.decoder.embed_tokens.weight
        torch.testing.assert_close(embed[120:], embed[:120].mean(0).expand(extra_vocab, -1))
        assert any("3 new rows" in n for n in report.notes)


def test_llama_truncation_equals_a_shallower_transformers_model(checkpoints):
    cfg = config_from_hf(checkpoints / "siglip", checkpoints / "llama-untied", lm_n_blocks=2)
    model = VisionLanguageModel(cfg).eval()
    report = load_language_weights(model, checkpoints / "llama-untied")
    assert (report.blocks_loaded, report.blocks_available) == (2, 3)
    three = transformers.LlamaForCausalLM.from_pretrained(checkpoints / "llama-untied")
    two_cfg = transformers.LlamaConfig(**{**LLAMA, "num_hidden_layers": 2, "tie_word_embeddings": False})
    two = transformers.LlamaForCausalLM(two_cfg)
    result = two.load_state_dict(three.state_dict(), strict=False)
    assert not result.missing_keys and all(".layers.2." in k for k in result.unexpected_keys)
    input_ids, attention_mask = left_padded_batch()
    real = attention_mask.bool()
    torch.testing.assert_close(
        our_logits(model, input_ids, attention_mask)[real],
        hf_logits(two.eval(), input_ids, attention_mask)[real],
    )


# --- Mismatches: a clear error naming the field and both values ----------------------------------


@pytest.mark.parametrize(
    "changes, loader, message",
    [
        (dict(vit_hidden_dim=64), "vision", r"vit_hidden_dim=64 but the checkpoint's hidden_size=32"),
        (dict(vit_n_heads=4), "vision", r"vit_n_heads=4 but the checkpoint's num_attention_heads=2"),
        (dict(vit_n_blocks=4), "vision", r"vit_n_blocks=4 but the checkpoint has only 3 blocks"),
        (dict(lm_hidden_dim=64), "lm", r"lm_hidden_dim=64 but the checkpoint's hidden_size=32"),
        (dict(lm_n_kv_heads=1), "lm", r"lm_n_kv_heads=1 but the checkpoint's num_key_value_heads=2"),
        (dict(lm_re_base=10000.0), "lm", r"lm_re_base=10000.0 but the checkpoint's rope_theta=50000.0"),
        (dict(lm_n_blocks=5), "lm", r"lm_n_blocks=5 but the checkpoint has only 3 blocks"),
        (dict(lm_vocab_size=100), "lm", r"lm_vocab_size=100 but the checkpoint's vocab_size=120"),
    ],
)
def test_mismatched_config_names_the_field_and_both_values(checkpoints, changes, loader, message):
    cfg = dataclasses.replace(config_from_hf(checkpoints / "siglip", checkpoints / "llama-tied"), **changes)
    model = VisionLanguageModel(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PicovlmError, match=message):
        if loader == "vision":
            load_vision_weights(model, checkpoints / "siglip")
        else:
            load_language_weights(model, checkpoints / "llama-tied")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # nothing half-loaded


def test_untied_checkpoint_into_tied_config_is_an_error(checkpoints):
    cfg = config_from_hf(checkpoints / "siglip", checkpoints / "llama-untied", lm_tie_weights=True)
    with pytest.raises(PicovlmError, match="lm_tie_weights=False"):
        load_language_weights(VisionLanguageModel(cfg), checkpoints / "llama-untied")


def test_a_sharded_checkpoint_reads_what_its_index_lists(tmp_path, checkpoints):
    folder = shutil.copytree(checkpoints / "llama-sharded", tmp_path / "llama")
    cfg = config_from_hf(checkpoints / "siglip", folder)
    expected = VisionLanguageModel(cfg)
    load_language_weights(expected, folder)
    # a stray file beside the shards (an older single-file save) is not read: the index decides
    perturbed(hf_llama(tie_word_embeddings=False), seed=9).save_pretrained(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors", folder / "model.safetensors")
    model = VisionLanguageModel(cfg)
    load_language_weights(model, folder)
    torch.testing.assert_close(model.decoder.state_dict(), expected.decoder.state_dict())
    # a shard the index lists but the folder lacks is an incomplete download, said as such
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    first_shard = sorted(set(index["weight_map"].values()))[0]
    (folder / first_shard).unlink()
    with pytest.raises(PicovlmError, match=f"{first_shard} is not in .*download is incomplete"):
        load_language_weights(VisionLanguageModel(cfg), folder)


def test_pickled_only_checkpoint_is_refused(tmp_path, checkpoints):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    (tmp_path / "config.json").write_text((checkpoints / "llama-tied" / "config.json").read_text())
    cfg = config_from_hf(checkpoints / "siglip", checkpoints / "llama-tied")
    with pytest.raises(PicovlmError, match="never unpickles"):
        load_language_weights(VisionLanguageModel(cfg), tmp_path)


# --- Export back to Hugging Face layout, and the `init` path -------------------------------------


def test_exported_towers_load_in_transformers_and_match(tmp_path, checkpoints):
    cfg = config_from_hf(checkpoints / "siglip", checkpoints / "llama-untied")
    model = perturbed(VisionLanguageModel(cfg), seed=5)
    save_hf(vision_to_hf(model), tmp_path / "vision")
    save_hf(language_to_hf(model), tmp_path / "lm")
    vision = transformers.SiglipVisionModel.from_pretrained(tmp_path / "vision").eval()
    lm = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "lm").eval()
    pixels = images()
    input_ids, attention_mask = left_padded_batch()
    real = attention_mask.bool()
    with torch.no_grad():
        torch.testing.assert_close(
            vision(pixel_values=pixels).last_hidden_state, model.vision_encoder(pixels)
        )
    torch.testing.assert_close(
        hf_logits(lm, input_ids, attention_mask)[real], our_logits(model, input_ids, attention_mask)[real]
    )


def test_init_cli_builds_a_truncated_vlm_with_the_lm_tokenizer(tmp_path, checkpoints):
    import shutil

    from picovlm.cli import main
    from picovlm.data.tokenizer import train_tokenizer

    lm_dir = tmp_path / "lm"
    shutil.copytree(checkpoints / "llama-tied", lm_dir)
    tokenizer = train_tokenizer(
        ["a red circle", "two blue squares", "describe the image"] * 20, vocab_size=300
    )
    tokenizer.save(lm_dir)
    out = tmp_path / "vlm"
    argv = ["init", "--vision", str(checkpoints / "siglip"), "--lm", str(lm_dir), "--out", str(out)]
    assert main([*argv, "--vit-blocks", "1", "--lm-blocks", "2", "model.lm_max_length=128"]) == 0
    model = VisionLanguageModel.from_pretrained(out)
    assert (model.cfg.vit_n_blocks, model.cfg.lm_n_blocks, model.cfg.lm_max_length) == (1, 2, 128)
    assert model.cfg.lm_vocab_size == len(tokenizer) and model.tokenizer is not None
    direct, reports = vlm_from_pretrained_towers(
        checkpoints / "siglip", lm_dir, vit_n_blocks=1, lm_n_blocks=2
    )
    assert [r.blocks_loaded for r in reports] == [1, 2]
    state = model.state_dict()
    for name, tensor in direct.state_dict().items():
        if not name.startswith("projector."):  # the projector is freshly initialised each time
            torch.testing.assert_close(state[name], tensor)


def test_config_from_sparse_hub_style_config_files(tmp_path):
    """Hub config.json files list only non-default values: SigLIP-B/16's vision_config is nearly empty."""
    import json

    (tmp_path / "siglip").mkdir()
    (tmp_path / "siglip" / "config.json").write_text(
        json.dumps({"model_type": "siglip", "vision_config": {"model_type": "siglip_vision_model"}})
    )
    smollm2 = dict(
        model_type="llama", hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
        num_hidden_layers=30, vocab_size=49152, rms_norm_eps=1e-5, rope_theta=100000, rope_scaling=None,
        tie_word_embeddings=True, max_position_embeddings=8192, head_dim=64,
    )  # fmt: skip
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text(json.dumps(smollm2))
    cfg = config_from_hf(tmp_path / "siglip", tmp_path / "lm", vit_n_blocks=1, lm_n_blocks=1)
    expected = dict(
        vit_hidden_dim=768, vit_inter_dim=3072, vit_n_heads=12, vit_patch_size=16, vit_img_size=224,
        lm_hidden_dim=576, lm_n_heads=9, lm_n_kv_heads=3, lm_vocab_size=49152, lm_re_base=100000.0,
        lm_tie_weights=True, vit_n_blocks=1, lm_n_blocks=1,
    )  # fmt: skip
    assert {k: getattr(cfg, k) for k in expected} == expected
    with pytest.raises(PicovlmError, match="no config.json"):
        config_from_hf(tmp_path)
