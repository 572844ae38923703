"""Share a model on the Hugging Face Hub: save_pretrained + a generated model card, then one upload.

    push_to_hub(model, "you/picovlm-shapes", training_data=["you/shapes-qa"])

A plain function (`model.push_to_hub(repo_id, ...)` calls it). The folder uploaded is exactly what
`VLM.from_pretrained` reads back (picovlm/pretrained.py writes it): config.json, model.safetensors,
tokenizer.json (when the model has a tokenizer), plus README.md, the model card: YAML front matter
(library_name: picovlm, tags, datasets), a usage snippet, the config as a table, parameters per tower
(from picovlm.model.params), and the training data sources.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from picovlm.errors import PicovlmError

TAGS = ["picovlm", "vision-language-model", "image-text-to-text", "super-small"]


def model_card(
    model: Any,
    repo_id: str | None = None,
    training_data: list[str] | None = None,
    base_models: list[str] | None = None,
    license: str | None = None,
) -> str:
    """The README.md text for a model: front matter, usage, config table, parameter counts, data."""
    import yaml

    from picovlm.model.params import param_report

    cfg = model.cfg
    training_data = list(training_data or [])
    meta: dict[str, Any] = {"library_name": "picovlm", "pipeline_tag": "image-text-to-text", "tags": TAGS}
    if license:
        meta["license"] = license
    if base_models:
        meta["base_model"] = list(base_models)
    hub_datasets = [d for d in training_data if _looks_like_hub_id(d)]
    if hub_datasets:
        meta["datasets"] = hub_datasets
    name = repo_id or "picovlm model"
    report = param_report(cfg)
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).strip(),
        "---",
        "",
        f"# {name}",
        "",
        "A super-small vision-language model made with picovlm: a SigLIP-style "
        "vision transformer, a pixel-shuffle projector and a Llama-style language model.",
        "",
        "## Usage",
        "",
        "```python",
        "from PIL import Image",
        "from picovlm.model.vlm import VLM",
        "",
        f'model = VLM.from_pretrained("{repo_id or "path/to/this/folder"}")',
        'print(model.answer(Image.open("photo.jpg"), "What is in the image?"))',
        "```",
        "",
        "## Parameters",
        "",
        "| tower | parameters |",
        "|---|---:|",
        f"| vision (ViT) | {report.vit:,} |",
        f"| projector | {report.projector:,} |",
        f"| language model | {report.lm:,} |",
        f"| &nbsp;&nbsp;embedding | {report.lm_embedding:,} |",
        f"| &nbsp;&nbsp;non-embedding | {report.lm_non_embedding:,} |",
        f"| **total** | **{report.total:,}** |",
        "",
        "## Configuration",
        "",
        "| field | value |",
        "|---|---|",
        *(f"| `{k}` | `{v}` |" for k, v in cfg.to_dict().items()),
        "",
        "## Training data",
        "",
        *([f"- {d}" for d in training_data] or ["Not recorded."]),
        "",
    ]
    if base_models:
        lines += ["## Initialised from", "", *(f"- {m}" for m in base_models), ""]
    return "\n".join(lines)


def _looks_like_hub_id(name: str) -> bool:
    """'owner/name' that is not a local path: the Hub's datasets list accepts only such ids."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def prepare_hub_folder(
    model: Any, directory: str | os.PathLike, repo_id: str | None = None, **card: Any
) -> Path:
    """save_pretrained into `directory` and write README.md beside it: the folder push_to_hub uploads."""
    from picovlm.pretrained import save_pretrained
    from picovlm.utils import atomic_write_text

    directory = save_pretrained(model, directory)
    atomic_write_text(directory / "README.md", model_card(model, repo_id=repo_id, **card))
    return directory


def push_to_hub(
    model: Any,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload picovlm model",
    training_data: list[str] | None = None,
    base_models: list[str] | None = None,
    license: str | None = None,
) -> str:
    """Create (or reuse) the model repo `repo_id` and upload the model with its card. Returns the repo URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="picovlm-push-") as tmp:
        folder = prepare_hub_folder(
            model, tmp, repo_id=repo_id, training_data=training_data, base_models=base_models, license=license
        )
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(
                repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, repo_type="model"
            )
        except Exception as err:  # auth, network, permissions: all fixable by the user
            raise PicovlmError(
                f"upload to {repo_id!r} failed ({type(err).__name__}: {err}). Log in with `hf auth login` "
                f"or pass a write token, and check that you may write to that namespace."
            ) from None
    return str(url)
