"""benchmarks/text_precision.py: the int8 text graph's parity, batch dependence and cost, measured
on the test session's bundle (exported with --int8). That the measure sees a batch-dependent graph
is tests/test_quantize.py's and tests/test_export.py's part."""

import subprocess
import sys
from pathlib import Path

from benchmarks.text_precision import measure, texts

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "text_precision.py"


def test_the_measure_finds_neither_graph_moved_by_the_texts_beside_it(bundle_path):
    result = measure(bundle_path, rounds=1)
    assert result["texts"] == len(texts()) == len(set(texts())) >= 40
    moved = result["max_mu_diff_batch_of_8_vs_alone"]
    assert set(moved) == {"fp32", "int8"} and max(moved.values()) < 1e-5  # int8: per-token scales
    parity = result["int8_parity_alone"]
    assert 0.9 < parity["min_cosine"] <= parity["median_cosine"] <= 1.0 + 1e-6
    costs_by_session = result["cpu_ms_per_text"]
    assert set(costs_by_session) == {"fp32", "int8", "fp32_at_level_all", "int8_at_level_all"}
    for costs in costs_by_session.values():
        assert costs["alone"] > 0 and costs["in_runs_of_8"] > 0


def test_a_path_that_is_not_a_bundle_exits_2_with_a_sentence(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--bundle", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "is not a model bundle" in done.stderr and "Traceback" not in done.stderr
