"""Fixed names of the model bundle: the one place that export (torch) and the runtime
(onnxruntime, in precompute and server) agree on. Documented in docs/bundle.md."""

BUNDLE_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"

GRAPHS = ("image", "fuse", "text", "audio")
GRAPH_FILES = {name: f"{name}.onnx" for name in GRAPHS}
# Optional copies, listed by the manifest's `precisions`. fp16: float16 copies of every graph
# (float32/int64/uint8 inputs and outputs), for GPU serving and precompute. int8: for CPUs, the
# text graph with its MatMul weights in int8 per output channel and its activations quantized per
# token as it runs (model/quantize.py): a new text query costs about half. The cells'
# graphs stay fp32, so cells fused as a server runs match the store's; the audio graph has no
# MatMul to quantize.
PRECISIONS = ("fp32", "fp16", "int8")
FP16_GRAPH_FILES = {name: f"fp16/{name}.onnx" for name in GRAPHS}
INT8_GRAPHS = ("text",)
INT8_GRAPH_FILES = {**GRAPH_FILES, **{name: f"int8/{name}.onnx" for name in INT8_GRAPHS}}
PRECISION_GRAPH_FILES = {"fp32": GRAPH_FILES, "fp16": FP16_GRAPH_FILES, "int8": INT8_GRAPH_FILES}

# Metadata tokens, in the order of the `present` flags the fuse graph takes.
META_TOKENS = ("location", "hour", "month", "source", "caption_source")

# Graph inputs and outputs. Every graph has a dynamic batch axis.
GRAPH_INPUTS = {
    # image: uint8 (B, H, W, 3) RGB; gsd: float32 (B,) ground sample distance in metres/pixel.
    "image": ("image", "gsd"),
    # sat: float32 (B, sat_dim); location (B, 3) unit vector; hour, month (B, 2) sin/cos;
    # source, caption_source: int64 (B,); present: float32 (B, len(META_TOKENS)) 1 = known.
    "fuse": ("sat", "location", "hour", "month", "source", "caption_source", "present"),
    # input_ids, attention_mask: int64 (B, L).
    "text": ("input_ids", "attention_mask"),
    # features: float32, the manifest's audio front end (runtime.audio) of a waveform:
    # (B, n_mels, frames) for log-mel and aisfx-mel, (B, 4, frames, n_mels) for clap-fusion.
    "audio": ("features",),
}
GRAPH_OUTPUTS = {
    "image": ("sat",),
    # mu: float32 (B, D) unit norm; logvar: float32 (B, D) log sigma^2.
    "fuse": ("mu", "logvar"),
    "text": ("mu", "logvar"),
    "audio": ("mu", "logvar"),
}

# A folder of trained parts (`soundscape export --trained-parts`, weights/demo): the tensors of
# every module but the frozen towers, and a record of config, calibration, training and metrics.
TRAINED_PARTS_FILE = "trained.safetensors"
RECORD_FILE = "record.json"
