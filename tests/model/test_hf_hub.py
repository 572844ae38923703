"""save_pretrained / from_pretrained round trips, safe loading, and push_to_hub up to the upload call."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from picovlm.config import preset
from picovlm.data.tokenizer import train_tokenizer
from picovlm.errors import PicovlmError
from picovlm.hub import model_card, push_to_hub
from picovlm.model.params import param_report
from picovlm.model.vlm import VisionLanguageModel


@pytest.fixture(scope="module")
def model():
    tokenizer = train_tokenizer(
        ["a small red circle", "two blue squares", "what is in the image"] * 20, vocab_size=300
    )
    torch.manual_seed(0)
    return VisionLanguageModel(preset("tiny", lm_tie_weights=False), tokenizer).eval()


def assert_same_model(a: VisionLanguageModel, b: VisionLanguageModel) -> None:
    assert a.cfg == b.cfg
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_save_and_from_pretrained_round_trip(tmp_path, model):
    model.save_pretrained(tmp_path)
    files = {"config.json", "model.safetensors", "tokenizer.json", "generation.json"}
    assert {p.name for p in tmp_path.iterdir()} == files
    loaded = VisionLanguageModel.from_pretrained(tmp_path)
    assert_same_model(model, loaded)
    assert loaded.generation == model.generation
    text = "what is in the image"
    assert loaded.tokenizer.encode(text) == model.tokenizer.encode(text)
    assert loaded.cfg.image_token_id == model.tokenizer.image_token_id
    ids = torch.tensor([model.tokenizer.encode(text)])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_the_folder_keeps_how_the_model_answers(tmp_path, model):
    """generation.json (chosen on validation by training) is what answer() starts from; a folder saved
    without one answers greedily, and one asking for what the model cannot do names the file."""
    from picovlm.errors import ConfigError
    from picovlm.generation import GENERATION_FILE, GenerationConfig

    saved = model.generation
    try:
        model.generation = GenerationConfig(max_new_tokens=5, repetition_penalty=1.3)
        model.save_pretrained(tmp_path)
    finally:
        model.generation = saved
    loaded = VisionLanguageModel.from_pretrained(tmp_path)
    assert loaded.generation == GenerationConfig(max_new_tokens=5, repetition_penalty=1.3)
    image = torch.rand(3, 32, 32)
    from PIL import Image

    picture = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype("uint8"))
    assert loaded.answer(picture) == model.answer(picture, max_new_tokens=5, repetition_penalty=1.3)
    assert loaded.answer(picture, max_new_tokens=7) == model.answer(
        picture, max_new_tokens=7, repetition_penalty=1.3
    )  # an option over the folder's config, not over greedy

    (tmp_path / GENERATION_FILE).unlink()
    assert VisionLanguageModel.from_pretrained(tmp_path).generation == GenerationConfig()
    (tmp_path / GENERATION_FILE).write_text(json.dumps({"copy_bias": 8.0}))
    with pytest.raises(ConfigError, match=f"{GENERATION_FILE}.*retrieval_k"):  # this model does not retrieve
        VisionLanguageModel.from_pretrained(tmp_path)
    (tmp_path / GENERATION_FILE).write_text('{"temperature": -1')
    with pytest.raises(ConfigError, match=GENERATION_FILE):
        VisionLanguageModel.from_pretrained(tmp_path)


def test_unknown_config_keys_warn_instead_of_crashing(tmp_path, model):
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["a_field_from_a_newer_version"] = 7
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="a_field_from_a_newer_version"):
        loaded = VisionLanguageModel.from_pretrained(tmp_path)
    assert_same_model(model, loaded)


class _Trap:
    """Unpickling this writes a marker file: proof that a loader ran pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_loading_never_unpickles(tmp_path, model, monkeypatch):
    marker = tmp_path / "unpickled"
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    for name in ("pytorch_model.bin", "model.pt"):  # pickles beside the safetensors file
        (folder / name).write_bytes(pickle.dumps(_Trap(marker)))

    def refuse(*args, **kwargs):
        raise AssertionError("a loader called an unpickling function")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    assert_same_model(model, VisionLanguageModel.from_pretrained(folder))
    (folder / "model.safetensors").unlink()  # only pickles left: refused, not read
    with pytest.raises(PicovlmError, match="model.safetensors"):
        VisionLanguageModel.from_pretrained(folder)
    assert not marker.exists()


@pytest.fixture
def recorded_upload(monkeypatch, tmp_path):
    """Test double for the Hub (no network in tests): HfApi.create_repo / upload_folder record their
    arguments, and upload_folder copies the folder it was given before push_to_hub deletes it."""
    from huggingface_hub import HfApi

    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = dict(repo_id=repo_id, token=self.token, **kwargs)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        calls["upload_folder"] = kwargs
        shutil.copytree(kwargs["folder_path"], tmp_path / "uploaded")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls, tmp_path / "uploaded"


def test_push_to_hub_uploads_the_model_with_a_model_card(recorded_upload, model):
    calls, uploaded = recorded_upload
    url = push_to_hub(
        model, "someone/tiny-vlm", private=True, token="hf_test", commit_message="first",
        training_data=["someone/shapes-qa", "photos I took in 2024"],
    )  # fmt: skip
    assert url == "https://huggingface.co/someone/tiny-vlm"
    assert calls["create_repo"] == dict(
        repo_id="someone/tiny-vlm", token="hf_test", private=True, exist_ok=True, repo_type="model"
    )
    assert calls["upload_folder"]["repo_id"] == "someone/tiny-vlm"
    assert calls["upload_folder"]["commit_message"] == "first"
    assert not Path(calls["upload_folder"]["folder_path"]).exists()  # the temp folder is cleaned up
    names = {p.name for p in uploaded.iterdir()}
    assert names == {"config.json", "model.safetensors", "tokenizer.json", "generation.json", "README.md"}
    assert_same_model(model, VisionLanguageModel.from_pretrained(uploaded))

    card = (uploaded / "README.md").read_text()
    import yaml

    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "picovlm" and "picovlm" in front["tags"]
    assert front["datasets"] == ["someone/shapes-qa"]  # only Hub ids go into the metadata
    assert "- photos I took in 2024" in card and "- someone/shapes-qa" in card
    assert f"| `lm_hidden_dim` | `{model.cfg.lm_hidden_dim}` |" in card
    report = param_report(model.cfg)
    assert f"| vision (ViT) | {report.vit:,} |" in card
    assert f"| **total** | **{report.total:,}** |" in card
    assert 'VLM.from_pretrained("someone/tiny-vlm")' in card


def test_push_failure_is_a_user_error(monkeypatch, model):
    from huggingface_hub import HfApi

    def create_repo(self, repo_id, **kwargs):
        raise PermissionError("401 Unauthorized")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    with pytest.raises(PicovlmError, match="someone/x.*401 Unauthorized.*hf auth login"):
        push_to_hub(model, "someone/x")


def test_hub_push_cli(recorded_upload, tmp_path, model, capsys):
    from picovlm.cli import main

    calls, uploaded = recorded_upload
    model.save_pretrained(tmp_path / "run")
    argv = ["hub", "push", "--model", str(tmp_path / "run"), "--repo", "me/m"]
    argv += ["--data", "me/d", "--license", "mit"]
    assert main(argv) == 0
    assert "uploaded to https://huggingface.co/me/m" in capsys.readouterr().out
    assert calls["create_repo"]["private"] is False
    card = (uploaded / "README.md").read_text()
    assert "license: mit" in card and "- me/d" in card


def test_model_card_without_data_says_so(model):
    card = model_card(model)
    assert "Not recorded." in card and "datasets:" not in card
