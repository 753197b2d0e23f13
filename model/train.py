"""Training: `fit` runs a whole experiment from a config (`soundscape train`), `train` runs the
same optimisation step over an in-memory batch stream (the walking-skeleton demo, tests).

One step: metadata tokens dropped independently with probability p (training only), every side
of the batch embedded, embeddings gathered across ranks, the loss over every modality pair
(PSM: 0.5 sat-audio + 0.5 sat-text + 0.5 audio-text), AdamW with a warm-up + cosine schedule,
gradient clipping, fp16 autocast with loss scaling on CUDA. Everything random in a step is seeded
by (seed, step), so a resumed run repeats an uninterrupted one exactly and DDP equals one
process on the global batch (model.batches, model.distributed).
"""

from __future__ import annotations

import csv
import functools
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from model.batches import Collate, Examples, GlobalBatches, SkipLog, class_balance, loader, place_balance, to_tensors
from model.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from model.checks import checked_splits, small_split_warnings
from model.config import ConfigError, LossConfig, ModelConfig, Section, TrainConfig, from_section
from model.data import READERS, DataError, Splits, load_sample
from model.distributed import (
    Dist,
    all_ranks,
    average_gradients,
    barrier,
    broadcast_flag,
    ddp,
    device_for,
    gather,
    init_distributed,
    main_process,
    max_over_ranks,
    shutdown,
)
from model.evaluate import embed_split, metrics, overall
from model.frozen_cache import FrozenCache, frozen_cache
from model.init_from import check_model, load_calibration, load_initial, read_initial
from model.nn.losses import PAIRS, build_loss, pair_losses, total_loss
from model.nn.psm import META_KEYS, PSMModel, check_fits, preprocessing
from model.stopping import Abandoned, Interrupted, StopSignals, ValidationVote
from runtime.errors import UsageError, UserError
from runtime.files import atomic_write, lock_file, make_folder, unlock_file

log = logging.getLogger(__name__)


class RunConfig(Section):
    """A config file: `model:`, `train:` and `data:` sections, each read strictly (the data
    section by its reader, model.data.READERS)."""

    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    data: dict

    @classmethod
    def from_dict(cls, sections: dict) -> RunConfig:
        data = sections.get("data") if isinstance(sections, dict) else None
        if isinstance(data, dict) and not (isinstance(data.get("kind"), str) and data["kind"] in READERS):
            raise ConfigError(f"`data.kind` must be one of {', '.join(sorted(READERS))}; got {data.get('kind')!r}")
        return from_section(cls, sections, "")


LOG_COLUMNS = (
    "step",
    "epoch",
    "lr",
    "loss",
    "loss_sat_audio",
    "loss_sat_text",
    "loss_audio_text",
    "scale_a",
    "shift_b",
    "samples_per_s",
    "skipped",
    "val_I2S_R@10%",
    "val_I2S_median_rank",
    "val_S2I_R@10%",
    "val_S2I_median_rank",
)


# ---------------------------------------------------------------------------------------------
# The optimisation step, shared by `train` and `fit`


