"""benchmarks/train_throughput.py: every shape it names trains a step on the CPU here, so a GPU
session spends its time measuring the paper shape, not debugging it (the paper shape's synthetic
batches once carried a source its vocabulary lacks, and no step ran)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "train_throughput.py"


@pytest.mark.slow
def test_every_shape_trains_a_step_on_the_cpu():
    done = subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--shapes", "paper", "demo-trainable", "demo-frozen", "--device", "cpu"),
            *("--steps", "1", "--warmup", "0", "--repeats", "1", "--batch-size", "2"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [line["shape"] for line in lines] == ["paper", "demo-trainable", "demo-frozen"]
    assert all(line["samples_per_s"] > 0 and line["batch"] == 2 for line in lines)
    paper = lines[0]["trainable_params"]
    assert paper > 50 * lines[1]["trainable_params"]  # ViT-B/16 and the fusion: the paper's size, not the demo's
