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
left-padded so every row's next position is the last column; each row stops at its end token. The
options are one `picovlm.generation.GenerationConfig`, the runtime's and the server's too.

This file holds the model; around it, by one-line methods kept for convenience: the prompt template
and answer decoding are the processor's (picovlm/data/processor.py), saving, loading and Hub
downloads picovlm/pretrained.py's, the Hub upload picovlm/hub.py's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from picovlm.config import DEFAULT_QUESTION, VLMConfig
from picovlm.errors import ConfigError, PicovlmError
from picovlm.generation import (
    COPY_BIAS_NEEDS_RETRIEVAL,
    COPY_FACTS_NEED_HEADS,
    CopyVotes,
    GenerationConfig,
    copy_options_check,
    generation_config,
    neighbour_weights,
)
from picovlm.model.language import KVCache, LanguageModel
from picovlm.model.projector import ModalityProjector
from picovlm.model.vision import ViT


@dataclass
class VLMOutput:
    loss: torch.Tensor | None = None  # mean over supervised tokens (or their sum, with reduction="sum")
    n_tokens: int = 0  # supervised tokens in the batch
    logits: torch.Tensor | None = None  # (B, T, V), only when no labels are given
    # a training-only extra loss on the same scale as `loss` (the fact heads: picovlm/train/facts.py)
    aux_loss: torch.Tensor | None = None


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 2048,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Sum of cross-entropy of (hidden @ weight.T) against targets, never holding all logits at once.

    hidden (N, D), weight (V, D), targets (N,). Each chunk's logits are recomputed in the backward pass
    instead of stored, so peak memory is one chunk of logits, not N x V. label_smoothing > 0 mixes that
    share of a uniform target into each one-hot target (train.label_smoothing; training only).
    """

    def chunk_loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = F.linear(h, weight).float()
        return F.cross_entropy(logits, t, reduction="sum", label_smoothing=label_smoothing)

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


class VisionLanguageModel(nn.Module):
    def __init__(self, cfg: VLMConfig, tokenizer=None):
        super().__init__()
        self.cfg = cfg
        self.vision_encoder = ViT(cfg)
        self.projector = ModalityProjector(cfg)
        self.decoder = LanguageModel(cfg)
        self.tokenizer = None
        self.processor = None
        self.retrieval = None  # a RetrievalIndex when cfg.retrieval_k > 0 (set by the trainer, or loaded)
        # How this model answers unless told otherwise: saved beside the weights (generation.json), chosen
        # on validation at the end of training (picovlm/eval/choose.py). generate() alone does not read it.
        self.generation = GenerationConfig()
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

        self.processor = Processor.bind(tokenizer, self.cfg)
        self.tokenizer = tokenizer

    # --- Forward and loss --------------------------------------------------------------------------

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        vision_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings (B, T, D) with image embeddings at the <|image|> positions. vision_features:
        the vision tower's output for pixel_values, when the caller already computed it."""
        embeds = self.decoder.embed_tokens(input_ids)
        if pixel_values is None or pixel_values.shape[0] == 0:
            return embeds
        if self.cfg.image_token_id is None:
            raise PicovlmError("config.image_token_id is not set: attach a tokenizer before feeding images.")
        if vision_features is None:
            vision_features = self.vision_encoder(pixel_values.to(embeds.dtype))  # (n, N, D_vit)
        image_embeds = self.projector(vision_features)  # (n, L, D)
        slots = input_ids == self.cfg.image_token_id
        if int(slots.sum()) != image_embeds.shape[0] * image_embeds.shape[1]:
            raise PicovlmError(
                f"{int(slots.sum())} <|image|> tokens in the batch but {image_embeds.shape[0]} images x "
                f"{image_embeds.shape[1]} tokens each: the processor and the model config disagree."
            )
        return embeds.masked_scatter(slots.unsqueeze(-1), image_embeds.to(embeds.dtype))

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        vision_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The decoder's last hidden states (B, T, D), before the LM head."""
        embeds = self.embed(input_ids, pixel_values, vision_features)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, input_ids.shape).to(input_ids.device)
        # Right padding needs no mask: under causal attention no real token ever sees a later pad.
        key_padding = None if attention_mask is None or is_right_padded(attention_mask) else attention_mask
        return self.decoder(embeds, position_ids, key_padding=key_padding, segment_ids=segment_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        vision_features: torch.Tensor | None = None,
    ) -> VLMOutput:
        hidden = self.hidden_states(
            input_ids, pixel_values, attention_mask, position_ids, segment_ids, vision_features
        )
        if labels is None:
            return VLMOutput(logits=self.decoder.lm_head(hidden))
        targets = labels[:, 1:]
        supervised = targets != -100
        if segment_ids is not None:  # in a packed row, never predict across a sample boundary
            supervised &= segment_ids[:, 1:] == segment_ids[:, :-1]
        n_tokens = int(supervised.sum())
        total = chunked_cross_entropy(
            hidden[:, :-1][supervised],
            self.decoder.lm_head.weight,
            targets[supervised],
            label_smoothing=label_smoothing,
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
        generation: GenerationConfig | None = None,
        on_token: Callable[[torch.Tensor], None] | None = None,
        copy_sources: list[list[list[int]]] | None = None,
        copy_weights: list[list[float]] | None = None,
        vision_features: torch.Tensor | None = None,
        **options,
    ) -> torch.Tensor:
        """Left-padded prompts (B, T) -> new tokens (B, <= max_new_tokens), padded after each row's end.

        `generation` (default GenerationConfig(), not the model's own `self.generation`: that one may ask
        for copy sources, which only prepare_prompts builds; `answer` reads it) with keyword `options` over
        it, e.g. max_new_tokens=16.
        `on_token(tokens)` is called with each step's (B,) tokens: the hook for streaming.
        `copy_sources`: each row's token sequences that `copy_bias` leans towards (prepare_prompts gives
        a retrieving model's neighbours' answers); `copy_weights`: each source's vote (default 1/r for the
        r-th; prepare_prompts gives the fact probes' weights when copy_fact_weight > 0).
        `vision_features`: the vision tower's output for pixel_values, when the caller has it already
        (prepare_prompts with copy_fact_weight and heads that read the tower), so it does not run twice.
        """
        gen = generation_config(generation, **options)
        if gen.copy_bias and copy_sources is None:
            raise ConfigError(COPY_BIAS_NEEDS_RETRIEVAL)
        if gen.copy_bias and gen.copy_fact_weight and copy_weights is None:
            raise ConfigError(COPY_FACTS_NEED_HEADS)
        B, T = input_ids.shape
        device = input_ids.device
        eos, pad = self.cfg.eos_token_id, self.cfg.pad_token_id if self.cfg.pad_token_id is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        max_new_tokens = min(gen.max_new_tokens, self.cfg.lm_max_position_embeddings - T)
        generator = None
        if gen.temperature > 0 and gen.seed is not None:
            generator = torch.Generator(device=device).manual_seed(gen.seed)
        cache = KVCache(self.cfg, B, T + max_new_tokens, device, self.decoder.embed_tokens.weight.dtype)
        key_padding = torch.cat([attention_mask, attention_mask.new_ones(B, max_new_tokens)], dim=1)
        position_ids = positions_from_mask(attention_mask, input_ids.shape)
        hidden = self.decoder(
            self.embed(input_ids, pixel_values, vision_features),
            position_ids,
            key_padding[:, :T],
            cache=cache,
        )
        logits = self.decoder.lm_head(hidden[:, -1])  # (B, V)
        # The tokens seen so far, for the repetition penalty: each row's prompt, its padding replaced by
        # its last prompt token (a repeat changes nothing), so a batch penalises as one row alone does.
        seen = torch.where(attention_mask.bool(), input_ids, input_ids[:, -1:])
        next_position = position_ids[:, -1:] + 1
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        out = []
        answers: list[list[int]] = [[] for _ in range(B)]  # for copy_bias: each row's tokens so far
        votes = []
        if gen.copy_bias:
            weights = copy_weights or [None] * len(copy_sources)
            votes = [CopyVotes(sources, weights=w) for sources, w in zip(copy_sources, weights)]
        for step in range(max_new_tokens):
            if gen.penalises_repetition:
                logits = apply_repetition_penalty(logits, seen, gen.repetition_penalty)
            if gen.copy_bias:
                logits = logits.clone()
                for row, (row_votes, answer) in enumerate(zip(votes, answers)):
                    for token, vote in row_votes(answer).items():
                        logits[row, token] += gen.copy_bias * vote
            token = sample_next_token(logits, gen.temperature, gen.top_k, gen.top_p, generator)
            token = token.masked_fill(finished, pad)
            out.append(token)
            if on_token is not None:
                on_token(token)
            if eos is not None and gen.stop_at_eos:
                finished |= token == eos
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            if gen.penalises_repetition:
                seen = torch.cat([seen, token[:, None]], dim=1)
            if gen.copy_bias:
                for answer, t in zip(answers, token.tolist()):
                    answer.append(t)
            kv_len = cache.length + 1
            hidden = self.decoder(
                self.decoder.embed_tokens(token[:, None]), next_position, key_padding[:, :kv_len], cache=cache
            )
            logits = self.decoder.lm_head(hidden[:, -1])
            next_position = next_position + 1
        return torch.stack(out, dim=1) if out else input_ids.new_zeros(B, 0)

    # --- Answers: the processor's prompts and decoding around generate ---------------------------------

    def prepare_prompts(
        self, images: list, questions: list[str], copy_neighbours: int = 0, copy_fact_weight: float = 0.0
    ) -> dict[str, Any]:
        """Left-padded prompt batch for (image or list of images, question) pairs, on the model's device.
        copy_neighbours > 0 (a retrieving model): the batch also holds "copy_sources", the answers of
        that many nearest training pictures as token ids, for generate's copy_bias; with
        copy_fact_weight > 0 also "copy_weights", their votes weighted by the fact heads (with heads
        saved before finding 28, which read the vision tower, also "vision_features": the tower's output
        for the pictures, which both the weights and generate's image embeddings are made from)."""
        if self.processor is None:
            raise PicovlmError(
                "this model has no tokenizer: load it with from_pretrained or call attach_tokenizer."
            )
        image_lists = [im if isinstance(im, (list, tuple)) else [im] for im in images]
        rows = self.neighbour_rows(image_lists, max(copy_neighbours, self.cfg.retrieval_k))
        neighbours = None if rows is None else self.retrieval.answers_of(rows)
        batch = self.processor.prompt_batch(
            self.retrieval_questions(questions, image_lists, neighbours), image_lists
        )
        device = self.decoder.embed_tokens.weight.device
        prompts: dict[str, Any] = {name: torch.from_numpy(array).to(device) for name, array in batch.items()}
        if neighbours is not None and copy_neighbours:
            encode = self.processor.encode_answer
            prompts["copy_sources"] = [
                [encode(a) for a in answers[:copy_neighbours]] for answers in neighbours
            ]
            if copy_fact_weight:
                if self.retrieval.facts is None:  # neighbours were found, so the model retrieves
                    raise ConfigError(COPY_FACTS_NEED_HEADS)
                rows = [found[:copy_neighbours] for found in rows]
                pooled = None
                if not self.retrieval.facts_read_pictures:
                    # The vision tower runs once: its features weigh the votes here, and generate embeds
                    # the pictures from the same features.
                    with torch.no_grad():
                        dtype = self.decoder.embed_tokens.weight.dtype
                        features = self.vision_encoder(prompts["pixel_values"].to(dtype))
                    prompts["vision_features"] = features
                    first = torch.from_numpy(np.cumsum([0] + [len(ims) for ims in image_lists[:-1]]))
                    pooled = features[first].mean(dim=1).float().cpu().numpy()  # each row's first picture
                support = self.retrieval.fact_support([ims[0] for ims in image_lists], rows, pooled)
                prompts["copy_weights"] = [
                    neighbour_weights(len(found), s, copy_fact_weight) for found, s in zip(rows, support)
                ]
        return prompts

    def neighbour_rows(self, image_lists: list, k: int | None = None) -> list[list[int]] | None:
        """With retrieval on, the index rows of the k (default: retrieval_k) training pictures most
        similar to each first image (picovlm/retrieval.py), nearest first; None for a model that does
        not retrieve."""
        if not self.cfg.retrieval_k:
            return None
        if self.retrieval is None:
            raise PicovlmError(
                f"this model was trained with retrieval_k={self.cfg.retrieval_k} but has no retrieval index: "
                "load it from its whole folder (retrieval_index.npz and .json beside the weights)."
            )
        return self.retrieval.neighbour_rows([ims[0] for ims in image_lists], k)

    def neighbour_answers(self, image_lists: list, k: int | None = None) -> list[list[str]] | None:
        """The answers of `neighbour_rows`, nearest first; None for a model that does not retrieve."""
        rows = self.neighbour_rows(image_lists, k)
        return None if rows is None else self.retrieval.answers_of(rows)

    def retrieval_questions(
        self, questions: list[str], image_lists: list, neighbours: list[list[str]] | None = None
    ) -> list[str]:
        """The questions as the model reads them: with retrieval on, each followed by the answers of its
        retrieval_k nearest training pictures (of `neighbours`, when given, nearest first); else
        unchanged."""
        neighbours = neighbours if neighbours is not None else self.neighbour_answers(image_lists)
        if neighbours is None:
            return list(questions)
        return [self.retrieval.prompt(q, answers) for q, answers in zip(questions, neighbours)]

    def answer(
        self,
        images,
        questions: str | list[str] = DEFAULT_QUESTION,
        generation: GenerationConfig | None = None,
        **options,
    ) -> str | list[str]:
        """Answer one image (returns a string) or a list of images (returns a list of strings).

        `generation` (default: the model's own, `self.generation`) with keyword `options` over it."""
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        if isinstance(questions, str):
            questions = [questions] * len(images)
        gen = generation_config(generation or self.generation, **options)
        if gen.probed_facts:
            copy_options_check(gen, self.retrieval)
        batch = self.prepare_prompts(images, questions, gen.copy_source_count, gen.copy_fact_weight)
        was_training = self.training
        self.eval()
        tokens = self.generate(**batch, generation=gen)
        self.train(was_training)
        answers = [self.decode_answer(row) for row in tokens.tolist()]
        if gen.probed_facts:
            firsts = [im[0] if isinstance(im, (list, tuple)) else im for im in images]
            answers = self.retrieval.restate_facts(answers, firsts, gen.probed_facts)
        return answers[0] if single else answers

    def decode_answer(self, token_ids: list[int]) -> str:
        return self.processor.decode_answer(token_ids)

    # --- Saving, loading, sharing: picovlm/pretrained.py and picovlm/hub.py ---------------------------

    def save_pretrained(self, directory: str | os.PathLike):
        """config.json + model.safetensors (+ tokenizer.json): a folder `from_pretrained` reads back."""
        from picovlm.pretrained import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, device: str = "cpu", revision: str | None = None
    ):
        """Load from a folder written by save_pretrained, or a Hugging Face Hub repo id with one inside."""
        from picovlm.pretrained import load_pretrained

        return load_pretrained(name_or_path, device, revision, cls=cls)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Upload to the Hub with a model card; the arguments are picovlm.hub.push_to_hub's."""
        from picovlm.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)


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
