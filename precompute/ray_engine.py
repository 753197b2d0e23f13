"""`soundscape precompute --engine ray`: the local engine's job spread over a Ray cluster.

The driver splits every level of the plan into N quadkey ranges with the `--shard i/n` machinery
(LevelPlan.shard) and runs one Ray task per range. A task is the local engine (run.execute) on its
shard, writing its own shard store under `<out>.shards/` (one writer per shard, so shards never
share a file); when every shard is complete the driver joins them with `precompute merge` and only
then removes `<out>.shards/`. The merged store is the store one local run writes.

Resuming: a complete shard store is never rerun; a partly written one continues through the local
engine's own resume (store/writer.py's progress file). A worker lost mid-task is retried by Ray
(MAX_RETRIES); a killed driver run again with the same arguments picks up the shards where they
stopped. A per-shard file lock keeps a stale task of a dead driver and its replacement from writing
the same shard at once. Every node reads the imagery and bundle and writes `<out>.shards/` at the
same paths as the driver: a shared file system.

`ray` is an optional extra, imported only when the engine runs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from precompute.device import BATCH, open_bundle, select_device
from precompute.merge import merge
from precompute.plan import PlanError, Region
from precompute.run import RunOptions, execute, make_plan
from runtime.errors import UsageError, UserError
from runtime.files import atomic_write, path_lock
from runtime.imagery import Imagery
from store.format import MANIFEST_FILE, StoreError
from store.imagery_ref import as_built
from store.writer import check_output, work_paths

MAX_RETRIES = 3  # attempts after the first when a task's worker process or node is lost
JOB_FILE = "job.json"
# Test hook: a path; the first shard task to create this file exits its worker process once it
# has saved a batch, so the tests can watch Ray retry a lost worker (tests/test_precompute_ray.py).
KILL_ONCE_ENV = "SOUNDSCAPE_RAY_KILL_ONCE"
DEFAULT_CPUS = {"cpu": 2, "cuda": 8}  # cores per task: a GPU needs many readers to keep it fed
INSTALL_HINT = "--engine ray needs the ray extra: pip install 'soundscape-tiles[ray]' (or 'ray>=2.9')"


class RayEngineError(UserError):
    """A shard task failed for a reason outside the user's arguments (a worker lost more often
    than Ray retries); the message says that rerunning the command resumes."""


@dataclass(frozen=True)
class RayJob:
    """What every shard task needs to rebuild the plan and run its part of it (paths absolute)."""

    imagery: tuple[str, ...]
    nodata: float | None
    bundle: str
    levels: tuple[int, ...]
    bbox: tuple[float, float, float, float]
    region: Region | None
    land_only: bool
    options: RunOptions  # batch fixed by the driver: every shard splits levels on the same edges
    root: str  # <out>.shards
    kind: str = "auto"  # "cuda" or "cpu": where each task runs its graphs ("auto": cuda where the cluster has GPUs)
    cpus: int | None = None  # cores each task reserves (DEFAULT_CPUS); its reader and inference threads share them
    readers: int | None = None  # reader threads per task (default: from cpus, task_threads)
    shards: int = 0  # how many: set by run_on_ray
    kill_once: str | None = None
    rescale: tuple[float, float] | None = None  # pixel values that become 0 and 255 (runtime.imagery)
    bands: tuple[int, int, int] | None = None  # the bands read as red, green and blue (runtime.imagery)

    def key(self) -> dict:
        """What makes the shards of two runs interchangeable (threads, the count and the hook do not)."""
        fields = dataclasses.asdict(self)
        fields["region"] = self.region.sha256 if self.region else None
        fields["options"].pop("readers")
        for name in ("cpus", "readers", "root", "kill_once", "shards"):
            fields.pop(name)
        return json.loads(json.dumps(fields))  # tuples as lists, as the job file holds them

    def shard_path(self, index: int) -> Path:
        return Path(self.root) / f"shard-{index:04d}"


@dataclass
class RayReport:
    shards: int
    reused: int  # shards complete before this run (a resumed job)
    device: str
    seconds: float = 0.0


def shards_root(out: Path) -> Path:
    """Where the shard stores of a Ray run of `out` live until the merge succeeded."""
    return out.parent / f"{out.name}.shards"


def import_ray() -> Any:
    """The ray module, or a UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return ray


def absolute(source: str) -> str:
    """A local path made absolute (tasks run elsewhere); a URL as given."""
    return str(Path(source).resolve()) if Path(source).exists() else source


