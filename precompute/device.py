"""Where precompute runs its graphs: onnxruntime's CUDA provider with the bundle's float16 graphs
when a GPU is present, the CPU provider otherwise; chosen automatically, overridable, reported."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from runtime.bundle import Bundle, BundleError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# Cells per inference batch: large enough to keep the device busy, small enough for its memory
# (a batch of 64 px cells is ~3 MB of pixels; a 224 px paper-size batch of 1024 is ~150 MB).
BATCH = {"cuda": 1024, "cpu": 256}


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" or "cpu"
    precision: str  # "fp16" or "fp32": which of the bundle's graphs run
    batch: int
    readers: int = 2  # imagery reader threads that keep it fed

    @property
    def providers(self) -> list[str]:
        return [CUDA, CPU] if self.kind == "cuda" else [CPU]


def bundle_precisions(path: str | Path) -> list[str]:
    """The graph precisions a bundle holds, from its manifest (fp32 always)."""
    try:
        manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ["fp32"]
    return list(manifest.get("precisions", ["fp32"]))


def default_readers(kind: str) -> int:
    """Reader threads: a GPU embeds faster than a core reads, so it gets all cores but two; a
    CPU shares its cores between reading (the larger half of the work) and inference."""
    cores = os.cpu_count() or 2
    return max(2, cores - 2 if kind == "cuda" else cores // 2)


def select_device(
    bundle_path: str | Path, requested: str = "auto", batch: int | None = None, readers: int | None = None
) -> Device:
    """CUDA when asked or when onnxruntime sees a GPU, else CPU; fp16 graphs on CUDA when the
    bundle has them (fp16 on a CPU is slower than fp32 and gains nothing)."""
    has_cuda = CUDA in ort.get_available_providers()
    if requested == "cuda" and not has_cuda:
        raise BundleError(
            "--device cuda needs onnxruntime-gpu and a visible GPU; onnxruntime here offers "
            + ", ".join(ort.get_available_providers())
        )
    kind = "cuda" if requested == "cuda" or (requested == "auto" and has_cuda) else "cpu"
    precision = "fp16" if kind == "cuda" and "fp16" in bundle_precisions(bundle_path) else "fp32"
    return Device(kind, precision, batch or BATCH[kind], readers or default_readers(kind))


def open_bundle(path: str | Path, device: Device, threads: int | None = None) -> Bundle:
    """The bundle with sessions on the device's providers and precision. On a CPU, inference
    gets the cores the imagery readers leave (measured: 1 thread beside 2 readers on 2 cores is
    faster than 2, which contend with the readers); `threads` overrides that (a Ray task holds
    only some of a machine's cores)."""
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) - device.readers) if device.kind == "cpu" else 0
    if device.precision == "fp32":
        return Bundle(path, providers=device.providers, threads=threads)
    return Bundle(path, providers=device.providers, threads=threads, precision=device.precision)


def bundle_device(bundle: Bundle) -> str:
    """What an already opened bundle runs on, for the report."""
    precision = getattr(bundle, "precision", "fp32")
    kind = "GPU (onnxruntime CUDA provider)" if bundle.providers[0] == CUDA else f"CPU ({os.cpu_count()} cores)"
    return f"{kind}, {precision} graphs"


def default_batch(bundle: Bundle) -> int:
    """The batch size of the device an opened bundle runs on."""
    return BATCH["cuda" if bundle.providers[0] == CUDA else "cpu"]