def cosine_with_warmup(step: int, total: int, warmup: int, cycle: int | None = None) -> float:
    """LR multiplier: linear warm-up, then a cosine to 0 at `total` (or restarted every `cycle`)."""
    if step < warmup:
        return (step + 1) / warmup
    if cycle:
        return 0.5 * (1 + math.cos(math.pi * ((step - warmup) % cycle) / cycle))
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class Optimisation:
    """Model, loss, AdamW, schedule and loss scaler: everything a step changes and a
    checkpoint restores."""

    def __init__(self, model: PSMModel, cfg: TrainConfig, d: Dist | None = None):
        d = d or Dist()
        self.model, self.cfg, self.dist = model, cfg, d
        self.device = next(model.parameters()).device
        self.loss_fn = build_loss(cfg.loss).to(self.device)
        self.params = [p for p in [*model.parameters(), *self.loss_fn.parameters()] if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self._groups(), lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_with_warmup(s, cfg.steps, cfg.warmup_steps, cfg.cosine_cycle_steps)
        )
        self.amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.sides = sides_read(cfg.loss)
        self.forward: nn.Module = model
        if d.active:
            # DDP syncs what the loss reads, each parameter of it getting a gradient every step
            # where every side is there; a step without one is averaged by hand (`step`). Searching
            # the graph for unused parameters instead (find_unused_parameters) found none, and torch
            # said so on every run.
            self.forward = ddp(model, unread_parameters(model, cfg.loss), self.device, d)

    def _groups(self) -> list[dict]:
        if self.cfg.decay_all:
            return [{"params": self.params, "weight_decay": self.cfg.weight_decay}]
        decay = [p for p in self.params if p.ndim >= 2]
        exempt = [p for p in self.params if p.ndim < 2]  # biases, norms, a, b, tau
        return [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": exempt, "weight_decay": 0.0}]

    def step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """One optimizer step on this rank's slice of global batch `step`; the loss parts."""
        cfg, d = self.cfg, self.dist
        batch = common_sides(batch, d)
        rng = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        torch.manual_seed(cfg.seed * 1_000_003 + step * d.world + d.rank)  # dropout in the model
        if "present" in batch:
            batch["present"] = drop_metadata(batch["present"], cfg.meta_dropout, rng, d)
        if cfg.image_flips and "image" in batch:
            batch["image"] = _flip(batch["image"], _local(_global_rand(rng, batch["image"][:, 0, 0, :2], d) < 0.5, d))
        if cfg.image_crop_scale is not None and "image" in batch:
            draws = _local(_global_rand(rng, torch.empty(len(batch["image"]), 4), d), d)
            batch["image"] = random_resized_crop(batch["image"], draws, cfg.image_crop_scale)
        self.model.train()
        whole = self.sides <= set(batch_sides(batch))
        with self._sync(whole), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            embeddings = self.forward(batch)
        embeddings = {side: (gather(mu.float(), d), gather(lv.float(), d)) for side, (mu, lv) in embeddings.items()}
        parts = pair_losses(self.loss_fn, embeddings, cfg.loss.weights)
        loss = total_loss(parts, cfg.loss.weights)
        value = float(loss.detach())
        if not math.isfinite(value):  # every rank computes the same loss of the gathered batch
            raise Diverged(value, step + 1, cfg)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if d.active and not whole:
            average_gradients(self.params, d)
        self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        return {"loss": value, **{f"loss_{k}": float(v.detach()) for k, v in parts.items()}}

    def _sync(self, whole: bool) -> AbstractContextManager:
        """DDP's gradient sync when every side the loss reads is in the batch; otherwise none (the
        parameters of a missing side get no gradient, which DDP would wait for)."""
        if whole or not isinstance(self.forward, nn.parallel.DistributedDataParallel):
            return nullcontext()
        return self.forward.no_sync()

    def state(self) -> dict:
        return {
            "loss": self.loss_fn.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state(self, state: dict) -> None:
        self.loss_fn.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])


class Diverged(UserError):
    """A step whose loss is NaN or infinite: the weights have diverged, and every later step and
    validation would carry NaNs (a best.pt of them scored as perfect). The run stops before the step
    changes the weights; the checkpoints written before it stay as they are."""

    def __init__(self, loss: float, step: int, cfg: TrainConfig):
        clip = f", train.grad_clip {cfg.grad_clip:g}" if cfg.grad_clip is not None else ""
        super().__init__(
            f"the loss is {loss:g} at step {step}, so training stopped before that step's update: the weights "
            f"have diverged (train.lr {cfg.lr:g}{clip}); lower train.lr{'' if clip else ' or set train.grad_clip'} "
            "and start a new run (another --out; the checkpoints written before this step are kept)"
        )


# The batch keys of each side a step embeds, and the modules (PSMModel's) only that side runs.
SIDE_KEYS: dict[str, tuple[str, ...]] = {
    "sat": ("image", "gsd", *META_KEYS),
    "text": ("input_ids", "attention_mask", "text_backbone"),
    "audio": ("features", "audio_backbone"),
}
SIDE_MODULES = {
    "sat": ("image", "fusion", "sat_heads"),
    "text": ("text", "text_heads"),
    "audio": ("audio", "audio_heads"),
}


def sides_read(loss: LossConfig) -> set[str]:
    """The sides the loss reads: those of every pair with a weight."""
    return {side for pair, sides in PAIRS.items() if loss.weights.get(pair) for side in sides}


