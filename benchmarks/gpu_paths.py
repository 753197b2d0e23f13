"""Issue 13's GPU figures in one command, for a machine with a GPU: the paper-size image graph
(ViT-B/16 at 224 px, fp16) through onnxruntime's CUDA provider, cells/s at a batch of 256,
plainly and with IO binding; and a search over 10 M cells on the GPU, exact and with the index a
store of that size is given (store/index.py), beside the same indexes on the CPU.

    python benchmarks/gpu_paths.py --json benchmarks/results/gpu_paths.json

where onnxruntime-gpu and faiss-gpu stand in place of the CPU wheels, as in the precompute image
(docker/precompute.Dockerfile says how they are swapped in); torch and onnxscript, of the train
extra, export the paper-size graph, or --bundle takes one exported elsewhere.

Image: the graph is exported from a PSM model of the paper's shape with random weights (its
cost does not depend on them) into --workdir, or taken from --bundle. Three ways to run a batch
of uint8 images: `Session.run` on host arrays (what precompute does); IO binding with the
images on the host and the features left on the device; and IO binding with both on the device
(what a pipeline that uploads the next batch while this one runs could reach). The outputs of
the three are compared, and the first images' with the CPU provider's float32 graph. Search:
synthetic means and variances in the store's [mu, -S/2] layout, clustered as `soundscape store
synth` makes them; the median time of a batch of random queries (1 and 64) for the top 10, and
recall@10 of the store's index against the exact scan. On the GPU by faiss-gpu's copies of both
indexes; where faiss sees no GPU (faiss-gpu's wheels are built for CUDA 12 only), torch's exact
scan on the GPU, labelled so in the result.

`--device cpu` runs the same code on the CPU (small sizes: the test suite's check of this
script); without a GPU `--device cuda` exits 2 saying what is missing.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.provenance import emit, provenance
from precompute.device import CPU, CUDA, open_bundle, select_device
from runtime.bundle import Bundle
from runtime.errors import UserError
from runtime.scoring import gallery_vectors
from runtime.tiles import MAX_LEVEL
from store.index import build_index, gpu_count, recall_at_k
from store.synth import SynthSpec, level_chunks

PAPER_SHAPE = {
    "embed_dim": 512,
    "image": {"size": 224, "patch": 16, "width": 768, "depth": 12, "heads": 12},
    "fusion": {"width": 768, "heads": 12},
}
K = 10


def median_s(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of `run` after one untimed call (the first pays for allocations)."""
    run()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def paper_bundle(workdir: Path) -> Path:
    """A bundle of the paper's shape (random weights) with fp16 graphs, exported once into workdir."""
    out = workdir / "paper-bundle"
    if not (out / "manifest.json").exists():
        import torch

        from model.config import ModelConfig
        from model.export import export_bundle
        from model.nn.psm import PSMModel

        torch.manual_seed(0)
        export_bundle(PSMModel(ModelConfig.from_dict(PAPER_SHAPE)), out, calibration=(1.0, 0.0), fp16=True)
    return out


def image_paths(bundle: Bundle, batch: int, repeats: int, device: str, reference: Bundle) -> dict:
    """Cells/s of the image graph on one batch, three ways; the largest difference between them, and
    from the CPU provider's float32 graph (`reference`) on the first few images."""
    session = bundle.session("image")
    size = bundle.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    gsd = np.full(batch, 7000.0, dtype=np.float32)
    output = session.get_outputs()[0].name
    plain = bundle.embed_images(images, gsd)

    host_in = session.io_binding()
    host_in.bind_cpu_input("image", images)
    host_in.bind_cpu_input("gsd", gsd)
    host_in.bind_output(output, device)
    on_device = session.io_binding()
    on_device.bind_ortvalue_input("image", ort.OrtValue.ortvalue_from_numpy(images, device, 0))
    on_device.bind_ortvalue_input("gsd", ort.OrtValue.ortvalue_from_numpy(gsd, device, 0))
    on_device.bind_output(output, device)

    def bound(binding: ort.IOBinding) -> Callable[[], None]:
        def run() -> None:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return run

    timed = {
        "session_run": median_s(lambda: bundle.embed_images(images, gsd), repeats),
        "io_binding_host_images": median_s(bound(host_in), repeats),
        "io_binding_device_images": median_s(bound(on_device), repeats),
    }
    outputs = [host_in.copy_outputs_to_cpu()[0], on_device.copy_outputs_to_cpu()[0]]
    return {
        "image_size": size,
        "batch": batch,
        "runs": repeats,
        "cells_per_s": {name: round(batch / s, 1) for name, s in timed.items()},
        "max_abs_difference_between_ways": float(max(np.abs(o.astype(np.float32) - plain).max() for o in outputs)),
        "max_abs_difference_from_cpu_fp32": float(
            np.abs(reference.embed_images(images[:8], gsd[:8]) - plain[:8]).max()
        ),
    }


