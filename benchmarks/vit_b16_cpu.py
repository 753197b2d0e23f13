"""The paper's image encoder's cost (SatMAE ViT-B/16 at 224 px, docs/method.md 1.2), for the GPU-hour
estimate in docs/scale.md where no GPU was lent: FLOPs per image counted by torch's FlopCounterMode
on a ViT-B/16 of the paper's shape (random weights: cost does not depend on them), and the
images/s this machine's CPU reaches, whose FLOP rate shows what the count means in practice.

    python benchmarks/vit_b16_cpu.py [--batch 8] [--repeats 3]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

WIDTH, DEPTH, HEADS, MLP, PATCH, SIZE = 768, 12, 12, 3072, 16, 224


class Block(nn.Module):
    """Pre-norm transformer block, attention written out so every matmul is counted."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, MLP), nn.GELU(), nn.Linear(MLP, WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (WIDTH // HEADS) ** -0.5).softmax(-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, t, WIDTH))
        return x + self.mlp(self.norm2(x))


class ViTB16(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, WIDTH, PATCH, PATCH)
        self.pos = nn.Parameter(torch.zeros(1, (SIZE // PATCH) ** 2, WIDTH))
        self.blocks = nn.Sequential(*(Block() for _ in range(DEPTH)))
        self.norm = nn.LayerNorm(WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.norm(self.blocks(x).mean(1))  # SatMAE: mean over the 196 patch tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = ViTB16().eval()
    images = torch.randn(args.batch, 3, SIZE, SIZE)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            model(images[:1])
        flops = counter.get_total_flops()
        model(images)  # warm-up
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            model(images)
            times.append(time.perf_counter() - started)
    per_s = args.batch / statistics.median(times)
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                f"{torch.get_num_threads()} threads",
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "load": [round(v, 2) for v in os.getloadavg()],
                "gflops_per_image": round(flops / 1e9, 2),
                "cpu_images_per_s": round(per_s, 2),
                "cpu_gflops_per_s": round(per_s * flops / 1e9, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