def unread_parameters(model: PSMModel, loss: LossConfig) -> list[str]:
    """Names of the parameters no step's loss reads: the modules of a side in no weighted pair,
    and under InfoNCE (cosine of the means) every log-variance head."""
    modules = [m for side in SIDE_MODULES.keys() - sides_read(loss) for m in SIDE_MODULES[side]]
    if loss.kind == "infonce":
        modules += [f"{side}_heads.logvar" for side in SIDE_MODULES]
    return [name for name, _ in model.named_parameters() if name.startswith(tuple(f"{m}." for m in modules))]


def batch_sides(batch: dict) -> list[str]:
    return [side for side, keys in SIDE_KEYS.items() if any(k in batch for k in keys)]


def common_sides(batch: dict[str, torch.Tensor], d: Dist) -> dict[str, torch.Tensor]:
    """The batch without the sides another rank's slice lacks (a caption missing there): one process
    embeds a side only where every sample of the global batch has it, and the ranks gather the
    embeddings of the same sides, in step."""
    here = batch_sides(batch)
    everywhere = all_ranks([side in here for side in SIDE_KEYS], d)
    gone = {key for (side, keys), kept in zip(SIDE_KEYS.items(), everywhere, strict=True) if not kept for key in keys}
    return {k: v for k, v in batch.items() if k not in gone}


def drop_metadata(present: torch.Tensor, p: float, rng: torch.Generator, d: Dist | None = None) -> torch.Tensor:
    """`present` with each token of each sample dropped independently with probability p (PSM
    drops a fixed share per batch, docs/method.md, pitfall 5). The draws cover the global batch, so every rank
    drops what one process would."""
    keep = _local(_global_rand(rng, present, d or Dist()) >= p, d or Dist())
    return present * keep.to(present.device, present.dtype)


def _global_rand(rng: torch.Generator, local: torch.Tensor, d: Dist) -> torch.Tensor:
    """Uniform draws for the whole global batch (rows = local rows x world), so every rank and a
    single process drop the same tokens of the same samples."""
    return torch.rand((local.shape[0] * d.world, *local.shape[1:]), generator=rng)


def _local(rows: torch.Tensor, d: Dist) -> torch.Tensor:
    n = rows.shape[0] // d.world
    return rows[d.rank * n : (d.rank + 1) * n]