def synthetic_level(cells: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Means (float16) and S of `cells` cells as `soundscape store synth` makes them (clustered
    like a real store's, store/synth.py), of the first level that holds that many."""
    level = max(1, math.ceil(math.log(cells, 4)))
    mu, s = zip(*((c.mu, c.s) for c in level_chunks(SynthSpec(level=level, cells=cells, embed_dim=dim))), strict=True)
    return np.concatenate(mu), np.concatenate(s)


def search_times(index: faiss.Index, queries: np.ndarray, repeats: int) -> dict:
    """Median ms of a top-K search of one query and of a batch of (up to) 64."""
    return {
        f"batch_{n}_ms": round(1000 * median_s(lambda n=n: index.search(queries[:n], K), repeats), 3)
        for n in (1, min(64, len(queries)))
    }


def torch_scan_times(
    gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray, repeats: int, device: str = "cuda"
) -> dict:
    """The exact scan on the GPU by torch (one matrix product and a top-K, the work of faiss-gpu's
    flat index), for a GPU machine where faiss-gpu cannot be installed; queries go up from and
    answers come back to the host, as faiss's search does. Its recall@10 against faiss-cpu's scan."""
    import torch

    on_gpu = torch.from_numpy(gallery).to(device)

    def search(n: int) -> np.ndarray:
        _, ids = torch.topk(torch.from_numpy(queries[:n]).to(device) @ on_gpu.T, K, dim=1)
        return ids.cpu().numpy()

    found = search(len(queries))
    recall = round(float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)])), 4)
    sizes = (1, min(64, len(queries)))
    times = {f"batch_{n}_ms": round(1000 * median_s(lambda n=n: search(n), repeats), 3) for n in sizes}
    return {
        "engine": f"torch {torch.__version__} (faiss-gpu not installed)",
        "exact": times,
        "exact_recall_at_10": recall,
    }


def search_paths(cells: int, dim: int, queries: int, repeats: int, gpu: bool) -> dict:
    """Median search times over `cells` synthetic cells, random queries: exact and the store's index, on the CPU
    and, with `gpu`, on the GPU (faiss-gpu's copies of both, or torch's exact scan where faiss sees no GPU);
    recall@10 of the store's index against the exact scan."""
    mu, s = synthetic_level(cells, dim)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    q = np.hstack([q / np.linalg.norm(q, axis=1, keepdims=True), np.ones((queries, 1), np.float32)])
    exact = faiss.IndexFlatIP(dim + 1)
    for start in range(0, cells, 1 << 20):
        exact.add(gallery_vectors(mu[start : start + (1 << 20)].astype(np.float32), s[start : start + (1 << 20)]))
    began = time.perf_counter()
    store_index, described = build_index(mu, s)
    result = {"cells": cells, "dim": dim + 1, "k": K, "store_index": described}
    result["store_index_build_s"] = round(time.perf_counter() - began, 1)
    _, truth = exact.search(q, K)
    result["store_index_recall_at_10"] = round(recall_at_k(store_index, q, truth), 4)
    result["cpu"] = {"exact": search_times(exact, q, repeats), "store_index": search_times(store_index, q, repeats)}
    if gpu and gpu_count() > 0:
        resources = faiss.StandardGpuResources()
        result["gpu"] = {"engine": f"faiss-gpu {faiss.__version__}"} | {
            name: search_times(faiss.index_cpu_to_gpu(resources, 0, index), q, repeats)
            for name, index in (("exact", exact), ("store_index", store_index))
        }
    elif gpu:
        result["gpu"] = torch_scan_times(exact.reconstruct_n(0, exact.ntotal), q, truth, repeats)
    return result


def torch_sees_a_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1])
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where the graph and search run")
    parser.add_argument("--bundle", type=Path, help="a bundle whose image graph to run (default: the paper's shape)")
    parser.add_argument("--workdir", type=Path, help="where the paper-size bundle is exported (default: a temp dir)")
    parser.add_argument("--batch", type=int, default=256, help="images per graph run")
    parser.add_argument("--cells", type=int, default=10_000_000, help="cells in the searched level")
    parser.add_argument("--dim", type=int, default=64, help="the embedding's size (the demo model's: 64)")
    parser.add_argument("--queries", type=int, default=256, help="queries for recall (times: batches of 1 and 64)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per figure (the median is reported)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    if min(args.batch, args.cells, args.queries, args.repeats) < 1 or args.dim < 2:
        parser.error("--batch, --cells, --queries and --repeats must be at least 1, --dim at least 2")
    if args.cells > 4**MAX_LEVEL:
        parser.error(f"--cells must be at most {4**MAX_LEVEL:,} (the cells of level {MAX_LEVEL})")
    if args.device == "cuda" and (CUDA not in ort.get_available_providers() or not (gpu_count() or torch_sees_a_gpu())):
        parser.exit(
            2,
            f"{parser.prog}: error: --device cuda needs onnxruntime's CUDA provider and faiss-gpu (or torch with CUDA "
            "for the search; the gpu extra, as docker/precompute.Dockerfile installs it) on a machine with a GPU; "
            f"onnxruntime offers "
            f"{', '.join(ort.get_available_providers())} and faiss sees {gpu_count()} GPUs\n",
        )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = args.bundle or paper_bundle(args.workdir or Path(tmp))
            device = select_device(path, args.device, batch=args.batch)  # fp16 graphs on CUDA where the bundle has them
            bundle = open_bundle(path, device)
            providers = bundle.session("image").get_providers()  # what runs, not what was asked for
            if providers[0] != bundle.providers[0]:
                parser.exit(
                    2,
                    f"{parser.prog}: error: onnxruntime fell back from {bundle.providers[0]} to {providers[0]} "
                    "(the message above says why: as a rule a CUDA or cuDNN library it cannot find)\n",
                )
            result = {
                **provenance(),
                "device": args.device,
                "providers": providers,
                "precision": device.precision,
                "image": image_paths(bundle, args.batch, args.repeats, args.device, Bundle(path, providers=[CPU])),
                "search": search_paths(args.cells, args.dim, args.queries, args.repeats, args.device == "cuda"),
            }
    except UserError as exc:  # a path that is not a bundle, a level the store cannot hold
        parser.error(str(exc))
    emit(result, args.json)


if __name__ == "__main__":
    main()
