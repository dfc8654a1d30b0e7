"""Training loops: the supernet (gate-free warm-up, then Variational DropPath with the KL term) and plain
networks (derived or stand-alone strategies). Both resume from the last atomic checkpoint, at the exact step.

Files in ``out_dir``:
  ``last.pt``          the last checkpoint: model, optimizer, scheduler, finished epochs, the step reached in the
                       next epoch with its partial sums, every rank's RNG states, the optimizer step count, history
  ``model.pt``         the final weights, the training config, the drop-rate rows of ``drop_rates.csv`` (empty for
                       plain networks; exposure reads them, :mod:`stfusion.analysis.exposure`) and ``fit``'s
                       ``record`` (written once, when training is complete)
  ``history.csv``      one row an epoch: phase, lr, loss, cross-entropy, KL, train accuracy (over the global
                       batches of every rank), optimizer steps, decode failures, and the validation columns of
                       ``fit``'s ``evaluate`` hook (:mod:`stfusion.engine.evaluation`)
  ``drop_rates.csv``   one row per epoch, layer and path: the drop rate p (gated networks only)
  ``gate_stats.csv``   one row per epoch and gated path: p, ||W||^2, ||gamma||^2, price (:mod:`stfusion.core.gate_stats`)

A checkpoint is written after every epoch and, with ``checkpoint_minutes``, every that many minutes inside an
epoch. SIGTERM or SIGUSR1 (SLURM's warning before the time limit or a preemption) lets the current step finish,
writes a checkpoint and raises :class:`~stfusion.errors.ResumableStop` (the CLI exits with
:data:`~stfusion.errors.EXIT_RESUME`); the same command resumes. Under DDP the ranks take these decisions
together after every step, and rank 0 writes ``last.pt`` only once every rank has finished the step.

Exact resumption inside an epoch: the epoch's sample order is a pure function of ``(seed, epoch)``; the run
skips the samples already used; every sample's augmentation draws from torch's generator seeded by
``(seed, epoch, sample index)`` (in the training process or a DataLoader worker alike, so the worker count and
the resume point change nothing), and the training process's own RNG states (torch, CUDA, numpy, python: the
gate masks) are restored per rank.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from stfusion.config.layout import LAYOUT, in_folder
from stfusion.engine import distributed

from stfusion.io.files import guarded_write, write_csv, write_text
from stfusion.engine.checkpoint import load_checkpoint, rng_state, save_torch, set_rng_state
from stfusion.data.loader import clip_loader
from stfusion.data.transforms import normalize
from stfusion.data.video_dataset import DecodeFailures, split_failures
from stfusion.errors import ResumableStop, StfusionError
from stfusion.core.gate_stats import gate_rows
from stfusion.models.base import FusionNetwork

if TYPE_CHECKING:
    from stfusion.config.settings import Budget, Compute, Settings, Solver

log = logging.getLogger(__name__)

#: TrainConfig fields that say how often the run is saved, not what it computes: a checkpoint written with other
#: values is resumed
RUN_ONLY_FIELDS = ("checkpoint_minutes",)
#: signals that stop a run at the end of its step, after a checkpoint: preemption and time limits (SIGTERM, SIGUSR1)
#: and Ctrl-C (SIGINT; a second Ctrl-C stops at once)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
@dataclass
class TrainConfig:
    """One training run. ``epochs`` counts the gated (or plain) epochs; ``warmup_epochs`` come before them."""

    epochs: int
    batch_size: int
    lr: float
    warmup_epochs: int = 0
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.45, 0.67, 0.9)
    seed: int = 0
    device: str = "cpu"
    kl_k: float | None = None  # None: plain training, no KL term
    kl_form: str = "linear"
    kl_price: str = "weight"  # what the KL term prices per path (stfusion.core.fusion.paths_price)
    kl_warmin_epochs: int = 0  # the KL term grows linearly over the first gated epochs (0: full from the start)
    gate_lr_scale: float = 1.0  # learning rate of the gate logits relative to the weights'
    uniform_share: float = 0.0  # share of the gated steps with uniformly drawn hard states (see uniform_step)
    n_train: int | None = None  # N of the KL term; None = len(train_set)
    sync_bn: bool = True  # BatchNorm over the global batch under DDP (SyncBatchNorm on CUDA, GlobalBatchNorm3d on CPU)
    precision: str = "fp32"  # fp32 | bf16 (autocast of the forward; weights, gate logits and the KL stay fp32)
    channels_last: bool = False  # model and batches in channels_last_3d (NDHWC) memory layout
    loader_workers: int = 0  # DataLoader worker processes (0: load in the training process)
    checkpoint_minutes: float | None = None  # also checkpoint inside an epoch every this many minutes
    extra: dict = field(default_factory=dict)

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.epochs

    def settings(self) -> dict:
        """What a checkpoint must have been written with to be resumed: every field but :data:`RUN_ONLY_FIELDS`."""
        return {k: v for k, v in asdict(self).items() if k not in RUN_ONLY_FIELDS}


class EpochSchedule:
    """Learning-rate factor per epoch: constant during warm-up, then cosine (to 0) or x0.1 steps at
    ``milestones`` (fractions of the gated phase) — the paper's step schedule is the ``step`` option."""

    def __init__(self, warmup_epochs: int, epochs: int, schedule: str, milestones):
        self.warmup_epochs, self.epochs, self.schedule, self.milestones = warmup_epochs, epochs, schedule, milestones

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return 1.0
        t = epoch - self.warmup_epochs
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t / max(self.epochs, 1)))
        return 0.1 ** sum(t >= m * self.epochs for m in self.milestones)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StfusionError("device 'cuda' was asked for but no CUDA GPU is available (set compute.device: cpu)")
    return torch.device(name)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum; weight decay on weights only, never on the gate logits, whose learning rate is
    ``gate_lr_scale`` times the weights'."""
    gates = [p for n, p in model.named_parameters() if n.endswith("p_logit")]
    weights = [p for n, p in model.named_parameters() if not n.endswith("p_logit")]
    groups = [{"params": weights, "weight_decay": cfg.weight_decay}]
    if gates:
        groups.append({"params": gates, "weight_decay": 0.0, "lr": cfg.lr * cfg.gate_lr_scale})
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def stream_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of a random stream fixed by ``(seed, epoch, index)``: a sample's augmentation, a step's choice."""
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % (1 << 63)


def uniform_step(cfg: TrainConfig, epoch: int, step: int) -> bool:
    """Whether gated ``step`` of ``epoch`` trains the weights under uniformly drawn hard states instead of the
    gates' masks (a ``cfg.uniform_share`` of the steps, decided by ``(seed, epoch, step)``, so a resumed run
    repeats the choice). On such a step the gate logits get no gradient and the KL term is left out: the step
    serves the strategies the posterior rarely samples, so that their shared-weight scores mean something."""
    if cfg.uniform_share <= 0:
        return False
    g = torch.Generator().manual_seed(stream_seed(cfg.seed, epoch, step + 1))
    return bool(torch.rand((), generator=g) < cfg.uniform_share)


def kl_factor(cfg: TrainConfig, epoch: int) -> float:
    """Weight of the KL term in ``epoch`` (0-based over all epochs): it grows linearly over the first
    ``kl_warmin_epochs`` gated epochs, ``(t + 1) / (kl_warmin_epochs + 1)`` in gated epoch t, then stays 1."""
    t = epoch - cfg.warmup_epochs
    return min(1.0, (t + 1) / (cfg.kl_warmin_epochs + 1))


def epoch_order(n: int, cfg: TrainConfig, epoch: int) -> list[int]:
    """This rank's sample indices of ``epoch``: a shuffle seeded by ``(seed, epoch)``, so a resumed run sees the same
    order. Single-process runs use the same :class:`DistributedSampler` with one replica, so a DDP run over W
    processes (each taking ``batch_size / W`` of every global batch) sees exactly the single-process global batches.
    """
    world = distributed.world_size()
    if cfg.batch_size % world:
        raise StfusionError(f"batch size {cfg.batch_size} is not divisible by the {world} DDP processes")
    sampler = DistributedSampler(range(n), num_replicas=world, rank=distributed.rank(), shuffle=True, seed=cfg.seed)
    sampler.set_epoch(epoch)
    return list(sampler)


class SeededSamples(Dataset):
    """``dataset[i]`` drawn under torch's generator seeded by ``(seed, epoch, i)``: a sample's augmentation no
    longer depends on which process loads it or on what was loaded before. Items are ``(i, epoch)`` pairs. In the
    training process the global generator is restored afterwards (it draws the gate masks)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        i, epoch = item
        in_worker = torch.utils.data.get_worker_info() is not None
        state = None if in_worker else torch.get_rng_state()
        torch.default_generator.manual_seed(stream_seed(self.seed, epoch, i))
        try:
            return self.dataset[i]
        finally:
            if state is not None:
                torch.set_rng_state(state)


