"""Model-side benchmarks: supernet training-step overhead, hard-gate forward vs exported subnet, GPU paths.

Every comparison runs the baseline and the candidate in the same process, interleaved step by step, and reports
the median of the per-pair time ratios (robust to the slow load drift of a shared machine).
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from stfusion.config.settings import Settings
from stfusion.models import build_model
from stfusion.core.strategies import Strategy, families

REPO = Path(__file__).resolve().parents[1]

NUM_CLASSES = 14


def load_params() -> dict:
    """The packaged parameters (the small preset, ``params.yaml``) with the plain backbone; an unreadable or invalid
    file fails the benchmark (no stand-in copy)."""
    from stfusion.config.loading import load_params as load

    params = load(REPO / "params.yaml")
    params["model"]["backbone"] = "plain"
    return params


def paired_ratio(candidate: Callable[[], object], baseline: Callable[[], object], repeats: int,
                 warmup: int = 2) -> dict:
    """Time ``candidate`` and ``baseline`` alternately (which goes first alternates too).

    ``ratio`` is the median of the per-pair ratios of wall-clock time (robust to the slow load drift of a shared
    machine), ``ratio_q1`` / ``ratio_q3`` their quartiles, ``cpu_ratio`` the median for process CPU time (all
    threads); ``candidate_s`` / ``baseline_s`` are median wall times."""
    for _ in range(warmup):
        baseline()
        candidate()
    wall = {candidate: [], baseline: []}
    cpu = {candidate: [], baseline: []}
    for r in range(repeats):
        for fn in ((candidate, baseline) if r % 2 else (baseline, candidate)):
            c, t = time.process_time(), time.perf_counter()
            fn()
            wall[fn].append(time.perf_counter() - t)
            cpu[fn].append(time.process_time() - c)

    def ratios(d):
        return [a / b for a, b in zip(d[candidate], d[baseline])]

    q1, _, q3 = statistics.quantiles(ratios(wall), n=4) if repeats > 1 else (float("nan"),) * 3
    return {"ratio": statistics.median(ratios(wall)), "cpu_ratio": statistics.median(ratios(cpu)),
            "ratio_q1": q1, "ratio_q3": q3, "candidate_s": statistics.median(wall[candidate]),
            "baseline_s": statistics.median(wall[baseline]), "repeats": repeats}


def _clip_batch(params: dict, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d = params["data"]
    x = torch.randn(batch, 3, d["frames"], d["size"], d["size"], generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    return x, y


def _synced(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """``fn`` followed by a CUDA synchronisation on a GPU (so wall time covers the queued kernels)."""
    if device.type != "cuda":
        return fn

    def run():
        fn()
        torch.cuda.synchronize(device)

    return run


def _train_step(forward, optimizer, x, y, kl: dict | None, model=None) -> Callable[[], None]:
    """One SGD step through ``forward`` (the model, or a compiled wrapper of ``model``)."""
    model = model if model is not None else forward

    def step():
        logits = forward(x)
        loss = F.cross_entropy(logits, y)
        if kl is not None:
            loss = loss + model.kl(kl["n_train"], kl["k"], kl["form"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def supernet_step(params: dict, x: torch.Tensor, y: torch.Tensor, *, gated: bool = True,
                  channels_last: bool = False, bf16: bool = False, compile: bool = False) -> Callable[[], None]:
    """One training step of a freshly seeded template on the batch ``(x, y)``, on ``x``'s device: gated (all
    gates stochastic, CE + KL) or gate-free (both paths on, CE only); in ``channels_last_3d`` and/or under bf16
    autocast; with ``compile``, the forward through :func:`torch.compile` (fewer kernel launches for the
    gated layers' small element-wise ops); synchronised on a GPU."""
    dev = x.device
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    g = params["gate"]
    kl = {"n_train": 1000, "k": float(g["kl_k"]), "form": g["kl_form"]} if gated else None
    torch.manual_seed(params["seed"])
    model = build_model(Settings.for_stage(params), NUM_CLASSES).to(dev, memory_format=layout)
    model.set_gates_active(gated)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    forward = torch.compile(model) if compile else model
    step = _train_step(forward, opt, x.contiguous(memory_format=layout), y, kl, model)

    def run():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            step()

    return _synced(run, dev)


def supernet_overhead(params: dict | None = None, *, repeats: int = 20, batch: int | None = None,
                      device: str = "cpu", channels_last: bool = False, compile: bool = False) -> dict:
    """Training step (forward, CE + KL, backward, SGD) of the supernet, all gates stochastic (template mode,
    gated), over the same template with both paths always on and no gates (``set_gates_active(False)``,
    CE only): same widths, same input, on ``device`` (in channels_last_3d with ``channels_last``)."""
    params = params or load_params()
    dev = torch.device(device)
    batch = batch or int(params["supernet"]["batch_size"])
    x, y = (t.to(dev) for t in _clip_batch(params, batch))
    steps = {name: supernet_step(params, x, y, gated=gated, channels_last=channels_last, compile=compile)
             for name, gated in (("supernet", True), ("plain", False))}
    res = paired_ratio(steps["supernet"], steps["plain"], repeats)
    res["batch"] = batch
    res["supernet_clips_per_s"] = batch / res["candidate_s"]
    return res


def benchmark_strategy(n_layers: int, stage_of_layer) -> Strategy:
    """A mixed strategy for the hard-gate benchmark: S+ST / S alternating (every state but ST-only appears in
    it; the ST-in-one-stage family adds ST where the network has stages)."""
    fam = families(n_layers, stage_of_layer)
    states = list(fam["alternating-S+ST/S"].states)
    st_stage = fam.get("ST-in-stage2/S+ST-elsewhere")
    if st_stage is not None:  # put ST where that family has it, so all three states are timed
        states = [2 if s == 2 else a for s, a in zip(st_stage.states, states)]
    return Strategy(tuple(states))


def hard_gate_subnet(params: dict | None = None, *, repeats: int = 20, batch: int | None = None,
                     device: str = "cpu") -> dict:
    """Eval forward of the template in hard-gate mode for a strategy over ``model.export(strategy)``, on
    ``device``."""
    params = params or load_params()
    dev = torch.device(device)
    batch = batch or int(params["supernet"]["batch_size"])
    x = _clip_batch(params, batch, seed=1)[0].to(dev)
    torch.manual_seed(params["seed"])
    model = build_model(Settings.for_stage(params), NUM_CLASSES).to(dev)
    strategy = benchmark_strategy(model.n_fusion_layers, model.stage_of_layer)
    exported = model.export(strategy).eval()
    model.set_strategy(strategy)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), exported(x)), "hard-gate mode and the exported network disagree"

    def run(m):
        def fwd():
            with torch.no_grad():
                m(x)

        return _synced(fwd, dev)

    res = paired_ratio(run(model), run(exported), repeats)
    res["strategy"] = strategy.text
    return res