def _flip(image: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Flip (B, H, W, 3) images horizontally where which[:, 0], vertically where which[:, 1]."""
    which = which.to(image.device)
    image = torch.where(which[:, 0, None, None, None], image.flip(2), image)
    return torch.where(which[:, 1, None, None, None], image.flip(1), image)


def random_resized_crop(image: torch.Tensor, draws: torch.Tensor, scale: tuple[float, float]) -> torch.Tensor:
    """Crop each (B, H, W, 3) image to a random rectangle and resize it back (torchvision's
    RandomResizedCrop, batched): area share from `scale`, aspect ratio log-uniform in 3/4..4/3,
    position uniform, bilinear. `draws` (B, 4) are uniform [0, 1) numbers: area, aspect, x, y."""
    draws = draws.to(image.device, torch.float32)
    area = scale[0] + (scale[1] - scale[0]) * draws[:, 0]
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * draws[:, 1])
    width, height = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
    x, y = draws[:, 2] * 2 - 1, draws[:, 3] * 2 - 1
    theta = torch.zeros(len(image), 2, 3, device=image.device)
    theta[:, 0, 0], theta[:, 1, 1] = width, height
    theta[:, 0, 2], theta[:, 1, 2] = x * (1 - width), y * (1 - height)
    nchw = image.permute(0, 3, 1, 2).float()
    grid = nn.functional.affine_grid(theta, list(nchw.shape), align_corners=False)
    out = nn.functional.grid_sample(nchw, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.permute(0, 2, 3, 1)
    return out.round().clamp(0, 255).to(image.dtype) if not image.is_floating_point() else out.to(image.dtype)


def train(
    model: PSMModel,
    batches: Callable[[torch.Generator], Iterator[dict[str, torch.Tensor]]],
    cfg: TrainConfig,
    progress: bool = True,
) -> nn.Module:
    """Train in place for cfg.steps steps on an in-memory batch stream (no data reader, no
    evaluation, no checkpoints); returns the loss module, whose (a, b) is the calibration."""
    torch.manual_seed(cfg.seed)
    opt = Optimisation(model, cfg)
    stream = batches(torch.Generator().manual_seed(cfg.seed))
    with torch_threads(cfg.threads):
        bar = tqdm(range(cfg.steps), desc="train", disable=not progress, unit="step")
        for step in bar:
            parts = opt.step(dict(next(stream)), step)
            bar.set_postfix(loss=f"{parts['loss']:.3f}")
    model.eval()
    return opt.loss_fn


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's CPU threads set to n (when given) for the block, then restored."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# A whole run: data, validation, checkpoints, resume


@dataclass
class RunResult:
    run_dir: Path
    last_step: int
    best_step: int | None
    best_metrics: dict | None
    stopped_early: bool
    skipped: int  # times an unreadable sample was replaced
    skipped_files: int = 0  # distinct unreadable samples (skipped.tsv)


class Run:
    """The state of `fit` in one place: config, process, model, optimisation, data, logs."""

    def __init__(
        self, config: RunConfig, run_dir: Path, *, resume: bool, progress: bool, init_from: str | Path | None = None
    ):
        self.cfg, self.run_dir, self.progress = config.train, run_dir, progress
        self.dist = init_distributed()
        self.device = device_for(self.dist)
        # Before the data is read: weights, their gradients and Adam's two moments, 4 bytes each.
        check_fits(config.model, 16, "as float32 weights, gradients and Adam's two moments", self.device)
        self.splits: Splits = checked_splits(config.data, config.model, skip=self.cfg.skip_mismatched_rows)
        # The run records the data section with what the reader derived (a csv level), so evaluate
        # and a resume read the same cells whatever the imagery's default would be then.
        self.config = config = config.model_copy(update={"data": self.splits.settled or config.data})
        self.batch_weights = _batch_weights(self.splits, self.cfg.balance_classes, self.cfg.balance_places)
        # One process trains into a run directory: a second `train` on the same --out would
        # interleave its checkpoints and metrics.csv rows with this one's.
        self.lock = _lock_run(run_dir) if self.dist.is_main else None
        if broadcast_flag(self.dist.is_main and self.lock is None, self.dist):
            raise UsageError(
                f"another `soundscape train` is running in {run_dir}; wait for it to end (then --resume "
                "continues it) or choose another --out"
            )
        if self.lock is not None:
            _remove_partial_checkpoints(run_dir)
        try:
            self._start(config, run_dir, resume, init_from)
        except BaseException:
            if self.lock is not None:
                unlock_file(run_dir / RUN_LOCK, self.lock)
            raise

    def _start(self, config: RunConfig, run_dir: Path, resume: bool, init_from: str | Path | None) -> None:
        """The checkpoint to resume or the weights to start from, the model, caches and optimisation
        (under the run's lock)."""
        checkpoint = _read_resume_checkpoint(run_dir, config) if resume else None
        if checkpoint is None and (run_dir / "last.pt").exists():
            raise FileExistsError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        initial = read_initial(init_from) if init_from is not None else None
        if initial is not None:
            check_model(initial, config.model)
        if not len(self.splits.val):
            why = self.splits.why_empty.get("val", "give the data a larger validation fraction")
            raise DataError(
                f"the validation split has no samples, and training validates at least at its last step "
                f"(best.pt): {why}"
            )
        if self.dist.is_main:
            eval_n = min(len(self.splits.val), self.cfg.eval_samples or len(self.splits.val))
            for warning in small_split_warnings({"validation": eval_n, "test": len(self.splits.test)}):
                log.warning(warning)
        torch.manual_seed(self.cfg.seed)
        self.model = PSMModel(config.model, pretrained=checkpoint is None and initial is None)
        if initial is not None:
            load_initial(self.model, initial)
        self.model = self.model.to(self.device)
        self.prep = preprocessing(self.model)
        # The count goes on from the checkpoint's (a checkpoint written before it was kept: from 0).
        self.skips = SkipLog(checkpoint["skipped"], checkpoint.get("skip_count", 0)) if checkpoint else SkipLog()
        self.caches = {name: self._cache(name) for name in ("train", "val")}
        self.opt = Optimisation(self.model, self.cfg, self.dist)
        self.step, self.best, self.best_step, self.evals_since_best = 0, None, None, 0
        # The metrics row of a step whose validation a signal abandoned: the resumed run does it first.
        self.validation_due: dict | None = None
        # Where the weights the run started from came from (a resumed run keeps its checkpoint's).
        self.init_from = initial.origin if initial else (checkpoint or {}).get("init_from")
        if initial is not None:
            load_calibration(self.opt.loss_fn, initial)
        if checkpoint is not None:
            self.model.load_trainable_state_dict(checkpoint["model"], str(run_dir / "last.pt"))
            self.opt.load_state(checkpoint)
            self.step, self.best, self.best_step = checkpoint["step"], checkpoint["best"], checkpoint["best_step"]
            self.evals_since_best = checkpoint["evals_since_best"]
            self.validation_due = checkpoint.get("validation_due")
            log.info("resumed %s at step %d", run_dir, self.step)

    def _cache(self, split: str) -> FrozenCache:
        if not (self.cfg.cache_frozen and self.model.frozen_towers()):
            return FrozenCache()
        if self.dist.is_main:
            cache = self._build_cache(split)
        barrier(self.dist)
        return cache if self.dist.is_main else self._build_cache(split)

    def _build_cache(self, split: str) -> FrozenCache:
        return frozen_cache(
            self.model,
            split,
            getattr(self.splits, split),
            self.prep,
            cache_dir=self.run_dir / "frozen-cache",
            data=self.config.data,
            batch_size=self.cfg.eval_batch_size,
            workers=self.cfg.workers,
            skips=self.skips,
            progress=self.progress and self.dist.is_main,
        )

    def batches(self) -> Iterator[dict]:
        cache = self.caches["train"]
        examples = Examples(
            self.splits.train, self.prep, skip_audio="audio" in cache.outputs, unreadable=cache.unreadable
        )
        sampler = GlobalBatches(
            len(examples),
            self.cfg.batch_size,
            seed=self.cfg.seed,
            rank=self.dist.rank,
            world=self.dist.world,
            start=self.step,
            weights=self.batch_weights,
        )
        self.per_epoch = sampler.per_epoch
        return iter(loader(examples, Collate(self.prep, cache.outputs), sampler, workers=self.cfg.workers))

    def validate(self, vote: ValidationVote) -> dict | None:
        """Validation metrics (metadata as the data has it, all levels in one gallery, or the mean
        of the levels' where a reader repeats clips across levels); None when a signal abandoned
        it, with the unreadable samples it met forgotten (the resumed run's validation meets them)."""
        before = self.skips.copy()
        try:
            emb = embed_split(
                self.model,
                self.splits.val,
                self.prep,
                cache=self.caches["val"],
                batch_size=self.cfg.eval_batch_size,
                workers=self.cfg.workers,
                max_samples=self.cfg.eval_samples,
                skips=self.skips,
                stop=vote.stop,
            )
        except Abandoned:
            self.skips = before
            return None
        vote.done()
        return overall(metrics(emb, self.cfg.loss.kind == "pcmepp", oracle_caption=False))["metadata"]

    def checkpoint(self, name: str) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "model": self.model.trainable_state_dict(),
            **self.opt.state(),
            "step": self.step,
            "best": self.best,
            "best_step": self.best_step,
            "evals_since_best": self.evals_since_best,
            "skipped": self.skips.records(),
            "skip_count": self.skips.count,
            "calibration": self.opt.loss_fn.calibration(),
            **({"init_from": self.init_from} if self.init_from else {}),
            **({"validation_due": self.validation_due} if self.validation_due else {}),
        }
        atomic_write(self.run_dir / name, lambda tmp: torch.save(state, tmp))
        with open(self.run_dir / "skipped.tsv", "w", encoding="utf-8") as f:
            f.writelines(f"{where}\t{reason}\n" for where, reason in self.skips.records())


def _lock_run(run_dir: Path) -> IO[str] | None:
    """An exclusive lock on RUN/.lock (runtime.files.lock_file: a killed run's lock goes with its
    process, and the file goes when the run ends); None when another process holds it."""
    try:
        return lock_file(run_dir / RUN_LOCK, wait=False)
    except BlockingIOError:
        return None


RUN_LOCK = ".lock"
CHECKPOINT_FILES = ("last.pt", "best.pt")


# What a run writes into its folder (besides RUN_LOCK and partial checkpoints): a folder holding
# one of them is a run's, which training may write into (beside the user's notes, say).
RUN_ENTRIES = (*CHECKPOINT_FILES, "metrics.csv", "config.yaml", "skipped.tsv", "frozen-cache")


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """UsageError for a run folder training must not write: --resume where no run is (it trained
    from step 0, exit 0), or a folder of something else (a bundle, a store, the user's files),
    which got best.pt, last.pt and metrics.csv among its files. An empty folder is fine."""
    if resume and not (run_dir / "last.pt").is_file():
        raise UsageError(
            f"--resume: {run_dir} holds no training run to resume (no last.pt); leave out --resume to start one"
        )
    if not run_dir.is_dir() or any((run_dir / name).exists() for name in RUN_ENTRIES):
        return
    others = sorted(p.name for p in {*run_dir.iterdir()} - {run_dir / RUN_LOCK, *_partial_checkpoints(run_dir)})
    if others:
        raise UsageError(
            f"--out {run_dir} holds {others[0]}{' and more' if len(others) > 1 else ''} but no training run, "
            "which training would write among; choose an empty folder or another --out"
        )


def _partial_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoint writes a killed run left (runtime.files.atomic_write's `.last.PID-TID.tmp.pt`)."""
    stems = (name.rsplit(".", 1) for name in CHECKPOINT_FILES)
    return [partial for stem, suffix in stems for partial in run_dir.glob(f".{stem}.*.tmp.{suffix}")]


def _remove_partial_checkpoints(run_dir: Path) -> None:
    """Remove the temporary files of checkpoint writes that a killed run left (runtime.files.
    atomic_write writes `.last.PID-TID.tmp.pt` beside last.pt, then renames it): a run killed
    mid-write (kill -9, out of memory, a lost node) left a partial copy of the checkpoint, as
    large as one, that no run would ever read or remove. Called under the run's lock, so no
    other `train` is writing here."""
    for partial in _partial_checkpoints(run_dir):
        log.info("removing %s, a checkpoint write a stopped run left unfinished", partial)
        partial.unlink(missing_ok=True)


def _batch_weights(splits: Splits, classes_power: float, places_power: float) -> np.ndarray | None:
    """The training split's sampling weights under train.balance_classes and
    train.balance_places, multiplied (None: plain epochs)."""
    weights = None
    if classes_power:
        classes = getattr(splits.train, "sound_classes", None)
        if classes is None:
            raise ConfigError(
                "train.balance_classes needs a reader that labels each sample's sound classes (the "
                "demo corpus's does); this data's reader does not, so set it to 0"
            )
        weights = class_balance(classes(), classes_power)
    if places_power:
        where = [load_sample(splits.train, i, ("audio", "image", "caption")) for i in range(len(splits.train))]
        places = place_balance(np.array([s.lat for s in where]), np.array([s.lon for s in where]), places_power)
        weights = places if weights is None else weights * places
    return weights


# `train` keys a resumed run may change: they decide how long it runs, how often it validates,
# logs and checkpoints, and how fast, not what a step computes (`steps` also reshapes the cosine
# from the resumed step on). Any other change is refused (docs/training.md).
RESUMABLE_CHANGES = frozenset(
    {
        "steps",
        "workers",
        "threads",
        "cache_frozen",
        "eval_every",
        "eval_samples",
        "eval_batch_size",
        "select_metric",
        "patience",
        "checkpoint_every",
        "log_every",
    }
)


def _read_resume_checkpoint(run_dir: Path, config: RunConfig) -> dict | None:
    path = run_dir / "last.pt"
    if not path.is_file():
        return None
    checkpoint = load_checkpoint(path)
    if checkpoint["config"]["data"] != config.data:
        raise ConfigError(f"cannot resume {run_dir}: its `data` section differs from this config")
    before = from_section(TrainConfig, checkpoint["config"]["train"], "train").model_dump()
    now = config.train.model_dump()
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and now[k] != before.get(k))
    if changed:
        raise ConfigError(
            f"cannot resume {run_dir}: {', '.join(f'train.{k}' for k in changed)} "
            f"{'differs' if len(changed) == 1 else 'differ'} from the run's "
            f"({', '.join(f'{k} {before.get(k)!r}' for k in changed)}), so it would not continue as it began; "
            "put the run's values back or start a new run with another --out"
        )
    # A changed model section is checked where it matters: loading the weights lists every key
    # that no longer fits (model.nn.weights.load_strict).
    return checkpoint


def fit(
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    init_from: str | Path | None = None,
) -> RunResult:
    """Train, validate and checkpoint into `run_dir` (last.pt, best.pt, metrics.csv,
    config.yaml, skipped.tsv). resume=True continues from last.pt exactly; stop_after ends this
    invocation after that many steps (with a checkpoint), as a killed job would; init_from starts
    a new run from the weights of a checkpoint or trained-parts folder (model.init_from). SIGINT or
    SIGTERM ends it after the step under way with last.pt saved, raising Interrupted (model.stopping)."""
    if resume and init_from is not None:
        raise UsageError(
            "--init-from starts a new run from trained weights and --resume continues a run from its own "
            "last.pt; give one of them"
        )
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    make_folder(run_dir, "--out")
    with torch_threads(config.train.threads), StopSignals(announce=main_process()) as signals:
        run = Run(config, run_dir, resume=resume, progress=progress, init_from=init_from)
        return _fit(run, stop_after, progress, signals)


def _fit(run: Run, stop_after: int | None, progress: bool, signals: StopSignals) -> RunResult:
    run_dir = run.run_dir
    try:
        if run.dist.is_main:
            atomic_write(run_dir / "config.yaml", _config_text(run))
        end = run.cfg.steps if stop_after is None else min(run.cfg.steps, run.step + stop_after)
        stopped = _steps(run, end, progress, signals)
        # Every rank ends at the same step: none leaves the process group while another still has
        # collectives in flight (a rank of a two-process gloo run aborted at exit, now and then).
        barrier(run.dist)
        return RunResult(run_dir, run.step, run.best_step, run.best, stopped, run.skips.count, run.skips.files)
    finally:
        if run.lock is not None:
            unlock_file(run_dir / RUN_LOCK, run.lock)
        run.opt.forward = run.model  # DDP holds the process group, which shutdown must be the last to hold
        shutdown(run.dist)


def _config_text(run: Run) -> str:
    """config.yaml: the run's config, below a comment naming the weights it started from, if any."""
    text = yaml.safe_dump(run.config.to_dict(), sort_keys=False)
    origin = run.init_from
    if origin is None:
        return text
    return f"# started from the weights of {origin['path']} (sha256 {origin['sha256']}): train --init-from\n{text}"


def _steps(run: Run, end: int, progress: bool, signals: StopSignals) -> bool:
    """Train up to step `end`, validating, logging and checkpointing on the way; whether it stopped
    early. A signal `signals` noted (on any rank) ends it after the step under way, abandoning a
    validation under way or due: every rank agrees on that step, last.pt is saved at it and
    Interrupted raised. A step whose validation was abandoned is validated first on resume."""
    d, cfg = run.dist, run.cfg
    logger = MetricsLog(run.run_dir / "metrics.csv", after_step=run.step) if d.is_main else None
    stream = run.batches()
    stopped = False
    meter = Throughput()
    signals.defer()
    with tqdm(
        total=cfg.steps, initial=run.step, desc="train", unit="step", disable=not (progress and d.is_main)
    ) as bar:
        if run.validation_due is not None:
            due, run.validation_due = run.validation_due, None
            stopped = _after_step(run, due if d.is_main else None, True, end, logger, signals)
        while run.step < end and not stopped:
            started = time.perf_counter()
            batch = next(stream)
            run.skips.add(batch["skipped"])
            parts = run.opt.step(to_tensors(batch, run.device), run.step)
            run.step += 1
            meter.add(cfg.batch_size, time.perf_counter() - started)
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.3f}")
            evaluate = bool(cfg.eval_every and run.step % cfg.eval_every == 0) or run.step == cfg.steps
            row: dict | None = None
            if d.is_main:
                row = {"step": run.step, "epoch": run.step / run.per_epoch, **parts}
                if evaluate or run.step % cfg.log_every == 0:
                    row["samples_per_s"] = meter.read()
            stopped = _after_step(run, row, evaluate, end, logger, signals)
    return stopped


