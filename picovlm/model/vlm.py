"""The vision-language model: ViT -> projector -> image embeddings spliced into the LM's input.

Notation: B rows, T tokens per row, n images in the batch, L = mp_image_token_length image tokens per
image, D = lm_hidden_dim, V = lm_vocab_size.

    pixels (n, 3, H, W) -> ViT -> (n, N, D_vit) -> projector -> (n, L, D)
    input_ids (B, T) -> embed -> (B, T, D); the n x L <|image|> positions, in row-major order, take
    the image embeddings -> decoder -> hidden (B, T, D)

Loss: next-token cross-entropy over supervised positions only (labels != -100). The LM head is
applied to those positions alone, in chunks: with V = 49,152 the head is the biggest matmul in a
super-small model, and computing it at image and padding positions is pure waste.

Generation: prefill the prompt into a preallocated KV cache, then one token per step; prompts are
left-padded so every row's next position is the last column; each row stops at its end token.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from picovlm.config import VLMConfig, build_vlm_config
from picovlm.errors import PicovlmError
from picovlm.hub import PushToHubMixin
from picovlm.model.language import KVCache, LanguageModel
from picovlm.model.projector import ModalityProjector
from picovlm.model.vision import ViT

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class VLMOutput:
    loss: torch.Tensor | None = None  # mean over supervised tokens (or their sum, with reduction="sum")
    n_tokens: int = 0  # supervised tokens in the batch
    logits: torch.Tensor | None = None  # (B, T, V), only when no labels are given


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int = 2048
) -> torch.Tensor:
    """Sum of cross-entropy of (hidden @ weight.T) against targets, never holding all logits at once.

    hidden (N, D), weight (V, D), targets (N,). Each chunk's logits are recomputed in the backward pass
    instead of stored, so peak memory is one chunk of logits, not N x V.
    """

    def chunk_loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(F.linear(h, weight).float(), t, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and hidden.requires_grad and hidden.shape[0] > chunk_size:
            total = total + checkpoint(chunk_loss, h, t, use_reentrant=False)
        else:
            total = total + chunk_loss(h, t)
    return total


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids. temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class VisionLanguageModel(PushToHubMixin, nn.Module):
    def __init__(self, cfg: VLMConfig, tokenizer=None):
        super().__init__()
        self.cfg = cfg
        self.vision_encoder = ViT(cfg)
        self.projector = ModalityProjector(cfg)
        self.decoder = LanguageModel(cfg)
        self.tokenizer = None
        self.processor = None
        self.retrieval = None  # a RetrievalIndex when cfg.retrieval_k > 0 (set by the trainer, or loaded)
        self.init_weights()
        if tokenizer is not None:
            self.attach_tokenizer(tokenizer)

    # --- Initialisation ----------------------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """One init for every parameter, for training from scratch.

        Linear, conv and embedding weights and the ViT's learned positions: N(0, std), truncated at 2 std.
        Projections that write into a residual stream (attention out, MLP down) are scaled by
        1 / sqrt(2 x blocks) so the stream's variance does not grow with depth. Biases 0, norms 1.
        """
        residual_out = {
            *(b.attn.out for b in self.vision_encoder.blocks),
            *(b.mlp.fc2 for b in self.vision_encoder.blocks),
            *(b.attn.o_proj for b in self.decoder.blocks),
            *(b.mlp.down_proj for b in self.decoder.blocks),
        }
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
                scale = 1.0
                if module in residual_out:
                    depth = self.cfg.vit_n_blocks if module in self._vit_modules() else self.cfg.lm_n_blocks
                    scale = 1.0 / math.sqrt(2 * depth)
                nn.init.trunc_normal_(module.weight, std=std * scale, a=-2 * std, b=2 * std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for block in self.decoder.blocks:
            nn.init.ones_(block.attn_norm.weight)
            nn.init.ones_(block.mlp_norm.weight)
        nn.init.ones_(self.decoder.norm.weight)
        patches = self.vision_encoder.patch_embedding
        nn.init.trunc_normal_(patches.position_embedding, std=std, a=-2 * std, b=2 * std)
        if patches.cls_token is not None:
            nn.init.trunc_normal_(patches.cls_token, std=std, a=-2 * std, b=2 * std)

    def _vit_modules(self) -> set[nn.Module]:
        return set(self.vision_encoder.modules())

    # --- Tokenizer ---------------------------------------------------------------------------------

    def attach_tokenizer(self, tokenizer) -> None:
        """Bind a TextTokenizer: its special-token ids go into the config, and `answer` can be used."""
        from picovlm.data.processor import Processor

        if len(tokenizer) > self.cfg.lm_vocab_size:
            raise PicovlmError(
                f"the tokenizer has {len(tokenizer)} tokens but lm_vocab_size={self.cfg.lm_vocab_size}: "
                f"set lm_vocab_size to at least {len(tokenizer)}."
            )
        self.tokenizer = tokenizer
        self.processor = Processor.from_config(tokenizer, self.cfg)
        self.cfg.image_token_id = tokenizer.image_token_id
        self.cfg.pad_token_id = tokenizer.pad_token_id
        self.cfg.eos_token_id = tokenizer.im_end_id

    # --- Forward and loss --------------------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings (B, T, D) with image embeddings at the <|image|> positions."""
        embeds = self.decoder.embed_tokens(input_ids)
        if pixel_values is None or pixel_values.shape[0] == 0:
            return embeds
        if self.cfg.image_token_id is None:
            raise PicovlmError("config.image_token_id is not set: attach a tokenizer before feeding images.")
        image_embeds = self.projector(self.vision_encoder(pixel_values.to(embeds.dtype)))  # (n, L, D)
        slots = input_ids == self.cfg.image_token_id
        if int(slots.sum()) != image_embeds.shape[0] * image_embeds.shape[1]:
            raise PicovlmError(
                f"{int(slots.sum())} <|image|> tokens in the batch but {image_embeds.shape[0]} images x "
                f"{image_embeds.shape[1]} tokens each: the processor and the model config disagree."
            )
        return embeds.masked_scatter(slots.unsqueeze(-1), image_embeds.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> VLMOutput:
        embeds = self.embed(input_ids, pixel_values)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, input_ids.shape).to(input_ids.device)
        # Right padding needs no mask: under causal attention no real token ever sees a later pad.
        key_padding = None if attention_mask is None or is_right_padded(attention_mask) else attention_mask
        hidden = self.decoder(embeds, position_ids, key_padding=key_padding, segment_ids=segment_ids)
        if labels is None:
            return VLMOutput(logits=self.decoder.lm_head(hidden))
        targets = labels[:, 1:]
        supervised = targets != -100
        if segment_ids is not None:  # in a packed row, never predict across a sample boundary
            supervised &= segment_ids[:, 1:] == segment_ids[:, :-1]
        n_tokens = int(supervised.sum())
        total = chunked_cross_entropy(
            hidden[:, :-1][supervised], self.decoder.lm_head.weight, targets[supervised]
        )
        if reduction == "sum":
            return VLMOutput(loss=total, n_tokens=n_tokens)
        return VLMOutput(loss=total / max(n_tokens, 1), n_tokens=n_tokens)

    # --- Generation --------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        on_token: Callable[[torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Left-padded prompts (B, T) -> new tokens (B, <= max_new_tokens), padded after each row's end.

        `on_token(tokens)` is called with each step's (B,) tokens: the hook for streaming.
        """
        B, T = input_ids.shape
        device = input_ids.device
        eos, pad = self.cfg.eos_token_id, self.cfg.pad_token_id if self.cfg.pad_token_id is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        max_new_tokens = min(max_new_tokens, self.cfg.lm_max_position_embeddings - T)
        generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        cache = KVCache(self.cfg, B, T + max_new_tokens, device, self.decoder.embed_tokens.weight.dtype)
        key_padding = torch.cat([attention_mask, attention_mask.new_ones(B, max_new_tokens)], dim=1)
        position_ids = positions_from_mask(attention_mask, input_ids.shape)
        hidden = self.decoder(
            self.embed(input_ids, pixel_values), position_ids, key_padding[:, :T], cache=cache
        )
        logits = self.decoder.lm_head(hidden[:, -1])  # (B, V)
        seen = input_ids.clone() if repetition_penalty else None
        next_position = position_ids[:, -1:] + 1
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        out = []
        for step in range(max_new_tokens):
            if repetition_penalty:
                logits = apply_repetition_penalty(logits, seen, repetition_penalty)
            token = sample_next_token(logits, temperature, top_k, top_p, generator)
            token = token.masked_fill(finished, pad)
            out.append(token)
            if on_token is not None:
                on_token(token)
            if eos is not None:
                finished |= token == eos
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            if seen is not None:
                seen = torch.cat([seen, token[:, None]], dim=1)
            kv_len = cache.length + 1
            hidden = self.decoder(
                self.decoder.embed_tokens(token[:, None]), next_position, key_padding[:, :kv_len], cache=cache
            )
            logits = self.decoder.lm_head(hidden[:, -1])
            next_position = next_position + 1
        return torch.stack(out, dim=1) if out else input_ids.new_zeros(B, 0)

    def prepare_prompts(self, images: list, questions: list[str]) -> dict[str, torch.Tensor]:
        """Left-padded prompt batch for (image or list of images, question) pairs."""
        if self.processor is None:
            raise PicovlmError(
                "this model has no tokenizer: load it with from_pretrained or call attach_tokenizer."
            )
        image_lists = [im if isinstance(im, (list, tuple)) else [im] for im in images]
        questions = self.retrieval_questions(questions, image_lists)
        prompts = [self.processor.encode_prompt(q, len(ims)) for q, ims in zip(questions, image_lists)]
        width = max(len(p) for p in prompts)
        pad = self.processor.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        import numpy as np

        pixels = np.concatenate([self.processor.image_pixels(list(ims)) for ims in image_lists])
        device = self.decoder.embed_tokens.weight.device
        return {
            "input_ids": input_ids.to(device),
            "attention_mask": attention_mask.to(device),
            "pixel_values": torch.from_numpy(pixels).to(device),
        }

    def retrieval_questions(self, questions: list[str], image_lists: list) -> list[str]:
        """The questions as the model reads them: with retrieval on, each followed by the answers of the
        training pictures most similar to its first image (picovlm/retrieval.py); else unchanged."""
        if not self.cfg.retrieval_k:
            return list(questions)
        if self.retrieval is None:
            raise PicovlmError(
                f"this model was trained with retrieval_k={self.cfg.retrieval_k} but has no retrieval index: "
                "load it from its whole folder (retrieval_index.npz and .json beside the weights)."
            )
        return self.retrieval.prompts(questions, [ims[0] for ims in image_lists])

    def answer(
        self, images, questions: str | list[str] = "Describe the image.", **generation
    ) -> str | list[str]:
        """Answer one image (returns a string) or a list of images (returns a list of strings)."""
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        if isinstance(questions, str):
            questions = [questions] * len(images)
        batch = self.prepare_prompts(images, questions)
        was_training = self.training
        self.eval()
        tokens = self.generate(**batch, **generation)
        self.train(was_training)
        answers = [self.decode_answer(row) for row in tokens.tolist()]
        return answers[0] if single else answers

    def decode_answer(self, token_ids: list[int]) -> str:
        eos = self.cfg.eos_token_id
        if eos in token_ids:
            token_ids = token_ids[: token_ids.index(eos)]
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()

    # --- Saving and loading ------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """config.json + model.safetensors (+ tokenizer.json): a folder `from_pretrained` reads back."""
        from safetensors.torch import save_file

        from picovlm.utils import atomic_write_text

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if self.cfg.lm_tie_weights:
            state.pop("decoder.lm_head.weight", None)  # the same tensor as the embedding
        tmp = directory / f".{WEIGHTS_FILE}.tmp"
        save_file(state, str(tmp), metadata={"format": "pt", "library": "picovlm"})
        os.replace(tmp, directory / WEIGHTS_FILE)
        atomic_write_text(directory / CONFIG_FILE, json.dumps(self.cfg.to_dict(), indent=2))
        if self.tokenizer is not None:
            self.tokenizer.save(directory)
        if self.retrieval is not None:
            self.retrieval.save(directory)
        return directory

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, device: str = "cpu", revision: str | None = None
    ):
        """Load from a folder written by save_pretrained, or a Hugging Face Hub repo id with one inside.

        Weights are read with safetensors only: loading never unpickles anything.
        """
        from safetensors.torch import load_file

        directory = resolve_model_dir(name_or_path, revision)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise PicovlmError(
                f"{directory} has no {CONFIG_FILE}: is it a folder written by save_pretrained?"
            )
        cfg = build_vlm_config(json.loads(config_path.read_text()), str(config_path))
        model = cls(cfg)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise PicovlmError(f"{directory} has no {WEIGHTS_FILE}.")
        state = load_file(str(weights))
        if cfg.lm_tie_weights:
            state.setdefault("decoder.lm_head.weight", state["decoder.embed_tokens.weight"])
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing:
            raise PicovlmError(
                f"{weights} lacks weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}."
            )
        if unexpected:
            warnings.warn(f"{weights}: ignoring unknown weights {unexpected[:5]}", stacklevel=2)
        if (directory / "tokenizer.json").is_file():
            from picovlm.data.tokenizer import load_tokenizer

            model.attach_tokenizer(load_tokenizer(directory))
        if cfg.retrieval_k:
            from picovlm.retrieval import RetrievalIndex

            model.retrieval = RetrievalIndex.load(directory)
            if model.retrieval is None:
                raise PicovlmError(
                    f"{directory}: the model retrieves (retrieval_k={cfg.retrieval_k}) but the folder has no "
                    "retrieval_index.json: copy the whole folder that training wrote."
                )
        return model.to(device).eval()


VLM = VisionLanguageModel


def positions_from_mask(attention_mask: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
    """Position ids that start at 0 at each row's first real token (left padding shifts them)."""
    B, T = shape
    if attention_mask is None:
        return torch.arange(T).expand(B, T)
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0).to(attention_mask.device)


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """True when every row is real tokens followed only by padding (or no padding at all)."""
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make already-seen tokens less likely: positive logits divided by `penalty`, negative multiplied."""
    scores = logits.gather(1, seen)
    scores = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits.scatter(1, seen, scores)


def resolve_model_dir(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub repo id, downloaded (or read from the cache) as a folder."""
    path = Path(name_or_path)
    if path.exists():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                str(name_or_path), revision=revision, allow_patterns=["*.json", "*.safetensors", "*.npz"]
            )
        )
    except Exception as err:
        raise PicovlmError(
            f"{name_or_path!r} is not a local folder, and the Hub could not provide it: {err}"
        ) from None
