"""The language model: a Llama-style decoder (SmolLM2 geometry), with a preallocated KV cache.

Notation: B batch, T new positions in this call, S = past + T key positions, D = lm_hidden_dim,
nh = lm_n_heads, nkv = lm_n_kv_heads, hd = D / nh, V = lm_vocab_size.

    embeddings (B, T, D) -> n x [ x + Attn(RMSNorm(x)); x + SwiGLU(RMSNorm(x)) ] -> RMSNorm -> (B, T, D)

Attention uses rotary position embeddings (RoPE, half-split convention as in Hugging Face's Llama)
and grouped-query attention: nkv key/value heads, each shared by nh / nkv query heads.

One mask function serves every case: causal, padding (left or right), packed samples (a token sees
only its own sample), and decoding with a cache. Each position may always attend to itself, so a
padding row never has an empty softmax (which would give NaN).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from picovlm.config import VLMConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for RoPE: channel pair i of a head rotates by angle position / base^(2i / hd)."""

    def __init__(self, cfg: VLMConfig):
        super().__init__()
        hd = cfg.lm_head_dim
        inv_freq = 1.0 / (cfg.lm_re_base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = position_ids.float().unsqueeze(-1) * self.inv_freq  # (B, T, hd/2)
        angles = torch.cat([angles, angles], dim=-1)  # (B, T, hd): the half-split layout
        return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, h, T, hd) rotated: [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin] on the two halves."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)  # broadcast over heads
    return x * cos + rotated * sin


class KVCache:
    """Keys and values of every layer, allocated once for the whole generation.

    k[layer], v[layer]: (B, nkv, max_len, hd). `length` positions are filled; all rows share it, which
    left padding makes possible (every prompt ends at the same column).
    """

    def __init__(self, cfg: VLMConfig, batch_size: int, max_len: int, device, dtype):
        shape = (batch_size, cfg.lm_n_kv_heads, max_len, cfg.lm_head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.lm_n_blocks)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.lm_n_blocks)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this call's k, v (B, nkv, T, hd) after the filled part; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise RuntimeError(f"KV cache full: {end} positions needed, {self.max_len} allocated")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


def build_attention_mask(
    key_padding: torch.Tensor | None,
    segment_ids: torch.Tensor | None,
    q_len: int,
    past_len: int,
    device,
) -> torch.Tensor | None:
    """Boolean mask (B or 1, 1, T, S), True where a query may attend to a key; None = plain causal.

    key_padding: (B, S) 1 for real tokens, 0 for padding, over all S = past_len + q_len keys.
    segment_ids: (B, S) sample index of each token when several samples are packed in one row.
    """
    if key_padding is None and segment_ids is None and past_len == 0:
        return None  # the fast path: scaled_dot_product_attention(is_causal=True)
    S = past_len + q_len
    q_pos = torch.arange(past_len, S, device=device).unsqueeze(1)  # (T, 1)
    k_pos = torch.arange(S, device=device).unsqueeze(0)  # (1, S)
    mask = (k_pos <= q_pos)[None]  # (1, T, S) causal
    if key_padding is not None:
        mask = mask & key_padding.bool()[:, None, :]
    if segment_ids is not None:
        q_seg = segment_ids[:, past_len:S]
        mask = mask & (q_seg[:, :, None] == segment_ids[:, None, :])
    mask = mask | (k_pos == q_pos)[None]  # a position always sees itself: no empty softmax row
    return mask.unsqueeze(1)


class Attention(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.lm_n_heads, cfg.lm_n_kv_heads, cfg.lm_head_dim
        D = cfg.lm_hidden_dim
        self.q_proj = nn.Linear(D, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(D, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(D, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, D, bias=False)
        self.dropout = cfg.lm_dropout

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nkv, S, hd)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.lm_hidden_dim, cfg.lm_inter_dim, bias=False)
        self.up_proj = nn.Linear(cfg.lm_hidden_dim, cfg.lm_inter_dim, bias=False)
        self.down_proj = nn.Linear(cfg.lm_inter_dim, cfg.lm_hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.lm_hidden_dim, cfg.lm_rms_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.lm_hidden_dim, cfg.lm_rms_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, cos, sin, mask, cache, layer):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


class LanguageModel(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.lm_vocab_size, cfg.lm_hidden_dim)
        self.rotary = RotaryEmbedding(cfg)
        self.blocks = nn.ModuleList([DecoderBlock(cfg) for _ in range(cfg.lm_n_blocks)])
        self.norm = RMSNorm(cfg.lm_hidden_dim, cfg.lm_rms_eps)
        self.lm_head = nn.Linear(cfg.lm_hidden_dim, cfg.lm_vocab_size, bias=False)
        if cfg.lm_tie_weights:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        key_padding: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """(B, T, D) embeddings -> (B, T, D) final hidden states (apply `lm_head` for logits)."""
        past_len = cache.length if cache is not None else 0
        mask = build_attention_mask(
            key_padding, segment_ids, inputs_embeds.shape[1], past_len, inputs_embeds.device
        )
        cos, sin = self.rotary(position_ids)
        x = inputs_embeds
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.length += inputs_embeds.shape[1]
        return self.norm(x)