def _after_step(
    run: Run, row: dict | None, evaluate: bool, end: int, logger: MetricsLog | None, signals: StopSignals
) -> bool:
    """What follows step `run.step` (`row`: its metrics on the main rank): its validation if due,
    its metrics row, last.pt when due and the ranks' agreement on a signal; whether the run stopped
    early."""
    d, cfg = run.dist, run.cfg
    stopped = _evaluate_and_select(run, row, signals) if evaluate else False
    if d.is_main and (evaluate or run.step % cfg.log_every == 0):
        assert logger is not None and row is not None  # both exist on the main rank
        a, b = run.opt.loss_fn.calibration()
        logger.write(
            {
                **row,
                "lr": run.opt.schedule.get_last_lr()[0],
                "scale_a": a,
                "shift_b": b,
                "skipped": run.skips.count,
            }
        )
    # A signal on the last step asks for what the run does anyway: it ends as it would have.
    signum = max_over_ranks(signals.received or 0, d) if run.step < end and not stopped else 0
    if d.is_main and (run.step % cfg.checkpoint_every == 0 or run.step == end or stopped or signum):
        run.checkpoint("last.pt")
    if signum:
        _interrupt(run, signum)
    return stopped


def _interrupt(run: Run, signum: int) -> None:
    """Every rank ends once the main rank's last.pt is whole."""
    barrier(run.dist)
    raise Interrupted(signum, run.step, run.run_dir)