def cpu_settings(params: dict | None = None, *, repeats: int = 8) -> dict:
    """Supernet training step under other CPU settings, each over the default (threads, channels_last_3d,
    oneDNN off); a report for RESULTS.md, not a goal."""
    params = params or load_params()
    batch = int(params["supernet"]["batch_size"])
    x, y = _clip_batch(params, batch)
    threads = torch.get_num_threads()

    def make(channels_last=False):
        return supernet_step(params, x, y, channels_last=channels_last)

    base_step = make()

    def base():
        torch.set_num_threads(threads)
        base_step()

    out = {"threads": threads, "mkldnn": torch.backends.mkldnn.is_available()}
    one = threads > 1

    def single():
        torch.set_num_threads(1)
        base_step()
        torch.set_num_threads(threads)

    if one:
        out["threads_1"] = paired_ratio(single, base, repeats)["ratio"]
    cl_step = make(channels_last=True)
    out["channels_last_3d"] = paired_ratio(cl_step, base, repeats)["ratio"]

    def no_mkldnn():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a TF32 note about Intel GPUs
            with torch.backends.mkldnn.flags(enabled=False):
                base_step()

    out["mkldnn_off"] = paired_ratio(no_mkldnn, base, max(2, repeats // 4), warmup=1)["ratio"]
    return out


def gpu_paths(params: dict | None = None, *, repeats: int = 20) -> dict | None:
    """On CUDA: supernet training step with bf16 autocast over fp32, channels_last_3d over the default layout,
    both together over neither, and a host-to-device batch copy from pinned memory over pageable memory.
    ``None`` without CUDA; a path that fails holds its exception instead of a ratio."""
    if not torch.cuda.is_available():
        return None
    params = params or load_params()
    dev = torch.device("cuda")
    batch = int(params["supernet"]["batch_size"])
    x, y = _clip_batch(params, batch)
    x, y = x.to(dev), y.to(dev)

    def make(channels_last=False, bf16=False):
        return supernet_step(params, x, y, channels_last=channels_last, bf16=bf16)

    def copy_from(t):
        def run():
            t.to(dev, non_blocking=True)
            torch.cuda.synchronize()

        return run

    def pinned():
        host = torch.randn(64, 3, params["data"]["frames"], 112, 112)  # a larger batch, where the copy shows
        return paired_ratio(copy_from(host.pin_memory()), copy_from(host), repeats, warmup=3)["ratio"]

    out: dict = {"device": torch.cuda.get_device_name(0)}
    fp32 = make()
    checks = {
        "bf16_autocast": lambda: paired_ratio(make(bf16=True), fp32, repeats, warmup=3)["ratio"],
        "channels_last_3d": lambda: paired_ratio(make(channels_last=True), fp32, repeats, warmup=3)["ratio"],
        "bf16_channels_last_3d": lambda: paired_ratio(make(channels_last=True, bf16=True), fp32, repeats,
                                                      warmup=3)["ratio"],
        "pinned_memory": pinned,
    }
    for name, fn in checks.items():
        try:
            out[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one failing path must not hide the others
            out[name] = exc
    return out


_CHILD = """
import statistics, sys, time, torch
sys.path.insert(0, {here!r})
import bench_model
params = bench_model.load_params()
x, y = bench_model._clip_batch(params, int(params["supernet"]["batch_size"]))
torch.manual_seed(0)
model = bench_model.build_model(bench_model.Settings.for_stage(params), bench_model.NUM_CLASSES)
model.train()
opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
g = params["gate"]
step = bench_model._train_step(model, opt, x, y, {{"n_train": 1000, "k": float(g["kl_k"]),
                                                 "form": g["kl_form"]}})
for _ in range(2):
    step()
ts = []
for _ in range({steps}):
    t = time.perf_counter(); step(); ts.append(time.perf_counter() - t)
print(statistics.median(ts))
"""


def omp_wait_policy(rounds: int = 3, steps: int = 8) -> dict:
    """Supernet step time with ``OMP_WAIT_POLICY=PASSIVE`` over the OpenMP default (spinning waits), each in a
    fresh process (the policy is read once, when OpenMP starts), alternating ``rounds`` times."""
    import os
    import subprocess
    import sys

    code = _CHILD.format(here=str(Path(__file__).resolve().parent), steps=steps)
    times = {"default": [], "PASSIVE": []}
    for _ in range(rounds):
        for policy in times:
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            if policy != "default":
                env["OMP_WAIT_POLICY"] = policy
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            times[policy].append(float(out.stdout.strip().splitlines()[-1]))
    ratios = [p / d for p, d in zip(times["PASSIVE"], times["default"])]
    return {"ratio": statistics.median(ratios), "passive_s": statistics.median(times["PASSIVE"]),
            "default_s": statistics.median(times["default"])}
