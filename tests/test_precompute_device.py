"""Device choice for precompute: CPU here, the CUDA provider with fp16 graphs on a GPU. The fp16
path runs on the CPU provider too, so its wiring is checked everywhere; the CUDA test runs
wherever a GPU exists and fails (not skips) when one exists but onnxruntime cannot use it."""

import shutil
import subprocess

import numpy as np
import onnxruntime as ort
import pytest

from precompute.device import CUDA, Device, open_bundle, select_device
from runtime.bundle import Bundle, BundleError
from runtime.imagery import Imagery


def _gpu_present() -> bool:
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def _cells(imagery_path, size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    imagery = Imagery(imagery_path)
    cells = [imagery.cell(6, x, y, size) for x in range(30, 38) for y in range(20, 26)]
    cells = [c for c in cells if c is not None][:n]
    return np.stack([c.rgb for c in cells]), np.array([c.gsd for c in cells], dtype=np.float32)


def _export(trained, out, fp16: bool = True):
    from model.export import export_bundle

    model, calibration = trained
    export_bundle(model, out, calibration=calibration, name="fp16-test", fp16=fp16)
    return out


def test_cpu_is_chosen_here_and_cuda_on_request_fails_in_one_sentence(bundle_path):
    if CUDA in ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider; the GPU test below covers it")
    device = select_device(bundle_path)
    assert (device.kind, device.precision, device.batch) == ("cpu", "fp32", 256)
    assert open_bundle(bundle_path, device).providers == ["CPUExecutionProvider"]
    with pytest.raises(BundleError, match="--device cuda needs onnxruntime-gpu"):
        select_device(bundle_path, "cuda")


def test_fp16_graphs_through_the_device_path_match_fp32(trained_model, imagery_path, tmp_path):
    path = _export(trained_model, tmp_path / "bundle")
    fp32 = open_bundle(path, Device("cpu", "fp32", 64))
    fp16 = open_bundle(path, Device("cpu", "fp16", 64))
    assert fp16.precision == "fp16"
    rgb, gsd = _cells(imagery_path, fp32.image_size, 16)
    a, b = fp32.embed_images(rgb, gsd), fp16.embed_images(rgb, gsd)
    assert b.dtype == np.float32
    np.testing.assert_allclose(b, a, atol=0.02 * np.abs(a).max())


@pytest.mark.gpu
def test_cuda_paper_size_image_graph_matches_cpu(imagery_path, tmp_path):
    """The paper's image tower (ViT-B/16 at 224 px) on the CUDA provider in fp16 vs CPU fp32."""
    if not _gpu_present():
        pytest.skip("no GPU on this machine")
    assert CUDA in ort.get_available_providers(), (
        "a GPU is present but onnxruntime has no CUDA provider: pip install '.[gpu]'"
    )
    import torch

    from model.config import ModelConfig
    from model.nn.psm import PSMModel

    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(
        {
            "embed_dim": 512,
            "image": {"size": 224, "patch": 16, "width": 768, "depth": 12, "heads": 12},
            "fusion": {"width": 768, "heads": 12},
        }
    )
    path = _export((PSMModel(cfg), (1.0, 0.0)), tmp_path / "paper")
    device = select_device(path)
    assert (device.kind, device.precision) == ("cuda", "fp16")
    gpu, cpu = open_bundle(path, device), Bundle(path, providers=["CPUExecutionProvider"])
    rgb, gsd = _cells(imagery_path, 224, 32)
    a, b = cpu.embed_images(rgb, gsd), gpu.embed_images(rgb, gsd)
    np.testing.assert_allclose(b, a, atol=0.02 * np.abs(a).max())
