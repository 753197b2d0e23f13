"""The least CPU an `hour=` tile's fusion and a new text's embedding can take on one core here:
their graphs' matrix products, counted as they run, at the best rate this core reaches for a
matrix product. Where that floor alone is past a target's room, code for the same model that
runs its products no faster than that does not reach the target on this machine (issue 13;
benchmarks/run.py's `floor` measure).

    python benchmarks/gemm_floor.py --bundle data/demo/bundle --store data/demo/store [--json FILE]

- The fusion: the fuse graph on the cells an `hour=6` tile reads, on the finest level without
  stored fusions, with the feeds the service itself gives it while drawing the tile (as
  benchmarks/server_latency.py's `hour=` tile). Also timed: the default tile's read of its stored
  cells, the work an `hour=` tile replaces with the fusion.
- A new text: the text graph, at each precision the bundle holds, on texts shaped as the
  harness's cold load's (a salt, a thread and a counter: "1f2e3d4ct0n17").
Each graph is run once under onnxruntime's profiler with the server's session options on one
thread: every matrix product node (MatMul, Gemm and their fused and int8 forms) with the shapes
it ran at gives its multiply-adds. The best rate is the most multiply-adds per CPU second one
product node reaches on one thread, over square products and every product shape the graphs ran,
in float32 (MatMul) and int8 (MatMulInteger). The floor is multiply-adds / best rate: it leaves
out everything but the products (no bias, normalisation, softmax, data movement or dispatch).
For the fusion it is given twice: for the products as the graph runs them, and for the least an
`hour=` tile needs whatever is cached (`from_first_attention`: the products that read an
attention's output).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.provenance import emit, provenance
from benchmarks.server_latency import median_ms, served, tiles_of, time_tiles, unfused_zoom
from runtime.bundle import Bundle
from runtime.contract import GRAPH_INPUTS
from runtime.errors import UserError
from server.service import SoundscapeService

PRODUCT_OPS = frozenset(
    {"MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}
)
SQUARES = (256, 512, 1024)
RATE_SECONDS = 0.05  # CPU per rate sample; the best of three samples is kept


@dataclass(frozen=True)
class Product:
    """One matrix product node as it ran: its left operand's shape, its output's, the batch
    dimensions of its right operand (none for a weight matrix), and whether it reads an
    attention's output (a Softmax's, directly or not)."""

    a: tuple[int, ...]
    y: tuple[int, ...]
    b_batch: tuple[int, ...] = ()
    attended: bool = False

    @property
    def k(self) -> int:
        """The summed dimension: `a`'s last two dimensions are M and K in either order
        (a transposed operand), and M is the output's."""
        if len(self.a) == 1:
            return self.a[0]
        return self.a[-1] * self.a[-2] // (self.y[-2] if len(self.y) >= 2 else 1)

    @property
    def macs(self) -> int:
        return int(np.prod(self.y, dtype=np.int64)) * self.k

    def operands(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Untransposed operands of the same product: (batch..., M, K) and (batch..., K, N), each
        keeping the batch dimensions it ran with (a weight matrix stays two-dimensional)."""
        m = self.y[-2] if len(self.y) >= 2 else 1
        return (*self.a[:-2], m, self.k), (*self.b_batch, self.k, self.y[-1])


def profiled_products(
    path: Path, options: ort.SessionOptions, runs: list[dict[str, np.ndarray]]
) -> list[list[Product]]:
    """The matrix products of each run of the graph at `path`, one per feeds of `runs`, from
    onnxruntime's profiler (the nodes after its graph optimisations, as they ran; it logs a run's
    nodes before the run's own `model_run` entry)."""
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "run")
        options.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for feeds in runs:
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
        reading = attention_readers(onnx.load(options.optimized_model_filepath))
    found: list[list[Product]] = [[]]
    for event in events:
        if event.get("cat") == "Session" and event["name"] == "model_run":
            found.append([])
        elif is_product(event):
            found[-1].append(product(event["args"], event["name"].removesuffix("_kernel_time") in reading))
    return found[: len(runs)]


def attention_readers(model: onnx.ModelProto) -> frozenset[str]:
    """Names of the graph's nodes that read a Softmax's output, directly or through other nodes
    (the profile names a node by its name: an unnamed node is never counted a reader)."""
    tainted: set[str] = set()
    readers: set[str] = set()
    grew = True
    while grew:  # until no node is added, whatever order the nodes are listed in
        grew = False
        for node in model.graph.node:
            if node.name not in readers and (node.op_type == "Softmax" or tainted.intersection(node.input)):
                readers.add(node.name)
                tainted.update(node.output)
                grew = True
    return frozenset(readers - {""} - {n.name for n in model.graph.node if n.op_type == "Softmax"})


def is_product(event: dict[str, Any]) -> bool:
    """Whether a profile entry is a matrix product node's kernel."""
    return (
        event.get("cat") == "Node"
        and event["name"].endswith("_kernel_time")
        and event["args"]["op_name"] in PRODUCT_OPS
    )


