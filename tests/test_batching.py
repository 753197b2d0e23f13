"""New texts that arrive together are embedded in one text graph run (server.batching), and each
still gets its own embedding: the batcher's rules, then the server under a burst of new queries."""

import asyncio

import numpy as np
import pytest

from runtime.bundle import Bundle
from server.batching import Batcher
from tests.server_support import concurrent_gets, decode_npy, make_client


class Recorder:
    """A batch function that records each batch and can be held, so items pile up behind it."""

    def __init__(self, fail_on: str | None = None):
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail_on = fail_on

    async def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(items)
        await self.release.wait()
        if self.fail_on in items:
            raise ValueError(f"cannot embed {self.fail_on!r}")
        return [item.upper() for item in items]


def test_a_lone_item_runs_at_once_and_later_ones_wait_for_the_next_batch():
    async def scenario():
        record = Recorder()
        batcher = Batcher(record, max_batch=3, slots=1)
        first = asyncio.create_task(batcher("a"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert record.batches == [["a"]], "a lone item does not wait for company"
        later = [asyncio.create_task(batcher(x)) for x in "bcdef"]
        await asyncio.sleep(0)
        record.release.set()
        return await first, await asyncio.gather(*later), record.batches

    first, later, batches = asyncio.run(scenario())
    assert first == "A" and later == list("BCDEF"), "each item gets its own value"
    assert batches == [["a"], ["b", "c", "d"], ["e", "f"]], "at most max_batch per run, in arrival order"


def test_slots_bound_the_batches_running_at_once():
    async def scenario():
        record = Recorder()
        batcher = Batcher(record, max_batch=8, slots=2)
        tasks = [asyncio.create_task(batcher("a"))]
        for later in ("bc", "de"):  # each group arrives while the earlier batches run
            for _ in range(3):
                await asyncio.sleep(0)
            tasks += [asyncio.create_task(batcher(x)) for x in later]
        for _ in range(3):
            await asyncio.sleep(0)
        running = [list(b) for b in record.batches]
        record.release.set()
        return running, await asyncio.gather(*tasks), record.batches

    running, values, batches = asyncio.run(scenario())
    assert running == [["a"], ["b", "c"]], "two slots: two batches run, the third waits"
    assert values == list("ABCDE") and batches[2:] == [["d", "e"]]


def test_an_error_reaches_its_batch_only_and_a_cancelled_waiter_is_skipped():
    async def scenario():
        record = Recorder(fail_on="x")
        batcher = Batcher(record, max_batch=4, slots=1)
        blocker = asyncio.create_task(batcher("a"))
        await asyncio.sleep(0)
        failing = [asyncio.create_task(batcher(x)) for x in ("x", "y")]
        gone = asyncio.create_task(batcher("gone"))
        await asyncio.sleep(0)
        gone.cancel()  # the client hung up while its text waited
        record.release.set()
        results = await asyncio.gather(blocker, *failing, return_exceptions=True)
        after = await batcher("z")  # the batcher still works after a failed batch
        return results, after, record.batches

    (a, x, y), after, batches = asyncio.run(scenario())
    assert a == "A" and after == "Z"
    assert isinstance(x, ValueError) and isinstance(y, ValueError) and "cannot embed 'x'" in str(x)
    assert batches == [["a"], ["x", "y"], ["z"]], "the cancelled item is not embedded"


@pytest.mark.parametrize("max_batch,slots", [(0, 1), (1, 0)])
def test_a_batcher_needs_room_for_one(max_batch, slots):
    async def run(items):
        return items

    with pytest.raises(ValueError, match="at least 1"):
        Batcher(run, max_batch, slots)


def test_a_burst_of_new_queries_is_embedded_in_batches_with_the_same_tiles(bundle_path, store_path):
    """24 tiles of 24 new texts at once on one compute thread: fewer text graph runs than texts,
    and each tile is, byte for byte, the one a server that embedded its text alone draws (its
    ETag names its request, so it must name the same bytes whichever worker draws it)."""
    texts = [f"sound number {i} of a busy street and birds" if i % 2 else f"rain {i}" for i in range(24)]
    app = make_client(bundle_path, store_path, compute_threads=1).app
    stats = app.state.service.stats

    params = [{"q": t, "layer": "heatmap"} for t in texts]
    responses = concurrent_gets(app, "/tiles/WebMercatorQuad/4/8/5.npy", params)
    assert {r.status_code for r in responses} == {200}
    assert stats["text_encodings"] == len(texts)
    assert stats["text_batches"] < len(texts) / 2, f"{stats['text_batches']} runs for {len(texts)} texts"

    alone = make_client(bundle_path, store_path, compute_threads=1)
    for text, response in zip(texts[:6], responses, strict=False):
        single = alone.get("/tiles/WebMercatorQuad/4/8/5.npy", params={"q": text, "layer": "heatmap"})
        assert response.content == single.content, np.abs(
            decode_npy(response.content) - decode_npy(single.content)
        ).max()
    assert alone.app.state.service.stats["text_batches"] == 6


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_text_embeds_to_the_same_bits_alone_and_in_any_batch(bundle_path, precision):
    """The text graph's pooling is a product per sample (model/nn/text_towers.py masked_mean):
    onnxruntime's sum over the token axis took another order for one sample than for several."""
    bundle = Bundle(bundle_path, precision=precision)
    texts = ["rain", "birds singing at dawn over a wide river", "a busy street", "wind", "x", "waves on a beach"]
    for i, text in enumerate(texts):
        alone = bundle.embed_texts([text])
        for company in ([texts[i - 1]], texts[:i] + texts[i + 1 :], [text]):
            batched = bundle.embed_texts([text, *company])
            assert all(np.array_equal(a[0], b[0]) for a, b in zip(alone, batched, strict=True)), (text, company)
