"""Training loops: the supernet (gate-free warm-up, then Variational DropPath with the KL term) and plain
networks (derived or stand-alone strategies). Both resume from the last atomic checkpoint.

Files in ``out_dir``:
  ``last.pt``          checkpoint after the last finished epoch (model, optimizer, scheduler, epoch, RNG, history)
  ``model.pt``         the final weights (written once training is complete)
  ``history.csv``      one row an epoch: phase, lr, loss, cross-entropy, KL, train accuracy, seconds
  ``drop_rates.csv``   one row per epoch, layer and path: the drop rate p (gated networks only)
  ``gate_stats.csv``   one row per epoch and gated path: p, ||W||^2, ||gamma||^2, price (:mod:`stfusion.gate_stats`)
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from . import distributed

from .checkpoint import load_checkpoint, rng_state, save_torch, set_rng_state, write_csv
from .errors import StfusionError
from .gate_stats import gate_rows
from .models.base import FusionNetwork

log = logging.getLogger(__name__)


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
    kl_price: str = "weight"  # what the KL term prices per path (stfusion.fusion.paths_price)
    kl_warmin_epochs: int = 0  # the KL term grows linearly over the first gated epochs (0: full from the start)
    gate_lr_scale: float = 1.0  # learning rate of the gate logits relative to the weights'
    n_train: int | None = None  # N of the KL term; None = len(train_set)
    sync_bn: bool = True  # SyncBatchNorm under multi-GPU DDP (CUDA only; ignored on CPU and single-process runs)
    precision: str = "fp32"  # fp32 | bf16 (autocast of the forward; weights, gate logits and the KL stay fp32)
    channels_last: bool = False  # model and batches in channels_last_3d (NDHWC) memory layout
    loader_workers: int = 0  # DataLoader worker processes (0: load in the training process)
    extra: dict = field(default_factory=dict)

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.epochs


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
        raise StfusionError("device 'cuda' was asked for but no CUDA GPU is available (set supernet.device: cpu)")
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


def kl_factor(cfg: TrainConfig, epoch: int) -> float:
    """Weight of the KL term in ``epoch`` (0-based over all epochs): it grows linearly over the first
    ``kl_warmin_epochs`` gated epochs, ``(t + 1) / (kl_warmin_epochs + 1)`` in gated epoch t, then stays 1."""
    t = epoch - cfg.warmup_epochs
    return min(1.0, (t + 1) / (cfg.kl_warmin_epochs + 1))


def epoch_loader(train_set: Dataset, cfg: TrainConfig, epoch: int) -> DataLoader:
    """The epoch's batches: a shuffle seeded by (seed, epoch), so a resumed run sees the same order.

    Single-process runs use the same :class:`DistributedSampler` with one replica, so a DDP run over W processes
    (each taking ``batch_size / W`` of every global batch) sees exactly the single-process global batches.
    """
    world = distributed.world_size()
    if cfg.batch_size % world:
        raise StfusionError(f"batch size {cfg.batch_size} is not divisible by the {world} DDP processes")
    sampler = DistributedSampler(
        train_set, num_replicas=world, rank=distributed.rank(), shuffle=True, seed=cfg.seed
    )
    sampler.set_epoch(epoch)
    local = cfg.batch_size // world
    pin = torch.cuda.is_available()
    return DataLoader(train_set, batch_size=local, sampler=sampler, drop_last=len(train_set) > cfg.batch_size,
                      pin_memory=pin, num_workers=cfg.loader_workers)


def fit(
    model: FusionNetwork,
    train_set: Dataset,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
) -> pd.DataFrame:
    """Train ``model`` on ``train_set`` (items ``((3, T, H, W) float, label)``), resuming from ``out_dir/last.pt``.

    With ``cfg.kl_k`` set, the model is a supernet: gate-free for ``warmup_epochs``, then gated with loss
    ``CE + KL`` (METHOD.md §4). Returns the history table.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and distributed.world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    main = distributed.is_main()
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise StfusionError(f"supernet.precision is bf16 but {torch.cuda.get_device_name(device)} has no bf16 "
                            "support (set supernet.precision: fp32)")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    gated = cfg.kl_k is not None
    n_train = cfg.n_train or len(train_set)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, EpochSchedule(cfg.warmup_epochs, cfg.epochs, cfg.schedule, tuple(cfg.milestones))
    )
    history: list[dict] = []
    rates: list[dict] = []
    stats: list[dict] = []
    start = 0
    torch.manual_seed(cfg.seed + distributed.rank())  # independent masks and augmentation per rank
    ckpt_path = out_dir / "last.pt"
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, arch=model.arch)
        if ckpt.get("config") != asdict(cfg):
            raise StfusionError(
                f"{ckpt_path} was written with different training settings; delete {out_dir} to start over"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        history, rates, start = ckpt["history"], ckpt["drop_rates"], ckpt["epoch"]
        stats = ckpt.get("gate_stats", [])
        log.info("resuming %s from epoch %d of %d", out_dir, start, cfg.total_epochs)

    if distributed.world_size() > 1 and cfg.sync_bn and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net, net_phase, check_unused = model, None, False
    bar = tqdm(range(start, cfg.total_epochs), desc=f"train {out_dir.name}", disable=not (progress and main),
               leave=False)
    for epoch in bar:
        phase = "warmup" if epoch < cfg.warmup_epochs else ("gated" if gated else "train")
        if gated:
            model.set_gates_active(phase == "gated")
        if phase != net_phase:
            # gate logits only train in the gated phase; DDP must know which parameters take part
            for p in model.gate_parameters():
                p.requires_grad_(phase == "gated")
            net, net_phase, check_unused = _wrap_ddp(model, device), phase, distributed.world_size() > 1
        model.train()
        sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "correct": 0, "n": 0}
        t0 = time.perf_counter()
        for step, (x, y) in enumerate(epoch_loader(train_set, cfg, epoch)):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            with autocast:
                logits = net(x).float()
            ce = F.cross_entropy(logits, y)
            kl = (model.kl(n_train, cfg.kl_k, cfg.kl_form, cfg.kl_price) * kl_factor(cfg, epoch)
                  if phase == "gated" else torch.zeros((), device=device))
            loss = ce + kl
            if not torch.isfinite(loss):
                raise StfusionError(
                    f"training stopped: loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                    f"the last good checkpoint is kept at {ckpt_path} (try a lower learning rate)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if check_unused:
                # per-sample relaxed masks keep every path in the graph, so DDP never meets an unused parameter
                unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
                if unused:
                    raise RuntimeError(f"parameters without gradient under DDP: {unused[:3]}")
                check_unused = False
            optimizer.step()
            b = y.numel()
            sums["loss"] += loss.item() * b
            sums["ce"] += ce.item() * b
            sums["kl"] += kl.item() * b
            sums["correct"] += int((logits.argmax(1) == y).sum())
            sums["n"] += b
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        n = max(sums["n"], 1)
        row = {
            "epoch": epoch + 1, "phase": phase, "lr": lr, "loss": sums["loss"] / n, "ce": sums["ce"] / n,
            "kl": sums["kl"] / n, "train_top1": sums["correct"] / n, "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        if gated:
            p = model.drop_rates()
            for li, stage in enumerate(model.stage_of_layer):
                rates.append({"epoch": epoch + 1, "layer": li, "stage": stage, "p_S": p[li, 0], "p_ST": p[li, 1]})
            stats += gate_rows(model, epoch + 1, cfg.kl_price)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['train_top1']:.2f}")
        if not main:
            continue
        log.info("epoch %d/%d %s loss %.4f ce %.4f kl %.4f acc %.3f lr %.4g (%.1fs)", epoch + 1,
                 cfg.total_epochs, phase, row["loss"], row["ce"], row["kl"], row["train_top1"], lr, row["seconds"])
        save_torch(
            {
                "arch": model.arch, "config": asdict(cfg), "epoch": epoch + 1, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
                "history": history, "drop_rates": rates, "gate_stats": stats,
            },
            ckpt_path,
        )
        _write_tables(out_dir, history, rates, stats)
    if main:
        _write_tables(out_dir, history, rates, stats)
        save_torch({"arch": model.arch, "model": model.state_dict(), "config": asdict(cfg)}, out_dir / "model.pt")
    distributed.barrier()
    return pd.DataFrame(history)


def _wrap_ddp(model: FusionNetwork, device: torch.device) -> torch.nn.Module:
    """The module to call in the loop: ``model`` itself, or a DDP wrapper over its trainable parameters."""
    if distributed.world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _write_tables(out_dir: Path, history: list[dict], rates: list[dict], stats: list[dict]) -> None:
    hist = pd.DataFrame(history).drop(columns=["seconds"], errors="ignore")
    write_csv(hist, out_dir / "history.csv")
    if rates:
        write_csv(pd.DataFrame(rates), out_dir / "drop_rates.csv")
    if stats:
        write_csv(pd.DataFrame(stats), out_dir / "gate_stats.csv")


def supernet_config(params: dict, n_train: int | None = None) -> TrainConfig:
    """The supernet's :class:`TrainConfig` from ``params`` (sections ``supernet`` and ``gate``)."""
    s, g = params["supernet"], params.get("gate", {})
    return TrainConfig(
        epochs=s["epochs"], warmup_epochs=s.get("warmup_epochs", 0), batch_size=s["batch_size"], lr=s["lr"],
        momentum=s.get("momentum", 0.9), weight_decay=s.get("weight_decay", 0.0),
        schedule=s.get("schedule", "cosine"), milestones=tuple(s.get("milestones", (0.45, 0.67, 0.9))),
        seed=params.get("seed", 0), kl_k=float(g.get("kl_k", 50.0)), kl_form=g.get("kl_form", "linear"),
        kl_price=g.get("kl_price", "weight"), kl_warmin_epochs=int(g.get("kl_warmin_epochs", 0)),
        gate_lr_scale=float(g.get("lr_scale", 1.0)),
        n_train=g.get("n_train") or n_train, **compute_settings(params),
    )


def compute_settings(params: dict) -> dict:
    """Where and how every network trains: ``supernet.device``, ``supernet.precision``,
    ``supernet.channels_last`` and ``supernet.loader_workers`` (one source for the supernet, the finetuned and
    the stand-alone networks)."""
    s = params["supernet"]
    return {"device": s.get("device", "auto"), "precision": s.get("precision", "fp32"),
            "channels_last": s.get("channels_last", False), "loader_workers": s.get("loader_workers", 0)}


def plain_config(params: dict, section: str, seed_offset: int = 0) -> TrainConfig:
    """A plain (gate-free) :class:`TrainConfig` from ``params[section]`` (``finetune`` or ``validate``)."""
    s = params[section]
    return TrainConfig(
        epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"], weight_decay=s.get("weight_decay", 0.0),
        momentum=params["supernet"].get("momentum", 0.9), schedule=params["supernet"].get("schedule", "cosine"),
        seed=params.get("seed", 0) + seed_offset, **compute_settings(params),
    )
