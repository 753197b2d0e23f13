"""Training throughput (samples/s) of the PSM model on this machine.

Times `model.train.Optimisation.step` (forward, loss over the three modality pairs, backward,
clipping, AdamW) on ready batches, so the number is the model's cost, not the data reader's.
Batches come from the synthetic reader through the real preprocessing. Three model shapes:

- `demo-trainable`: configs/demo.yaml's image and fusion with every tower trained (hashed-word
  text, log-mel CNN on 10 s audio): a step pays for the audio front end and CNN;
- `demo-frozen`: the demo world's shape (configs/demo.yaml's image and fusion, frozen MiniLM
  and frozen aisfx whose outputs come from the frozen-tower cache, so a step runs the image
  encoder, the fusion and the heads);
- `paper`: configs/paper.yaml's image and fusion (ViT-B/16 at 224 px) with frozen cached towers
  of CLAP's width, for a GPU (`--device cuda`, AMP as the config says).

    python benchmarks/train_throughput.py                       # demo-trainable, demo-frozen on CPU
    python benchmarks/train_throughput.py --shapes paper --device cuda --batch-size 128

Prints one line per shape: median samples/s over --repeats runs of --steps steps (after
--warmup steps), and the peak GPU memory on CUDA.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.batches import Collate, Examples, to_tensors  # noqa: E402
from model.config import ModelConfig, from_section  # noqa: E402
from model.nn.psm import PSMModel, preprocessing  # noqa: E402
from model.readers.synthetic import SyntheticConfig, SyntheticSource  # noqa: E402
from model.train import Optimisation, TrainConfig  # noqa: E402


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text(encoding="utf-8"))


def shape(name: str) -> tuple[dict, dict, int]:
    """(model section, train section, width of the cached text and audio backbones or 0)."""
    demo = load("demo")
    if name == "demo-trainable":
        trained = {
            "text": {"kind": "hashed", "vocab_size": 8192, "max_length": 32, "width": 96, "heads": 4},
            "audio": {"kind": "melcnn", "channels": [16, 32, 64], "width": 96},
        }
        return {**copy.deepcopy(demo["model"]), **trained}, demo["train"], 0
    if name == "demo-frozen":
        return demo["model"], demo["train"], -1
    paper = load("paper")
    model = {**paper["model"], "text": {"kind": "hashed", "width": 512}, "audio": {"kind": "melcnn", "width": 512}}
    return model, {k: v for k, v in paper["train"].items() if k in TRAIN_KEYS}, 512


TRAIN_KEYS = {"lr", "weight_decay", "betas", "eps", "warmup_steps", "grad_clip", "meta_dropout", "amp", "loss", "seed"}


def batch_for(model: PSMModel, size: int, cached_width: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A batch of `size` synthetic samples through the model's preprocessing; frozen towers (or,
    for the paper shape, towers of that width) appear as their cached outputs."""
    prep = preprocessing(model)
    cached = cached_width != 0
    front = model.audio_front_end
    source = SyntheticSource(
        SyntheticConfig(
            samples={"train": size, "val": 0, "test": 0},
            classes=size,
            sample_rate=front.sample_rate,
            duration_s=front.duration_s,
            sources=model.cfg.sources,  # a source the model has no token for is an unreadable sample
            caption_sources=model.cfg.caption_sources,
        ),
        "train",
        model.cfg.image_size,
    )
    examples = Examples(source, prep, skip_audio=cached)
    batch = Collate(prep)([examples[i] for i in range(size)])
    if cached:
        rng = np.random.default_rng(0)
        text_dim = model.text.out_dim if cached_width < 0 else cached_width
        audio_dim = model.audio.out_dim if cached_width < 0 else cached_width
        batch.pop("input_ids")
        batch.pop("attention_mask")
        batch["text_backbone"] = rng.standard_normal((size, text_dim)).astype(np.float32)
        batch["audio_backbone"] = rng.standard_normal((size, audio_dim)).astype(np.float32)
    return to_tensors(batch, device)


def measure(name: str, *, batch_size: int, steps: int, warmup: int, repeats: int, device: torch.device) -> dict:
    model_section, train_section, cached_width = shape(name)
    torch.manual_seed(0)
    model = PSMModel(ModelConfig.from_dict(model_section), pretrained=False).to(device)
    if cached_width > 0:  # the paper shape stands in trainable towers for CLAP: freeze them
        model.text.freeze()
        model.audio.freeze()
    cfg = from_section(
        TrainConfig,
        {
            **{k: v for k, v in train_section.items() if k in TRAIN_KEYS},
            "batch_size": batch_size,
            "steps": steps * repeats + warmup,
        },
        "train",
    )
    batch = batch_for(model, batch_size, cached_width, device)
    opt = Optimisation(model, cfg)
    step = 0
    for _ in range(warmup):
        opt.step(dict(batch), step)
        step += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            opt.step(dict(batch), step)
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(steps * batch_size / (time.perf_counter() - started))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = {
        "shape": name,
        "device": str(device),
        "batch": batch_size,
        "samples_per_s": statistics.median(rates),
        "runs": [round(r, 1) for r in rates],
        "trainable_params": trainable,
        "amp": opt.amp,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=["demo-trainable", "demo-frozen"],
        choices=["demo-trainable", "demo-frozen", "paper"],
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    for name in args.shapes:
        result = measure(
            name, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, repeats=args.repeats, device=device
        )
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