def complete_shard(path: Path, index: int, count: int) -> dict | None:
    """The manifest of a finished shard store `index` of `count` at `path`, else None."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("shard") == [index, count] else None


def task_threads(kind: str, cpus: int, readers: int | None) -> tuple[int, int]:
    """(reader threads, inference threads) of a task holding `cpus` cores: on a CPU about half
    read and the rest run the graphs (as the local engine splits a machine); a GPU task reads
    with all its cores but one and leaves inference threads to onnxruntime (0)."""
    if kind == "cuda":
        return readers or max(1, cpus - 1), 0
    readers = readers or max(1, cpus // 2)
    return readers, max(1, cpus - readers)


def _arm_kill_once(marker: str, path: Path) -> None:
    """The test hook: if this task is the first to create `marker`, end its worker process (as a
    lost node would) once the shard has saved a batch; the marker records how many rows were saved."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    _, progress = work_paths(path)

    def watch() -> None:
        while not (path / MANIFEST_FILE).exists():
            with contextlib.suppress(OSError, ValueError):
                rows = sum(lv["rows"] for lv in json.loads(progress.read_text(encoding="utf-8"))["levels"].values())
                if rows:
                    os.write(fd, str(rows).encode())
                    os.fsync(fd)
                    os._exit(1)
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True).start()


def run_shard(job: RayJob, index: int) -> dict:
    """One Ray task: shard `index` of the job, written by the local engine (resumed if partly
    written, left alone if complete); its manifest."""
    path = job.shard_path(index)
    with path_lock(path):  # a killed driver's task and its replacement never write one shard at once
        done = complete_shard(path, index, job.shards)
        if done is not None:
            return done
        if job.kill_once:
            _arm_kill_once(job.kill_once, path)
        readers, threads = task_threads(job.kind, job.cpus or DEFAULT_CPUS[job.kind], job.readers)
        device = select_device(job.bundle, job.kind, job.options.batch, readers)
        bundle = open_bundle(job.bundle, device, threads=threads)
        imagery = Imagery(
            job.imagery[0] if len(job.imagery) == 1 else list(job.imagery),
            nodata=job.nodata,
            rescale=job.rescale,
            rgb_bands=job.bands,
        )
        plan = make_plan(imagery, list(job.levels), job.bbox, region=job.region, land_only=job.land_only)
        options = dataclasses.replace(job.options, readers=readers, shard=(index, job.shards))
        manifest, _ = execute(imagery, bundle, plan, path, options, progress=False)
        return manifest


def _connect(ray: Any, address: str | None) -> bool:
    """Connect to the cluster at `address` (None: RAY_ADDRESS, else a new local instance) unless
    this process already is; whether this call started the connection."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayEngineError(f"could not connect to the Ray cluster at {address}: {exc}") from exc
    return True


def _shard_count(root: Path, key: dict, requested: int | None, overwrite: bool, default: Callable[[], int]) -> int:
    """The job's shard count: that of the unfinished job under root when it is this job (same key,
    and `requested` None or equal); else root is started afresh with `requested` or `default()`
    shards, after refusing (or with --overwrite discarding) another job's shards. A job that wrote
    no shard yet (its tasks refused their arguments) is not kept."""
    try:
        previous = json.loads((root / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if previous is not None and (any(root.glob("shard-*")) or any(root.glob(".shard-*.partial"))):
        count = previous.pop("shards")
        if previous == key and requested in (None, count):
            return count
        if not overwrite:
            raise StoreError(
                f"{root} holds the shards of another run (other arguments or --ray-workers); rerun that "
                "command to finish it, or pass --overwrite to discard them"
            )
    if root.exists():
        shutil.rmtree(root)
    count = requested or default()
    root.mkdir(parents=True)
    atomic_write(root / JOB_FILE, json.dumps({**key, "shards": count}, indent=2, sort_keys=True) + "\n")
    return count


def _default_shards(ray: Any, job: RayJob) -> int:
    """One shard per GPU of the cluster, or per job.cpus of its cores."""
    resources = ray.cluster_resources()
    if job.kind == "cuda":
        return max(1, int(resources.get("GPU", 0)))
    return max(1, int(resources.get("CPU", 1)) // (job.cpus or 1))


def _fit(ray: Any, job: RayJob) -> RayJob:
    """The job with its device, batch and cores per task made concrete for this cluster; a
    UsageError for what no node could run (Ray would wait for it forever)."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if job.kind == "cuda" and not any(node.get("GPU", 0) for node in nodes):
        raise UsageError("--device cuda needs GPUs, and no node of the Ray cluster has one")
    kind = "cuda" if job.kind == "cuda" or (job.kind == "auto" and any(node.get("GPU", 0) for node in nodes)) else "cpu"
    largest = int(max((node.get("CPU", 0) for node in nodes), default=0))
    if job.cpus is not None and job.cpus > largest:
        raise UsageError(f"--ray-cpus {job.cpus} is more than any node of the Ray cluster has (at most {largest})")
    cpus = job.cpus or max(1, min(DEFAULT_CPUS[kind], largest))
    options = dataclasses.replace(job.options, batch=job.options.batch or BATCH[kind])
    return dataclasses.replace(job, kind=kind, cpus=cpus, options=options)