def product(args: dict[str, Any], attended: bool) -> Product:
    """A product node from its profile entry, which lists the shapes of its inputs that are not
    initializers: the right operand is listed only when it is computed (attention's products),
    with the output's rank; otherwise it is a weight and what follows is a bias or a scale."""
    shapes = [tuple(next(iter(described.values()))) for described in args["input_type_shape"]]
    y = tuple(next(iter(args["output_type_shape"][0].values())))
    batched = len(shapes) > 1 and len(shapes[1]) == len(y) > 2
    return Product(shapes[0], y, shapes[1][:-2] if batched else (), attended)


def from_first_attention(products: list[Product]) -> list[Product]:
    """The products of one fuse graph run that an `hour=` tile cannot do without: those that read
    an attention's output. The others are the token encoders and the first block's projections,
    each a function of one token: of the cell alone (sat, location; cacheable per cell) or of the
    request alone (CLS, hour; once per tile). Once a token has attended to the hour token, every
    product of every cell depends on both. The first attention's scores, which read only the
    projections, are left out too where a graph runs them as products: a few thousand
    multiply-adds a cell."""
    return [p for p in products if p.attended]


def graph_products(bundle: Bundle, graph: str, runs: list[dict[str, np.ndarray]]) -> list[list[Product]]:
    """`graph`'s products on each feeds of `runs`, under the server's session options on one thread."""
    options = bundle.session_options(graph)
    options.intra_op_num_threads = 1
    return profiled_products(
        bundle.graph_path(graph), options, [{name: feeds[name] for name in GRAPH_INPUTS[graph]} for feeds in runs]
    )