def _evaluate_and_select(run: Run, row: dict | None, signals: StopSignals) -> bool:
    """Validate on rank 0, keep best.pt, and decide (for every rank) whether to stop early. A
    signal (on any rank) abandons the validation between two batches: last.pt is saved at this
    step with the validation still due (and `row`, to log once it is done), and Interrupted
    raised."""
    vote = ValidationVote(signals, run.dist)
    values = None
    if run.dist.is_main:
        values = run.validate(vote)
    else:
        vote.wait()
    if vote.signum:
        if run.dist.is_main:
            run.validation_due = row
            run.checkpoint("last.pt")
        _interrupt(run, vote.signum)
    stop = False
    if run.dist.is_main:
        assert row is not None and values is not None  # the main rank logs a row every step, validated
        row.update({f"val_{k}": v for k, v in values.items() if k != "gallery"})
        score = values[run.cfg.select_metric]
        if run.best is None or score > run.best[run.cfg.select_metric]:
            run.best, run.best_step, run.evals_since_best = values, run.step, 0
            run.checkpoint("best.pt")
        else:
            run.evals_since_best += 1
        stop = run.cfg.patience is not None and run.evals_since_best >= run.cfg.patience
        if stop:
            log.info(
                "early stop at step %d: %s has not improved for %d evaluations (best %.4f at step %d)",
                run.step,
                run.cfg.select_metric,
                run.evals_since_best,
                run.best[run.cfg.select_metric],
                run.best_step,
            )
    barrier(run.dist)
    return broadcast_flag(stop, run.dist)


class Throughput:
    """Training samples per second (global batch) since the last reading; validation and
    checkpoint time left out."""

    def __init__(self):
        self.samples, self.seconds = 0, 0.0

    def add(self, samples: int, seconds: float) -> None:
        self.samples += samples
        self.seconds += seconds

    def read(self) -> float:
        value = self.samples / self.seconds if self.seconds else 0.0
        self.samples, self.seconds = 0, 0.0
        return value


class MetricsLog:
    """metrics.csv: one row per logged step; on resume, rows after the checkpoint are dropped
    (they belong to steps that will run again)."""

    def __init__(self, path: Path, after_step: int):
        self.path = path
        rows = []
        if path.is_file() and after_step:
            with open(path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= after_step]
        atomic_write(path, functools.partial(_write_rows, rows=rows))  # a stop midway keeps the old rows

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, LOG_COLUMNS, extrasaction="ignore").writerow(row)


def _write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