def _wait(ray: Any, pending: dict, manifests: dict[int, dict], job: RayJob, progress: bool) -> None:
    """Wait for every task, adding its manifest to `manifests`. On a failure the other tasks are
    cancelled: a user's mistake in a task is raised as itself, a lost worker (after Ray's retries)
    as a RayEngineError, a bug in a task with its traceback."""
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(ready[0])
        try:
            manifests[index] = ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            for ref in pending:
                ray.cancel(ref, force=True)
            if isinstance(exc, ray.exceptions.RayTaskError):
                if isinstance(exc.cause, UserError):
                    raise exc.cause from None
                raise
            raise RayEngineError(
                f"shard {index} of {job.shards} was lost more often than Ray retries ({MAX_RETRIES} times: "
                f"{type(exc).__name__}); run the same command again to resume"
            ) from exc
        if progress:
            cells = sum(lv["count"] for lv in manifests[index]["levels"].values())
            print(f"precompute: shard {index} done ({cells} cells), {len(pending)} to go", file=sys.stderr)


def _merged_already(out: Path, first_shard: dict, count: int) -> bool:
    """Whether `out` is the merge of these shards (the driver was killed between the merge and
    removing the shards)."""
    try:
        manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    same = all(manifest.get(k) == first_shard.get(k) for k in ("bundle_id", "plan", "bounds"))
    same_imagery = "imagery" in manifest and as_built(manifest["imagery"]) == as_built(first_shard["imagery"])
    return same and same_imagery and manifest.get("run", {}).get("merged_shards") == count


def run_on_ray(
    job: RayJob,
    out: Path,
    *,
    address: str | None = None,
    shards: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[dict, RayReport]:
    """Run the job's shards as Ray tasks (`shards`: how many; default one per GPU or per
    job.cpus cores of the cluster), merge them into `out`; the store's manifest."""
    ray = import_ray()
    out, root = Path(out), Path(job.root)
    started_ray = _connect(ray, address)
    try:
        started = time.perf_counter()
        job = _fit(ray, job)
        count = _shard_count(root, job.key(), shards, overwrite, lambda: _default_shards(ray, job))
        job = dataclasses.replace(job, shards=count)
        manifests = {i: m for i in range(count) if (m := complete_shard(job.shard_path(i), i, count)) is not None}
        reused = len(manifests)
        if reused == count and _merged_already(out, manifests[0], count):
            shutil.rmtree(root)
            return json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8")), RayReport(count, reused, job.kind)
        check_output(out, overwrite)
        task = ray.remote(run_shard).options(
            num_cpus=job.cpus, num_gpus=1 if job.kind == "cuda" else 0, max_retries=MAX_RETRIES
        )
        if progress:
            print(
                f"precompute on Ray: {count} shards ({reused} complete already) in {root}, "
                f"{job.cpus} CPUs{' and 1 GPU' if job.kind == 'cuda' else ''} each",
                file=sys.stderr,
            )
        _wait(ray, {task.remote(job, i): i for i in range(count) if i not in manifests}, manifests, job, progress)
    finally:
        if started_ray:
            ray.shutdown()
    if not any(lv["count"] for m in manifests.values() for lv in m["levels"].values()):
        raise PlanError(f"no cell of levels {list(job.levels)} has imagery inside {job.bbox}")
    manifest = merge(
        [job.shard_path(i) for i in range(count)], out, overwrite=overwrite, flat_max=job.options.index_flat_max
    )
    shutil.rmtree(root)
    return manifest, RayReport(count, reused, job.kind, time.perf_counter() - started)
