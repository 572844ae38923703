"""How well can an image classifier trained from scratch name the facts of unseen objects?

docs/recipes.md finding 19: the probe behind `train.fact_loss_weight`. Trains a classifier (picovlm-small's
ViT, or a 4-layer CNN) on a real set's training pictures to predict each field of `fields`, for a fixed
number of minutes on one thread, and prints its accuracy per field on the test split (objects unseen in
training) beside the nearest-pixels lookup's and the majority class's.

    python bench/recipes/fact_probe.py DATA_DIR --arch cnn --size 112 --minutes 4
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from datasets import load_from_disk

from picovlm.config import preset
from picovlm.data.processor import preprocess_image, to_rgb
from picovlm.model.vision import ViT
from picovlm.retrieval import thumbnail_vectors


def encoder(arch: str, size: int) -> tuple[nn.Module, int]:
    """(module mapping pixels (B, 3, size, size) to pooled features (B, D), D)."""
    if arch == "vit":
        cfg = preset("picovlm-small", vit_img_size=size)

        class Pooled(nn.Module):
            def __init__(self):
                super().__init__()
                self.vit = ViT(cfg)

            def forward(self, x):
                return self.vit(x).mean(dim=1)

        return Pooled(), cfg.vit_hidden_dim
    layers, channels = [], 3
    for width in (32, 64, 128, 256):  # each 3x3 conv with stride 2 halves the side
        layers += [nn.Conv2d(channels, width, 3, 2, 1), nn.BatchNorm2d(width), nn.GELU()]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), channels


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data_dir")
    parser.add_argument("--arch", choices=("cnn", "vit"), default="cnn")
    parser.add_argument("--size", type=int, default=112, help="picture side in pixels")
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    data = load_from_disk(args.data_dir)

    def split(name):
        rows = data[name]
        facts = [json.loads(f) if isinstance(f, str) else f for f in rows["fields"]]
        return [to_rgb(images[0]) for images in rows["images"]], facts

    train_images, train_facts = split("train")
    test_images, test_facts = split("test")
    keys = sorted(train_facts[0])
    classes = {k: sorted({str(f.get(k)) for f in train_facts}) for k in keys}

    def labels(facts):
        return torch.tensor([[classes[k].index(str(f.get(k))) if str(f.get(k)) in classes[k] else -100
                              for k in keys] for f in facts])  # fmt: skip

    def pixels(images):
        return torch.from_numpy(np.stack([preprocess_image(im, args.size) for im in images]))

    x_train, y_train, x_test, y_test = (
        pixels(train_images),
        labels(train_facts),
        pixels(test_images),
        labels(test_facts),
    )
    net, dim = encoder(args.arch, args.size)
    heads = nn.ModuleList(nn.Linear(dim, len(classes[k])) for k in keys)
    optimizer = torch.optim.AdamW([*net.parameters(), *heads.parameters()], lr=1e-3, weight_decay=0.05)
    rng, start, steps = np.random.default_rng(args.seed), time.time(), 0
    while time.time() - start < args.minutes * 60:
        batch = rng.choice(len(x_train), 16, replace=False)
        features = net(x_train[batch])
        loss = sum(
            F.cross_entropy(h(features), y_train[batch, j], ignore_index=-100) for j, h in enumerate(heads)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    net.eval()
    with torch.no_grad():
        features = torch.cat([net(x_test[s : s + 64]) for s in range(0, len(x_test), 64)])
        predicted = torch.stack([h(features).argmax(-1) for h in heads], dim=1)
    nearest = np.argmax(thumbnail_vectors(test_images) @ thumbnail_vectors(train_images).T, axis=1)
    print(f"{args.data_dir}: {args.arch} at {args.size} px, {steps} steps of 16 in {args.minutes:g} minutes")
    print("| field | classifier | nearest pixels | majority |\n|---|---|---|---|")
    for j, k in enumerate(keys):
        truth = [str(f.get(k)) for f in test_facts]
        lookup = np.mean([str(train_facts[n].get(k)) == t for n, t in zip(nearest, truth)])
        majority = max(np.mean([t == c for t in truth]) for c in classes[k])
        accuracy = float((predicted[:, j] == y_test[:, j]).float().mean())
        print(f"| {k} | {accuracy:.3f} | {lookup:.3f} | {majority:.3f} |")


if __name__ == "__main__":
    main()