def one_product(a: tuple[int, ...], b: tuple[int, ...], int8: bool) -> tuple[ort.InferenceSession, dict]:
    """A one-node graph multiplying operands of shapes `a` and `b` (MatMulInteger in int8), on one
    thread, and random feeds for it."""
    from onnx import TensorProto, helper  # the train or bench extra: only this benchmark builds graphs

    types = (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32) if int8 else (TensorProto.FLOAT,) * 3
    out = (*np.broadcast_shapes(a[:-2], b[:-2]), a[-2], b[-1])
    node = helper.make_node("MatMulInteger" if int8 else "MatMul", ["A", "B"], ["Y"])
    graph = helper.make_graph(
        [node],
        "product",
        [helper.make_tensor_value_info("A", types[0], a), helper.make_tensor_value_info("B", types[1], b)],
        [helper.make_tensor_value_info("Y", types[2], out)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    if int8:
        feeds = {"A": rng.integers(0, 256, a, dtype=np.uint8), "B": rng.integers(-127, 128, b, dtype=np.int8)}
    else:
        feeds = {"A": rng.random(a, dtype=np.float32), "B": rng.random(b, dtype=np.float32)}
    return session, feeds


def product_rate(product: Product, int8: bool) -> float:
    """Multiply-adds per CPU second of `product` alone on one thread: the best of three samples."""
    session, feeds = one_product(*product.operands(), int8=int8)
    session.run(None, feeds)
    best = 0.0
    for _ in range(3):
        runs, began = 0, time.process_time()
        while (spent := time.process_time() - began) < RATE_SECONDS:
            session.run(None, feeds)
            runs += 1
        best = max(best, product.macs * runs / spent)
    return best


def best_rates(products: list[Product]) -> dict[str, dict[str, Any]]:
    """Per precision, the best rate over square products and the distinct shapes of `products`,
    in giga multiply-adds per CPU second, and the shape it was reached at."""
    squares = [Product((n, n), (n, n)) for n in SQUARES]
    shapes = list(dict.fromkeys([*squares, *products]))
    found = {}
    for precision in ("fp32", "int8"):
        rates = {p: product_rate(p, precision == "int8") for p in shapes}
        best = max(rates, key=rates.__getitem__)
        found[precision] = {
            "gmacs_per_s": round(rates[best] / 1e9, 1),
            "at": f"{best.operands()} ({best.macs} multiply-adds)",
        }
    return found


def floor_ms(macs: int, rates: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Milliseconds `macs` multiply-adds take at each precision's best rate."""
    return {precision: round(macs / (rate["gmacs_per_s"] * 1e9) * 1000, 3) for precision, rate in rates.items()}


@contextmanager
def recorded(owner: object, name: str) -> Iterator[list[tuple[tuple, dict, float]]]:
    """Every call of `owner.name` meanwhile, as (args, kwargs, seconds); the method is restored after."""
    calls: list[tuple[tuple, dict, float]] = []
    method: Callable = getattr(owner, name)
    own = vars(owner).get(name)  # an attribute of the object itself, not of its class

    def recording(*args, **kwargs):
        began = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            calls.append((args, kwargs, time.perf_counter() - began))

    setattr(owner, name, recording)
    try:
        yield calls
    finally:
        if own is None:
            delattr(owner, name)
        else:
            setattr(owner, name, own)


def cpu_ms_per_run(run: Callable[[Any], object], items: list) -> float:
    """The median CPU milliseconds of `run(item)` over `items` (after one unmeasured run)."""
    run(items[0])
    samples = []
    for item in items:
        began = time.process_time()
        run(item)
        samples.append(time.process_time() - began)
    return median_ms(samples)


def fusion_products(service: SoundscapeService, engine: Bundle, tiles: int) -> dict[str, Any]:
    """The fuse graph's products for the cells of `tiles` `hour=6` tiles of the finest level
    without stored fusions, its CPU per tile on `engine`, and the default tiles' read of their
    stored cells."""
    zoom = unfused_zoom(service)
    chosen = tiles_of(service.store, zoom, tiles)

    async def draw() -> tuple[list[dict], list[float]]:
        await service.text_query("birdsong")
        await time_tiles(service, chosen, 1, hour=6)  # the hour's colour scale: a sample fusion, not the tile's
        with recorded(service.bundle, "run") as runs:
            await time_tiles(service, chosen, len(chosen), hour=6)
        with recorded(service.engine, "stored") as reads:
            await time_tiles(service, chosen, len(chosen))
        return [kwargs for (graph, *_), kwargs, _ in runs if graph == "fuse"], [s for *_, s in reads]

    feeds, reads = asyncio.run(draw())
    if len(feeds) != len(chosen):
        raise RuntimeError(f"{len(chosen)} hour= tiles ran the fuse graph {len(feeds)} times, not once each")
    per_tile = graph_products(engine, "fuse", feeds)
    return {
        "level": zoom + 4,
        "zoom": zoom,
        "tiles": len(chosen),
        "cells_per_tile": int(statistics.median(len(f["sat"]) for f in feeds)),
        "macs_per_tile": int(statistics.median(sum(p.macs for p in products) for products in per_tile)),
        "least_macs_per_tile": int(
            statistics.median(sum(p.macs for p in from_first_attention(products)) for products in per_tile)
        ),
        "graph_cpu_ms": cpu_ms_per_run(lambda f: engine.run("fuse", **f), feeds * 3),
        "stored_read_ms": median_ms(reads),
        "products": [p for products in per_tile for p in products],
    }


def text_products(plain: Bundle, texts: int) -> dict[str, Any]:
    """The text graph's products for `texts` new texts shaped as the cold load's, and its CPU per
    text at each precision the bundle holds (`plain`: its float32 graphs, on one thread)."""
    salt = secrets.token_hex(4)
    encoded = [plain.tokenizer.encode([f"{salt}t0n{i}"]) for i in range(texts)]
    feeds = [{"input_ids": ids, "attention_mask": mask} for ids, mask in encoded]
    per_text = graph_products(plain, "text", feeds)
    cpu = {}
    for precision in plain.manifest.get("precisions", ["fp32"]):
        engine = (
            plain if precision == plain.precision else Bundle(plain.path, precision=precision, threads=1, verify=False)
        )
        cpu[precision] = cpu_ms_per_run(lambda f, engine=engine: engine.run("text", **f), feeds)
    return {
        "texts": texts,
        "tokens": int(statistics.median(ids.shape[1] for ids, _ in encoded)),
        "macs_per_text": int(statistics.median(sum(p.macs for p in products) for products in per_text)),
        "graph_cpu_ms": cpu,
        "products": [p for products in per_text for p in products],
    }


def floors(bundle: str, store: str, repeat: int) -> dict[str, Any]:
    """benchmarks/run.py's floor measure: the fusion of `repeat` hour= tiles and `repeat` new texts."""
    service = served(bundle, store)  # checks the bundle and the store
    plain = Bundle(bundle, threads=1, verify=False)  # one thread, as the floor's rates
    fusion = fusion_products(service, plain, repeat)
    text = text_products(plain, repeat)
    rates = best_rates([*fusion.pop("products"), *text.pop("products")])
    fusion["floor_ms"] = floor_ms(fusion["macs_per_tile"], rates)
    fusion["least_floor_ms"] = floor_ms(fusion["least_macs_per_tile"], rates)
    text["floor_ms"] = floor_ms(text["macs_per_text"], rates)
    return {"cores": os.cpu_count() or 1, "best_rates": rates, "fusion": fusion, "text": text}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1])
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--bundle", type=Path, default=Path("data/demo/bundle"), help="a model bundle")
    parser.add_argument("--store", type=Path, default=Path("data/demo/store"), help="a store built by that bundle")
    parser.add_argument("--repeat", type=int, default=15, help="hour= tiles and new texts measured")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        measured = floors(str(args.bundle), str(args.store), args.repeat)
    except UserError as exc:  # not a bundle, not a store, or a store of another bundle
        parser.error(str(exc))
    emit({**provenance(), **measured}, args.json)


if __name__ == "__main__":
    main()