def clips_per_item(train_set: Dataset, cfg: TrainConfig) -> int:
    """The clips each item of ``train_set`` holds (its ``clips_per_decode``, 1 without one); it must divide the
    ``batch_size / world`` clips of a batch on each rank, so that a batch holds whole items."""
    k, world = int(getattr(train_set, "clips_per_decode", 1)), max(distributed.world_size(), 1)
    local = cfg.batch_size // world
    if local % k:
        raise StfusionError(f"data.clips_per_decode = {k} does not divide the {local} clips of a batch per process "
                            f"(batch size {cfg.batch_size} over {world} process{'es' if world > 1 else ''}): "
                            "choose a divisor")
    return k


def epoch_videos(order: list[int], k: int, local: int, drop_last: bool) -> list[int]:
    """The videos a rank decodes in an epoch whose order is ``order``, at ``k`` clips a video and ``local`` clips a
    batch: as many clips as one clip a video gives (every batch full with ``drop_last``, else ``len(order)``),
    from the first ``1 / k`` of the order."""
    if k == 1:
        return order
    clips = len(order) // local * local if drop_last else len(order)
    return order[: -(-clips // k)]


def epoch_loader(train_set: Dataset, cfg: TrainConfig, epoch: int, skip_batches: int = 0) -> DataLoader:
    """The epoch's batches (of ``batch_size / world`` clips on this rank), the first ``skip_batches`` left out.
    Items of ``k`` clips (``data.clips_per_decode``): batches of ``batch_size / world / k`` videos, the epoch's
    clips from the first ``1 / k`` of its order (:func:`epoch_videos`); the same batches and clips per epoch."""
    local = cfg.batch_size // max(distributed.world_size(), 1)
    k, drop_last = clips_per_item(train_set, cfg), len(train_set) > cfg.batch_size
    order = epoch_order(len(train_set), cfg, epoch)
    items = [(i, epoch) for i in epoch_videos(order, k, local, drop_last)[skip_batches * local // k:]]
    return clip_loader(SeededSamples(train_set, cfg.seed), local // k, sampler=items, drop_last=drop_last,
                       workers=cfg.loader_workers, generator=torch.Generator().manual_seed(cfg.seed),
                       clips_per_item=k, max_clips=None if drop_last else len(order))


def batches_per_epoch(n: int, cfg: TrainConfig) -> int:
    local = cfg.batch_size // distributed.world_size()
    per_rank = math.ceil(n / distributed.world_size())
    return per_rank // local if n > cfg.batch_size else math.ceil(per_rank / local)


class StopRequest:
    """While active (``with StopRequest() as stop``), SIGTERM, SIGUSR1 and SIGINT set ``stop.signal`` instead of
    ending the process; a second SIGINT (Ctrl-C twice) raises ``KeyboardInterrupt``. The previous handlers come
    back afterwards. Outside the main thread it does nothing."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signal is None:
            again = " (Ctrl-C again stops at once)" if signum == signal.SIGINT else ""
            log.warning("received %s: finishing the step, then writing a checkpoint%s", signal.Signals(signum).name,
                        again)
        self.signal = signum

    def __enter__(self) -> StopRequest:
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        except ValueError:  # not the main thread
            self._previous = {}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class CheckpointClock:
    """``due()`` once every ``minutes`` (never with ``None``); ``reset()`` after each checkpoint."""

    def __init__(self, minutes: float | None):
        self.seconds = None if minutes is None else 60.0 * minutes
        self.reset()

    def reset(self) -> None:
        self.since = time.monotonic()

    def due(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.since >= self.seconds


def new_sums() -> dict:
    """The running sums of one epoch (on this rank): loss, ce and kl weighted by samples, correct, n, the videos
    replaced after a decode failure, seconds."""
    return {"loss": 0.0, "ce": 0.0, "kl": 0.0, "correct": 0, "n": 0, "decode_failures": 0, "seconds": 0.0}


@dataclass
class TrainState:
    """Where a run stands: ``epoch`` epochs finished, ``step`` batches of the next one done (with their
    ``sums``), ``optimizer_steps`` in all, and the tables so far."""

    epoch: int = 0
    step: int = 0
    optimizer_steps: int = 0
    sums: dict = field(default_factory=new_sums)
    history: list = field(default_factory=list)
    rates: list = field(default_factory=list)
    stats: list = field(default_factory=list)  # per-path gate statistics (stfusion.core.gate_stats)


STALE_POLICIES = ("refuse", "restart")


@dataclass
class Run:
    """One training run in progress: the network (``model``; ``net`` is what the loop calls, the DDP wrapper of
    the current ``phase`` or the model itself), its optimiser and learning-rate schedule, the settings, where it
    checkpoints (``out_dir/last.pt``) and how far it got (``state``)."""

    model: FusionNetwork
    cfg: TrainConfig
    out_dir: Path
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    state: TrainState
    n_batches: int
    clock: CheckpointClock
    autocast: torch.autocast
    net: torch.nn.Module | None = None
    phase: str | None = None
    check_unused: bool = False

    @property
    def ckpt_path(self) -> Path:
        return in_folder(LAYOUT.last, self.out_dir)

    @property
    def gated(self) -> bool:
        return self.cfg.kl_k is not None


def fit(
    model: FusionNetwork,
    train_set: Dataset,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    evaluate: Callable[[FusionNetwork, int], dict] | None = None,
    record: dict | None = None,
    on_stale: str = "refuse",
) -> pd.DataFrame:
    """Train ``model`` on ``train_set`` (items ``(uint8 (3, T, H, W), label[, decode failure])``, or ``K`` clips
    ``(K, 3, T, H, W)`` an item with ``clips_per_decode``: :func:`epoch_loader`), resuming from ``out_dir/last.pt``.

    With ``cfg.kl_k`` set, the model is a supernet: gate-free for ``warmup_epochs``, then gated with loss
    ``CE + KL`` (docs/method.md §4). ``evaluate(model, epoch)`` (1-based epoch; see :mod:`stfusion.engine.evaluation`) runs
    on the main process after every epoch; its dict joins the epoch's history row. ``record``: entries
    ``model.pt`` carries beside the weights (the supernet's build information). ``on_stale``: what to do with a
    ``last.pt`` written for another architecture or other settings, or damaged: ``refuse`` (an error) or
    ``restart`` (delete it, with a warning, and train from the start). Returns the history table.
    Raises :class:`ResumableStop` after writing a checkpoint when SIGTERM or SIGUSR1 arrives.
    """
    if on_stale not in STALE_POLICIES:
        raise ValueError(f"on_stale must be one of {STALE_POLICIES}, got {on_stale!r}")
    clips_per_item(train_set, cfg)  # a batch of whole items, checked before anything starts
    run = _start(model, train_set, cfg, Path(out_dir), on_stale)
    state, main = run.state, distributed.is_main()
    bar = tqdm(range(state.epoch, cfg.total_epochs), desc=f"train {run.out_dir.name}",
               disable=not (progress and main), leave=False)
    with StopRequest() as stop:
        for epoch in bar:
            phase = _enter_phase(run, epoch)
            t0 = train_epoch(run, train_set, epoch, phase, stop)
            row = _end_epoch(run, epoch, phase, t0, evaluate if main else None)
            bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['train_top1']:.2f}")
            state.epoch, state.step, state.sums = epoch + 1, 0, new_sums()
            _save(run, epoch_done=True)
            if distributed.any_true(stop.signal is not None)[0] and state.epoch < cfg.total_epochs:
                _stopped(stop.signal, run.ckpt_path, state.epoch, 0)
    if main:
        final = {"arch": run.model.arch, "model": run.model.state_dict(), "config": asdict(cfg),
                 "optimizer_steps": state.optimizer_steps, "drop_rates": state.rates, **(record or {})}
        model_path = in_folder(LAYOUT.supernet, run.out_dir)
        guarded_write(model_path, lambda: (_write_tables(run.out_dir, state.history, state.rates, state.stats),
                                           save_torch(final, model_path)))
    distributed.barrier()
    return pd.DataFrame(state.history)


def _start(model: FusionNetwork, train_set: Dataset, cfg: TrainConfig, out_dir: Path, on_stale: str) -> Run:
    """The run set up on its device: optimiser, schedule, the seeded random streams, the state resumed from
    ``last.pt`` (see :func:`_initial_state`), BatchNorm over the global batch under DDP."""
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and distributed.world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise StfusionError(f"compute.precision is bf16 but {torch.cuda.get_device_name(device)} has no bf16 "
                            "support (set compute.precision: fp32)")
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, EpochSchedule(cfg.warmup_epochs, cfg.epochs, cfg.schedule, tuple(cfg.milestones))
    )
    torch.manual_seed(cfg.seed + distributed.rank())  # independent masks and augmentation per rank
    state = _initial_state(in_folder(LAYOUT.last, out_dir), model, optimizer, scheduler, cfg, on_stale)
    if distributed.world_size() > 1 and cfg.sync_bn:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:  # gloo on CPU: PyTorch's SyncBatchNorm needs CUDA
            distributed.global_batchnorm(model)
    return Run(model, cfg, out_dir, device, optimizer, scheduler, state, batches_per_epoch(len(train_set), cfg),
               CheckpointClock(cfg.checkpoint_minutes),
               torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"))


def _enter_phase(run: Run, epoch: int) -> str:
    """The phase of ``epoch`` (``warmup``, ``gated`` or ``train``), the gates switched on or off for it; at a new
    phase the gate logits train only when gated and the DDP wrapper is rebuilt (it must know which parameters
    take part)."""
    phase = "warmup" if epoch < run.cfg.warmup_epochs else ("gated" if run.gated else "train")
    if run.gated:
        run.model.set_gates_active(phase == "gated")
    if phase != run.phase:
        for p in run.model.gate_parameters():
            p.requires_grad_(phase == "gated")
        run.net, run.phase, run.check_unused = _wrap_ddp(run.model, run.device), phase, distributed.world_size() > 1
    return phase


def train_epoch(run: Run, train_set: Dataset, epoch: int, phase: str, stop: StopRequest) -> float:
    """The optimizer steps of ``epoch`` from the step the run reached, summed into ``run.state.sums``; a
    checkpoint inside the epoch when the clock is due or a stop was requested (then :class:`ResumableStop`).
    Returns the epoch's start on the ``time.perf_counter`` clock (earlier by the seconds of a resumed part)."""
    cfg, state, model = run.cfg, run.state, run.model
    model.train()
    n_train = cfg.n_train or len(train_set)
    sums = state.sums
    t0 = time.perf_counter() - sums["seconds"]
    failures = DecodeFailures(train_set, run.n_batches * (cfg.batch_size // distributed.world_size()))
    failures.count = sums["decode_failures"]
    kl = (n_train, cfg.kl_k, cfg.kl_form, cfg.kl_price) if phase == "gated" else None  # the epoch's KL settings
    for step, batch in enumerate(epoch_loader(train_set, cfg, epoch, state.step), start=state.step):
        x, y, failed = split_failures(batch)
        failures.add(failed)
        x, y = normalize(x, run.device, channels_last=cfg.channels_last), y.to(run.device, non_blocking=True)
        uniform = phase == "gated" and uniform_step(cfg, epoch, step)
        if uniform:
            model.set_uniform_states(True)
        # a uniform step keeps the KL term in the graph at weight 0, as DDP needs every parameter to take part
        out = train_step(run.net, model, run.optimizer, x, y, autocast=run.autocast, kl=kl,
                         kl_scale=0.0 if uniform else kl_factor(cfg, epoch),
                         where=f"epoch {epoch + 1}, step {step + 1}", ckpt_path=run.ckpt_path,
                         check_unused=run.check_unused)
        if uniform:
            model.set_uniform_states(False)
        run.check_unused = False
        _add_step(sums, out, y.numel())
        sums["decode_failures"] = failures.count
        sums["seconds"] = time.perf_counter() - t0
        state.step, state.optimizer_steps = step + 1, state.optimizer_steps + 1
        stopping, due = distributed.any_true(stop.signal is not None, run.clock.due())
        if (stopping or due) and state.step < run.n_batches:
            _save(run, epoch_done=False)
            if stopping:
                _stopped(stop.signal, run.ckpt_path, epoch, state.step)
    return t0


def _add_step(sums: dict, out: dict, b: int) -> None:
    """Add a step's means over its ``b`` samples (:func:`train_step`) to the epoch's sums."""
    for k in ("loss", "ce", "kl"):
        sums[k] += out[k] * b
    sums["correct"] += out["correct"]
    sums["n"] += b


def _end_epoch(run: Run, epoch: int, phase: str, t0: float, evaluate: Callable | None) -> dict:
    """After the last step of ``epoch``: the schedule's step, the epoch's history row (the sums over every rank,
    then ``evaluate``'s columns), the drop rates and gate statistics of a gated network, a log line."""
    cfg, state, model = run.cfg, run.state, run.model
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    total = distributed.sum_over_ranks(
        {k: state.sums[k] for k in ("loss", "ce", "kl", "correct", "n", "decode_failures")})
    n = max(total["n"], 1)
    row = {
        "epoch": epoch + 1, "phase": phase, "lr": lr, "loss": total["loss"] / n, "ce": total["ce"] / n,
        "kl": total["kl"] / n, "train_top1": total["correct"] / n, "steps": state.optimizer_steps,
        "decode_failures": int(total["decode_failures"]), "seconds": time.perf_counter() - t0,
    }
    if evaluate is not None:
        row.update(evaluate(model, epoch + 1))
    state.history.append(row)
    if run.gated:
        p = model.drop_rates()
        for li, stage in enumerate(model.stage_of_layer):
            state.rates.append({"epoch": epoch + 1, "layer": li, "stage": stage, "p_S": p[li, 0], "p_ST": p[li, 1]})
        state.stats += gate_rows(model, epoch + 1, cfg.kl_price)
    if distributed.is_main():
        log.info("epoch %d/%d %s loss %.4f ce %.4f kl %.4f acc %.3f lr %.4g decode failures %d (%.1fs)",
                 epoch + 1, cfg.total_epochs, phase, row["loss"], row["ce"], row["kl"], row["train_top1"], lr,
                 row["decode_failures"], row["seconds"])
    return row


def _save(run: Run, epoch_done: bool) -> None:
    """Checkpoint (and, at an epoch's end, the tables), written by rank 0 once every rank finished the step."""
    state = run.state
    ranks = distributed.gather({"rng": rng_state(), "sums": dict(state.sums)})
    failed = None
    if distributed.is_main():
        try:
            _write_checkpoint(run.ckpt_path, run.model, run.optimizer, run.scheduler, run.cfg, state, ranks)
            if epoch_done:
                guarded_write(run.ckpt_path,
                              lambda: _write_tables(run.out_dir, state.history, state.rates, state.stats))
        except StfusionError as exc:
            failed = exc
    if distributed.any_true(failed is not None)[0]:
        raise failed or StfusionError(f"rank 0 could not write the checkpoint {run.ckpt_path}; see its log")
    run.clock.reset()


def train_step(net, model: FusionNetwork, optimizer, x: torch.Tensor, y: torch.Tensor, *, autocast, kl,
               where: str, ckpt_path: Path, check_unused: bool, kl_scale: float = 1.0) -> dict:
    """One optimizer step on the batch ``x`` ``(B, 3, T, H, W)``, ``y`` ``(B,)``: loss ``CE`` (+ ``kl_scale`` times
    the KL term when ``kl = (n_train, k, form, price)``). Returns the batch's mean ``loss``, ``ce``, ``kl`` (as
    added to the loss) and its ``correct`` count."""
    with autocast:
        logits = net(x).float()
    ce = F.cross_entropy(logits, y)
    kl_term = model.kl(*kl) * kl_scale if kl is not None else torch.zeros((), device=logits.device)
    loss = ce + kl_term
    if not torch.isfinite(loss):
        raise StfusionError(
            f"training stopped: loss is {loss.item()} at {where}; "
            f"the last good checkpoint is kept at {ckpt_path} (try a lower learning rate)"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if check_unused:
        # per-sample relaxed masks keep every path in the graph, so DDP never meets an unused parameter
        unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        if unused:
            raise RuntimeError(f"parameters without gradient under DDP: {unused[:3]}")
    optimizer.step()
    return {"loss": loss.item(), "ce": ce.item(), "kl": kl_term.item(),
            "correct": int((logits.argmax(1) == y).sum())}


def _stopped(signum: int, ckpt_path: Path, epoch: int, step: int):
    """After the checkpoint of a stop request: leave a marker for elastic restarts of this launch, then raise."""
    run = distributed.elastic_run_id()
    if run and distributed.is_main():
        write_text(ckpt_path.with_name("stopped"), run)
    raise ResumableStop(f"stopped by {signal.Signals(signum).name} at epoch {epoch + 1}, step {step}; checkpoint "
                        f"{ckpt_path} written; run the same command again to resume")


def _initial_state(ckpt_path: Path, model, optimizer, scheduler, cfg: TrainConfig, on_stale: str) -> TrainState:
    """Where the run starts: from ``last.pt`` when it was written for this architecture and these settings
    (:func:`_resume`), else, by ``on_stale``, an error or a fresh start (rank 0 deletes the stale file once every
    rank has read it). The one place that decides what a stale ``last.pt`` means."""
    if not ckpt_path.exists():
        return TrainState()
    run, marker = distributed.elastic_run_id(), ckpt_path.with_name("stopped")
    if run and marker.exists() and marker.read_text() == run:
        # torchrun restarts workers that stopped for a signal: this launch is ending, do not train on
        raise ResumableStop(f"this launch was stopped by a signal; checkpoint {ckpt_path} waits for the next one")
    try:
        ckpt = load_checkpoint(ckpt_path, arch=model.arch)
        written = {k: v for k, v in (ckpt.get("config") or {}).items() if k not in RUN_ONLY_FIELDS}
        if written != cfg.settings():
            raise StfusionError(f"{ckpt_path} was written with different training settings")
    except StfusionError as exc:  # damaged, another architecture or other settings
        if on_stale == "refuse":
            raise StfusionError(f"{exc}; delete {ckpt_path.parent} to start over") from None
        log.warning("%s; starting the training over", exc)
        distributed.barrier()
        if distributed.is_main():
            ckpt_path.unlink(missing_ok=True)
        return TrainState()
    return _resume(ckpt, ckpt_path, model, optimizer, scheduler, cfg)


def _resume(ckpt: dict, ckpt_path: Path, model, optimizer, scheduler, cfg: TrainConfig) -> TrainState:
    """Load the checkpoint ``ckpt`` (of ``ckpt_path``) into the model, optimizer, scheduler and this rank's RNG;
    the :class:`TrainState` in it."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    ranks = ckpt.get("ranks") or [{"rng": ckpt["rng"], "sums": new_sums()}]
    if len(ranks) == distributed.world_size():
        mine = ranks[distributed.rank()]
        set_rng_state(mine["rng"])
    else:
        mine = ranks[0] if distributed.is_main() else {"sums": new_sums()}
        log.warning("%s was written by %d processes, this run has %d: the random streams restart (the run is "
                    "not bit-identical to an uninterrupted one)", ckpt_path, len(ranks), distributed.world_size())
    step = ckpt.get("step", 0)
    state = TrainState(epoch=ckpt["epoch"], step=step, optimizer_steps=ckpt.get("optimizer_steps", 0),
                       sums={**new_sums(), **mine["sums"]} if step else new_sums(),
                       history=ckpt["history"], rates=ckpt["drop_rates"], stats=ckpt.get("gate_stats", []))
    log.info("resuming %s from epoch %d of %d, step %d", ckpt_path.parent, state.epoch + 1, cfg.total_epochs,
             state.step)
    return state


def _write_checkpoint(path: Path, model, optimizer, scheduler, cfg: TrainConfig, state: TrainState,
                      ranks: list[dict]) -> None:
    guarded_write(path, lambda: save_torch(
        {
            "arch": model.arch, "config": asdict(cfg), "epoch": state.epoch, "step": state.step,
            "optimizer_steps": state.optimizer_steps, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": ranks[0]["rng"],
            "ranks": ranks, "history": state.history, "drop_rates": state.rates,
            "gate_stats": state.stats,
        },
        path,
    ))


def _wrap_ddp(model: FusionNetwork, device: torch.device) -> torch.nn.Module:
    """The module to call in the loop: ``model`` itself, or a DDP wrapper over its trainable parameters."""
    if distributed.world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _write_tables(out_dir: Path, history: list[dict], rates: list[dict], stats: list[dict]) -> None:
    hist = pd.DataFrame(history).drop(columns=["seconds"], errors="ignore")
    write_csv(hist, in_folder(LAYOUT.history, out_dir))
    if rates:
        write_csv(pd.DataFrame(rates), in_folder(LAYOUT.drop_rates, out_dir))
    if stats:
        write_csv(pd.DataFrame(stats), in_folder(LAYOUT.gate_stats, out_dir))


def supernet_config(settings: Settings, n_train: int | None = None) -> TrainConfig:
    """The supernet's :class:`TrainConfig` from the ``supernet``, ``gate``, ``solver`` and ``compute`` settings
    (``gate.n_train`` null: ``n_train``)."""
    s, g = settings.supernet, settings.gate
    return TrainConfig(
        epochs=s.epochs, warmup_epochs=s.warmup_epochs, batch_size=s.batch_size, lr=s.lr,
        weight_decay=s.weight_decay, seed=settings.seed, kl_k=g.kl_k, kl_form=g.kl_form, kl_price=g.kl_price,
        kl_warmin_epochs=g.kl_warmin_epochs, gate_lr_scale=g.lr_scale, uniform_share=s.uniform_share,
        n_train=g.n_train or n_train, **solver_settings(settings.solver), **compute_settings(settings.compute),
    )


def solver_settings(solver: Solver) -> dict:
    """The :class:`TrainConfig` fields of the ``solver`` settings (every training stage's optimiser)."""
    return {"momentum": solver.momentum, "schedule": solver.schedule, "milestones": solver.milestones}


def compute_settings(compute: Compute) -> dict:
    """The :class:`TrainConfig` fields of the ``compute`` settings: where and how every network trains (one
    source for the supernet, the finetuned and the stand-alone networks)."""
    return {"device": compute.device, "precision": compute.precision, "channels_last": compute.channels_last,
            "loader_workers": compute.loader_workers, "checkpoint_minutes": compute.checkpoint_minutes}


def plain_config(settings: Settings, budget: Budget, seed_offset: int = 0) -> TrainConfig:
    """A plain (gate-free) :class:`TrainConfig`: the ``budget`` (``settings.finetune`` or
    ``settings.standalone``) with the ``solver`` and ``compute`` settings, seeded ``seed + seed_offset``."""
    return TrainConfig(
        epochs=budget.epochs, batch_size=budget.batch_size, lr=budget.lr, weight_decay=budget.weight_decay,
        seed=settings.seed + seed_offset, **solver_settings(settings.solver), **compute_settings(settings.compute),
    )
