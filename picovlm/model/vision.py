"""The vision tower: a SigLIP-style Vision Transformer.

Notation: B = images in the batch, C = 3 colour channels, H = W = vit_img_size, P = vit_patch_size,
N = (H / P)^2 patches, D = vit_hidden_dim, nh = vit_n_heads, hd = D / nh.

    pixels (B, C, H, W) --conv P x P, stride P--> patches (B, N, D) + learned positions
      -> n x [ x + Attn(LN(x)); x + MLP(LN(x)) ] -> LN -> (B, N, D)

SigLIP specifics kept here: biases on every linear layer, a GELU with the tanh approximation, a final
LayerNorm, no attention-pooling head (the VLM reads every patch), no CLS token unless vit_cls_flag.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from picovlm.config import VLMConfig


class PatchEmbedding(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.conv = nn.Conv2d(
            3, cfg.vit_hidden_dim, kernel_size=cfg.vit_patch_size, stride=cfg.vit_patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.vit_hidden_dim)) if cfg.vit_cls_flag else None
        n_positions = cfg.vit_n_patches + (1 if cfg.vit_cls_flag else 0)
        self.position_embedding = nn.Parameter(torch.zeros(1, n_positions, cfg.vit_hidden_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv(pixels)  # (B, D, H/P, W/P)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D), patches in row-major order
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.position_embedding


class ViTAttention(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.n_heads = cfg.vit_n_heads
        self.head_dim = cfg.vit_head_dim
        self.qkv = nn.Linear(cfg.vit_hidden_dim, 3 * cfg.vit_hidden_dim)  # q, k, v fused: one matmul
        self.out = nn.Linear(cfg.vit_hidden_dim, cfg.vit_hidden_dim)
        self.dropout = cfg.vit_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = (
            self.qkv(x).view(B, N, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )  # 3 x (B, nh, N, hd)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, N, D))


class ViTMLP(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.vit_hidden_dim, cfg.vit_inter_dim)
        self.fc2 = nn.Linear(cfg.vit_inter_dim, cfg.vit_hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class ViTBlock(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.vit_hidden_dim, eps=cfg.vit_ln_eps)
        self.attn = ViTAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.vit_hidden_dim, eps=cfg.vit_ln_eps)
        self.mlp = ViTMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = PatchEmbedding(cfg)
        self.blocks = nn.ModuleList([ViTBlock(cfg) for _ in range(cfg.vit_n_blocks)])
        self.layer_norm = nn.LayerNorm(cfg.vit_hidden_dim, eps=cfg.vit_ln_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels normalised to [-1, 1] -> (B, N, D) patch features (CLS token dropped)."""
        x = self.patch_embedding(pixels)
        for block in self.blocks:
            x = block(x)
        x = self.layer_norm(x)
        return x[:, 1:] if self.cfg.vit_cls_flag else x
