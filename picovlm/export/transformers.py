"""Export a picovlm model as a transformers folder: Idefics3, SmolVLM's architecture in transformers.

    AutoModelForImageTextToText.from_pretrained(DIR)   -> Idefics3ForConditionalGeneration
    AutoProcessor.from_pretrained(DIR)                 -> Idefics3Processor (image processor + tokenizer)

both offline, and greedy `generate` answers what picovlm answers, token for token (tests/deploy). The
folder holds:

    config.json               Idefics3Config: SigLIP-style vision config, Llama text config, scale_factor
                              = mp_pixel_shuffle_factor (1 works: the shuffle is then a reshape)
    model.safetensors         the weights under Idefics3's names (picovlm/model/hf.py: vlm_to_idefics3)
    generation_config.json    <|im_end|> ends an answer, <|pad|> pads, 64 new tokens as VLM.answer
    tokenizer.json            picovlm's BPE with <|image|> renamed <image>, the name Idefics3Processor
                              looks for (same id); tokenizer_config.json names the special tokens
    chat_template.jinja       picovlm's ChatML: images first in the turn, then the text (as training did)
    preprocessor_config.json  Idefics3ImageProcessor without splitting: RGB (transparency over white),
                              one bicubic resize to vit_img_size x vit_img_size, [-1, 1] as SigLIP.
                              Its PIL backend gives picovlm's pixels exactly; with torchvision installed
                              transformers picks the torchvision backend unless told backend="pil"
    processor_config.json     Idefics3Processor with image_seq_len = mp_image_token_length

Why the prompts are the same token ids: Idefics3Processor writes each image as
<fake_token_around_image><global-img><image> x L<fake_token_around_image>, and picovlm's processor
writes that very layout for every model whose tokenizer has the two wrapper tokens (all models
trained since). A model trained before them had a bare run of image tokens, which no stock
transformers processor writes: exporting it is refused with that reason (docs/deploy.md).

A retrieving model (retrieval_k > 0) is exported too, with its index files: its prompts carry
"Similar: ..." lines that the caller builds (picovlm.retrieval.RetrievalIndex.load(DIR).prompts),
because transformers has nowhere to run the lookup. docs/deploy.md shows how.

transformers is imported only for the check after writing, and only when it is installed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from picovlm.config import DEFAULT_QUESTION
from picovlm.errors import PicovlmError
from picovlm.utils import ProgressFn, atomic_path, atomic_write_text, no_progress

IDEFICS3_IMAGE = "<image>"  # the placeholder Idefics3Processor expands into one image's tokens
MAX_NEW_TOKENS = 64  # VLM.answer's default, so `generate` without arguments answers as picovlm does

# picovlm's ChatML (picovlm/data/processor.py), as a Jinja template for apply_chat_template: in a turn
# whose content is a list, its images come first, then its texts, because training put them so.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def export_transformers(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    check: bool = True,
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """Write `out_dir` (atomically) from a save_pretrained folder; return a report.

    check=True loads the written folder with transformers (when installed) and compares, on one
    picture, its prompt ids (must be equal), pixels and logits (1e-4 at most) and a 16-token greedy
    answer (must be equal) with picovlm's; a difference is an error and nothing is written.
    """
    from picovlm.model.hf import vlm_to_idefics3
    from picovlm.model.vlm import VisionLanguageModel

    started = time.perf_counter()
    progress(0, 3, "loading the model")
    model = VisionLanguageModel.from_pretrained(model_dir).float().eval()
    refuse_unexportable(model, model_dir)
    cfg = model.cfg
    config, state = vlm_to_idefics3(model)
    with atomic_path(out_dir) as out:
        out.mkdir(parents=True)
        progress(1, 3, "writing the weights, tokenizer and processor")
        from safetensors.torch import save_file

        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        files = {
            "config.json": config,
            "generation_config.json": generation_config(cfg),
            "tokenizer.json": idefics3_tokenizer_json(model.tokenizer),
            "tokenizer_config.json": tokenizer_config(model.tokenizer, cfg),
            "preprocessor_config.json": image_processor_config(cfg),
            "processor_config.json": {"processor_class": "Idefics3Processor", "image_seq_len": cfg.mp_image_token_length},
        }  # fmt: skip
        for name, data in files.items():
            atomic_write_text(out / name, json.dumps(data, indent=2, ensure_ascii=False))
        atomic_write_text(out / "chat_template.jinja", CHAT_TEMPLATE)
        if model.retrieval is not None:  # the caller builds the "Similar: ..." prompt from it
            model.retrieval.save(out)
        report: dict[str, Any] = {"format": "transformers (Idefics3)", "checked": None}
        if check:
            progress(2, 3, "loading the folder with transformers and comparing")
            report["checked"] = check_with_transformers(model, out)
    report["seconds"] = round(time.perf_counter() - started, 2)
    report["file_sizes"] = {p.name: p.stat().st_size for p in sorted(Path(out_dir).iterdir()) if p.is_file()}
    progress(3, 3, "done")
    return report


def refuse_unexportable(model, model_dir, position_grid: bool = True) -> None:
    """Raise, naming the reason and the fix, where transformers would not answer as picovlm does.
    position_grid=False skips the grid check, a quirk of transformers alone (the GGUF export's case)."""
    tokenizer, cfg = model.tokenizer, model.cfg
    if tokenizer is None:
        raise PicovlmError(f"{model_dir} has no tokenizer.json: save the model with its tokenizer.")
    if not tokenizer.wraps_images:
        raise PicovlmError(
            f"{model_dir}: this model was trained before picovlm's prompts wrapped each image as Idefics3 does "
            "(<fake_token_around_image><global-img> ... <fake_token_around_image>); transformers' Idefics3Processor "
            "always writes that wrapper, so the exported model would read prompts it was never trained on and answer "
            "differently. Retrain it with this picovlm (its tokenizer then has the wrapper), or deploy it with "
            "`picovlm export` (ONNX)."
        )
    if cfg.vit_cls_flag:
        raise PicovlmError(f"{model_dir}: vit_cls_flag=True; Idefics3's vision tower has no CLS token.")
    grid = cfg.vit_img_size // cfg.vit_patch_size
    buckets = idefics3_position_buckets(grid) if position_grid else list(range(grid))
    if buckets != list(range(grid)):
        raise PicovlmError(
            f"{model_dir}: a {grid}x{grid} patch grid (vit_img_size / vit_patch_size) meets a rounding quirk in "
            f"transformers' Idefics3 vision embeddings: patch rows/columns get positions {buckets}, so patches "
            "would share learned positions. Use an image or patch size giving another grid (7, 14, 16 and 32 are fine)."
        )


def idefics3_position_buckets(n: int) -> list[int]:
    """The learned-position index Idefics3's vision embeddings give patch rows 0..n-1 of a whole image.

    They compute it in float32 as bucketize(i * (1 / n), arange(1/n, 1, 1/n), right=True), which is not
    i for a few grids (19, 25, 29, ...); picovlm's ViT uses position i. Mirrored here so the export can
    refuse those grids instead of writing a model that sees its patches shuffled."""
    boundaries = torch.arange(1 / n, 1.0, 1 / n)
    fractions = torch.arange(n, dtype=torch.float32) * (1.0 / torch.tensor(n))
    fractions = torch.clamp(fractions, max=1.0 - 1e-6)
    return torch.bucketize(fractions, boundaries, right=True).tolist()


def idefics3_tokenizer_json(tokenizer) -> dict[str, Any]:
    """picovlm's tokenizer.json with <|image|> renamed <image> (same id), as Idefics3Processor expects."""
    from picovlm.data.tokenizer import IMAGE

    data = json.loads(tokenizer.tokenizer.to_str())
    for token in data.get("added_tokens", []):
        if token["content"] == IMAGE:
            token["content"] = IDEFICS3_IMAGE
    vocab = (data.get("model") or {}).get("vocab")
    if isinstance(vocab, dict) and IMAGE in vocab:
        vocab[IDEFICS3_IMAGE] = vocab.pop(IMAGE)
    return data


def tokenizer_config(tokenizer, cfg) -> dict[str, Any]:
    """The other special tokens need no listing: tokenizer.json marks them special (skipped when decoding)
    and Idefics3Processor finds <image>, <fake_token_around_image> and <global-img> by name."""
    from picovlm.data.tokenizer import IM_END, PAD

    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": PAD,
        "unk_token": None,
        "model_max_length": cfg.lm_max_position_embeddings,
        "padding_side": "left",  # generation pads on the left, as VLM.prepare_prompts does
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


def generation_config(cfg) -> dict[str, Any]:
    return {
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "bos_token_id": None,
        "do_sample": False,
        "max_new_tokens": MAX_NEW_TOKENS,
    }


def image_processor_config(cfg) -> dict[str, Any]:
    """Idefics3's image processor set to do what picovlm's preprocess_image does: no splitting, no
    aspect-keeping resize, one bicubic resize straight to vit_img_size square, mean = std = 0.5."""
    from picovlm.data.processor import IMAGE_MEAN, IMAGE_STD

    size = {"longest_edge": cfg.vit_img_size}
    return {
        "image_processor_type": "Idefics3ImageProcessor",
        "processor_class": "Idefics3Processor",
        "do_convert_rgb": True,
        "do_resize": False,  # the aspect-keeping first resize: off
        "size": size,
        "do_image_splitting": False,  # then images go straight to max_image_size x max_image_size
        "max_image_size": size,
        "resample": 3,  # PIL bicubic, as picovlm
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [IMAGE_MEAN] * 3,
        "image_std": [IMAGE_STD] * 3,
        "do_pad": True,
    }


def check_with_transformers(model, out: Path, tolerance: float = 1e-4) -> dict[str, Any] | str:
    """Load `out` with transformers and compare with `model` on one picture: the processor's input ids
    and pixels, the logits, and a greedy answer. Returns the figures, or why nothing was checked."""
    try:
        import transformers
    except ImportError:
        return "not checked: transformers is not installed (pip install transformers)"
    import numpy as np
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    hf_model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out, backend="pil")  # PIL resizes as picovlm does
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    question = DEFAULT_QUESTION
    ours = model.prepare_prompts([image], [question])
    theirs = transformers_inputs(processor, [image], [model.retrieval_questions([question], [[image]])[0]])
    if theirs["input_ids"].tolist() != ours["input_ids"].tolist():
        raise PicovlmError(
            "the exported processor writes other token ids than picovlm: "
            f"{theirs['input_ids'][0].tolist()} vs {ours['input_ids'][0].tolist()}; report it with the model's config.json."
        )
    pixels = float((theirs["pixel_values"][:, 0] - ours["pixel_values"]).abs().max())
    with torch.no_grad():
        ref = model(ours["input_ids"], ours["pixel_values"]).logits
        got = hf_model(**theirs).logits
    logits = float((ref - got).abs().max() / max(1.0, float(ref.abs().max())))
    answer_ours = model.generate(**ours, max_new_tokens=16)[0].tolist()
    answer_theirs = hf_model.generate(**theirs, max_new_tokens=16, do_sample=False)[
        0, ours["input_ids"].shape[1] :
    ]
    same = _until_eos(answer_ours, model.cfg.eos_token_id) == _until_eos(
        answer_theirs.tolist(), model.cfg.eos_token_id
    )
    figures = {"transformers": transformers.__version__, "pixels_max_diff": pixels, "logits_max_diff": logits,
               "same_greedy_tokens": same}  # fmt: skip
    if not (pixels <= tolerance and logits <= tolerance and same):
        raise PicovlmError(
            f"transformers does not reproduce picovlm on the exported folder ({figures}); report it with the "
            "model's config.json and the transformers version."
        )
    return figures


def transformers_inputs(processor, images: list, questions: list[str]) -> dict[str, torch.Tensor]:
    """The exported processor's tensors for (picture, question) pairs, through its chat template:
    what a transformers user writes."""
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True,
        )
        for q in questions
    ]
    batch = processor(text=texts, images=[[im] for im in images], return_tensors="pt", padding=True)
    return dict(batch)


def _until_eos(tokens: list[int], eos: int | None) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
