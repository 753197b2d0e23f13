"""The model bundle (docs/bundle.md): a directory with manifest.json, four ONNX
graphs and the tokenizer file. Its id is a content hash, so a store built by one bundle can
name it and a server refuses a store built by another. Loading needs onnxruntime, not torch."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.audio import audio_front_end, waveform_features
from runtime.contract import (
    BUNDLE_FORMAT_VERSION,
    GRAPH_INPUTS,
    GRAPH_OUTPUTS,
    GRAPHS,
    MANIFEST_FILE,
    PRECISION_GRAPH_FILES,
    PRECISIONS,
    TOKENIZER_FILE,
)
from runtime.errors import UserError
from runtime.files import atomic_write, file_sha256, json_sha256
from runtime.metadata import Vocabulary
from runtime.text import load_tokenizer

# Manifest keys left out of the content hash: the id itself and when it was written.
_UNHASHED_KEYS = ("id", "created")
# onnxruntime's graph optimisation per graph where its default (all) is not the fastest. Both are
# transformers whose "all" level fuses each residual Add and LayerNormalization into a
# SkipLayerNormalization, and that kernel is seven times slower on CPU than the Add and
# LayerNormalization it replaces (0.36 against 0.049 ms over 16 x 12 x 384 floats, onnxruntime
# 1.32, one thread). The fuse graph: a tile's 324 cells took 20.0 ms of CPU with "basic" vs 23.9 ms
# with "all" (median of 15 interleaved runs, 1 thread; outputs within 5e-7). The text graph: 2.69
# against 2.97 ms a lone text and 1.59 against 1.81 ms a text in batches of 16 (the int8 graph 1.19
# against 1.42 and 0.62 against 0.86; BENCHMARKS.md, twenty-fifth pass). The image and audio graphs
# are as fast or faster at "all" (aisfx's convolutions: 1.35 against 1.87 s for 64 clips). A fuse
# graph exported since its attention was written for a few tokens (model/nn/layers.py
# Attention.few) gives "all" nothing more to fuse; "basic" stays for the bundles exported before.
GRAPH_OPTIMIZATION = dict.fromkeys(("fuse", "text"), ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)


class BundleError(UserError):
    """The path is not a usable model bundle; the message says why."""


def content_id(manifest: dict) -> str:
    """Bundle id: sha256 of the canonical manifest (which holds every file's sha256), 16 hex."""
    return json_sha256({k: v for k, v in manifest.items() if k not in _UNHASHED_KEYS})


def finalise_manifest(directory: Path, manifest: dict) -> dict:
    """Record every file's sha256 and the content id, then write manifest.json atomically."""
    manifest = dict(manifest)
    names = sorted(
        p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE
    )
    manifest["files"] = {name: file_sha256(directory / name) for name in names}
    manifest["id"] = content_id(manifest)
    atomic_write(directory / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def check_manifest_shapes(manifest: dict, manifest_path: Path) -> None:
    """BundleError when a key read before the graphs load has another shape than export writes
    (a manifest edited by hand): `files` and `precisions` were AttributeError and TypeError
    tracebacks, or a refusal that offered no precision at all."""
    files = manifest.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        damaged = "files must be an object of file names and their sha256"
    elif not isinstance(held := manifest.get("precisions", ["fp32"]), list) or "fp32" not in held:
        damaged = f"precisions must be a list of names ({', '.join(PRECISIONS)}) that holds fp32"
    else:
        return
    raise BundleError(f"bundle manifest {manifest_path} is damaged: {damaged}; export the bundle again")


def default_providers() -> list[str]:
    """CUDA when onnxruntime-gpu sees a GPU, else CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class Bundle:
    """A loaded bundle: manifest facts plus lazily created onnxruntime sessions.

    precision="fp16" runs the float16 graphs a bundle exported with them holds (for GPUs);
    precision="int8" its int8 text graph (for CPUs: new text queries at 0.4-0.6 of the cost)."""

    def __init__(
        self,
        path: str | Path,
        *,
        providers: Sequence[str] | None = None,
        threads: int = 0,
        verify: bool = True,
        precision: str = "fp32",
    ):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST_FILE
        if not self.path.exists():
            raise BundleError(f"{self.path} is not a model bundle: it does not exist")
        if not manifest_path.is_file():
            raise BundleError(f"{self.path} is not a model bundle: it has no {MANIFEST_FILE}")
        try:
            self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from exc
        if not isinstance(self.manifest, dict):
            raise BundleError(
                f"{manifest_path} is not a bundle manifest: it holds a JSON {type(self.manifest).__name__}"
            )
        version = self.manifest.get("format_version")
        if "bundle_id" in self.manifest:
            raise BundleError(
                f"{self.path} is an embedding store, not a model bundle: pass the bundle that "
                "built it (its manifest's bundle_id) as the bundle and this as the store"
            )
        if version != BUNDLE_FORMAT_VERSION:
            raise BundleError(f"{self.path} has bundle format {version!r}; this version reads {BUNDLE_FORMAT_VERSION}")
        check_manifest_shapes(self.manifest, manifest_path)
        held = [p for p in self.manifest.get("precisions", ["fp32"]) if p in PRECISIONS]
        if precision not in held:
            raise BundleError(
                f"bundle {self.path} has no {precision} graphs: choose one of {', '.join(held)} "
                "(`soundscape export --fp16` or `--int8` writes the others)"
            )
        self.precision = precision
        self.graph_files = PRECISION_GRAPH_FILES[precision]
        if verify:
            self._verify()
        try:
            self._read_manifest()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            what = f"it lacks {exc}" if isinstance(exc, KeyError) else str(exc)
            raise BundleError(f"{manifest_path} is not a manifest this version reads: {what}") from None
        self.providers = list(providers) if providers else default_providers()
        self.threads = threads
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._lock = threading.Lock()

    def _read_manifest(self) -> None:
        """The manifest's fields; KeyError, TypeError or ValueError where one is missing or of
        another shape (a bundle written by another format's export, or edited by hand)."""
        self.id: str = self.manifest["id"]
        self.embed_dim: int = self.manifest["dims"]["embed"]
        self.sat_dim: int = self.manifest["dims"]["sat"]
        self.image_size: int = self.manifest["image"]["size"]
        self.calibration = (float(self.manifest["calibration"]["a"]), float(self.manifest["calibration"]["b"]))
        self.sources = Vocabulary(self.manifest["vocab"]["source"])
        # What some sources mean, where the export was told (docs/bundle.md); {} for older bundles.
        self.source_descriptions: dict[str, str] = dict(self.manifest["vocab"].get("source_descriptions", {}))
        self.caption_sources = Vocabulary(self.manifest["vocab"]["caption_source"])
        self.audio_spec = audio_front_end(self.manifest["audio"])
        self.tokenizer = load_tokenizer(self.path / TOKENIZER_FILE, self.manifest.get("text"))

    def _verify(self) -> None:
        files = self.manifest.get("files", {})
        for name in sorted({*files, *self.graph_files.values(), TOKENIZER_FILE}):
            path = self.path / name
            if not path.is_file():
                raise BundleError(f"bundle {self.path} is missing {name}")
            if files.get(name) != file_sha256(path):
                raise BundleError(f"bundle {self.path}: {name} does not match its checksum in {MANIFEST_FILE}")
        if content_id(self.manifest) != self.manifest.get("id"):
            raise BundleError(f"bundle {self.path}: manifest id does not match its content")

    def session(self, graph: str) -> ort.InferenceSession:
        """The onnxruntime session of one graph, created on first use (thread-safe)."""
        if graph not in GRAPHS:
            raise KeyError(graph)
        with self._lock:
            if graph not in self._sessions:
                self._sessions[graph] = ort.InferenceSession(
                    str(self.graph_path(graph)), sess_options=self.session_options(graph), providers=self.providers
                )
            return self._sessions[graph]

    def graph_path(self, graph: str) -> Path:
        """The ONNX file of `graph` at this bundle's precision."""
        return self.path / self.graph_files[graph]

    def session_options(self, graph: str) -> ort.SessionOptions:
        """The options `graph`'s session is made with: threads and optimisation level."""
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        if graph in GRAPH_OPTIMIZATION:
            options.graph_optimization_level = GRAPH_OPTIMIZATION[graph]
        return options

    def run(self, graph: str, **inputs: np.ndarray) -> list[np.ndarray]:
        """Run a graph on named inputs; outputs in the contract's order."""
        feeds = {name: inputs[name] for name in GRAPH_INPUTS[graph]}
        return self.session(graph).run(list(GRAPH_OUTPUTS[graph]), feeds)

    def embed_images(self, rgb: np.ndarray, gsd: np.ndarray) -> np.ndarray:
        """Pre-fusion sat features (B, sat_dim) of uint8 RGB images (B, H, W, 3)."""
        return self.run(
            "image", image=np.ascontiguousarray(rgb, dtype=np.uint8), gsd=np.asarray(gsd, dtype=np.float32)
        )[0]

    def fuse(self, sat: np.ndarray, meta: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(mu, logvar) of sat features under encoded metadata (runtime.metadata.encode_metadata)."""
        mu, logvar = self.run("fuse", sat=np.asarray(sat, dtype=np.float32), **meta)
        return mu, logvar

    def embed_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = self.tokenizer.encode(texts)
        mu, logvar = self.run("text", input_ids=ids, attention_mask=mask)
        return mu, logvar

    def embed_audio_features(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, logvar = self.run("audio", features=np.asarray(features, dtype=np.float32))
        return mu, logvar

    def embed_waveform(self, wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        """(mu, logvar), each (1, D), of a mono waveform at any sample rate, through the audio
        front end the manifest names (`audio.kind`)."""
        return self.embed_audio_features(waveform_features(self.audio_spec, wave, sample_rate)[None])
