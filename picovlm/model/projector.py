"""The modality projector: pixel shuffle, then one linear map into the language model's width.

Notation: B images, N = G x G patches, D = vit_hidden_dim, f = mp_pixel_shuffle_factor, E = lm_hidden_dim.

Pixel shuffle trades sequence length for width: each f x f square of neighbouring patches becomes one
token with f^2 x D channels, so an image costs N / f^2 tokens in the language model instead of N.

    (B, N, D) -> grid (B, G, G, D) -> (B, G/f, G/f, f*f*D) -> (B, N/f^2, f^2 D) --Linear--> (B, N/f^2, E)
"""

from __future__ import annotations

import torch
import torch.nn as nn

from picovlm.config import VLMConfig


def pixel_shuffle(x: torch.Tensor, factor: int) -> torch.Tensor:
    B, N, D = x.shape
    G = int(N**0.5)
    assert G * G == N, f"pixel shuffle needs a square patch grid, got {N} patches"
    g = G // factor
    x = x.view(B, g, factor, g, factor, D)  # split rows and columns into (block, offset-in-block)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B, g, g, f, f, D): each block's f x f patches together
    return x.reshape(B, g * g, factor * factor * D)


class ModalityProjector(nn.Module):
    def __init__(self, cfg: VLMConfig):
        super().__init__()
        self.factor = cfg.mp_pixel_shuffle_factor
        self.proj = nn.Linear(cfg.vit_hidden_dim * self.factor**2, cfg.lm_hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_shuffle(x, self.factor))
