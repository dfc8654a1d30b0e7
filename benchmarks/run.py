"""Run every stfusion benchmark and print one line per goal:

    <name>: ratio <value> (goal <= <value>)     or     <name>: ratio <value> (goal >= <value>)
    <name>: skipped (<reason>)                  where a benchmark cannot run here

Details (times, sizes, data source) go to stderr, so stdout holds only the goal lines.

    python benchmarks/run.py            # all benchmarks, a few minutes on 2 CPU cores
    python benchmarks/run.py --quick    # smoke run (tiny sizes, few repeats), well under a minute
    python benchmarks/run.py --device cuda [--large]   # goals 1-3 on a GPU (--large: a GPU-sized template)
    python benchmarks/run.py --only supernet_overhead   # one named benchmark (repeat --only for several)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# OpenMP threads that spin while waiting steal the cores from the working thread when other processes share the
# machine: on 2 busy cores the supernet step ran 2-10x slower with the default policy. Set before torch loads
# OpenMP; an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_supply import GOAL_WORKERS, presets  # noqa: E402

GOALS = {  # name: (comparison, goal)
    "supernet_overhead": ("<=", 1.05),  # and the upper quartile <= 1.10 (stderr)
    "hard_gate_subnet": ("<=", 1.05),
    "prefix_scoring": ("<=", 0.33),
    "prefix_scoring_flops": ("<=", 0.33),
    "racing_time": ("<=", 0.35),
    "racing_flops": ("<=", 0.25),
    "data_loader": (">=", 5.0),
    "gpu_bf16_autocast": ("<=", 1.00),
    "gpu_channels_last_3d": ("<=", 1.00),
    "gpu_bf16_channels_last_3d": ("<=", 1.00),
    "gpu_pinned_memory": ("<=", 1.00),
    "prepared_bytes": ("<=", 1.0),
    "prepare_peak_memory": ("<=", 1.15),
    "video_loader_16x112": (">=", 15.0),
    "video_loader_32x224": (">=", 4.0),
    "train_epoch_memory_4x": ("<=", 1.15),
    **{f"supply_{name}": ("<=", GOAL_WORKERS) for name in presets()},  # loader workers one GPU needs
}


def line(name: str, value: float) -> str:
    op, goal = GOALS[name]
    return f"{name}: ratio {value:.3f} (goal {op} {goal:.2f})"


def emit(text: str) -> None:
    print(text, flush=True)


def note(text: str) -> None:
    print(f"  [{text}]", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes and few repeats (1 thread)")
    ap.add_argument("--cpu-settings", action="store_true",
                    help="also time CPU settings of the supernet step (threads, channels_last_3d, oneDNN, "
                         "OMP_WAIT_POLICY); reported on stderr, no goals")
    ap.add_argument("--device", default="cpu",
                    help="where goals 1-3 run: cpu (default) or cuda (the GPU lines then come as well)")
    ap.add_argument("--large", action="store_true",
                    help="a GPU-sized template instead of the small preset: widths 64/128/256, 16 frames at 112 px, "
                         "batch 32")
    ap.add_argument("--channels-last", action="store_true",
                    help="goal 1 (supernet overhead) with model and input in channels_last_3d")
    ap.add_argument("--compile", action="store_true",
                    help="goal 1 (supernet overhead) with both forwards through torch.compile")
    ap.add_argument("--only", action="append", choices=sorted(GOALS), metavar="NAME",
                    help="run only the benchmark printing this goal line (repeatable; default: all)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's own, i.e. the cores; 1 with --quick)")
    return ap.parse_args(argv)


class Run:
    """One run's settings: the parsed arguments, the benchmark parameters, which goal lines are wanted."""

    def __init__(self, args: argparse.Namespace, params: dict):
        self.args, self.params, self.quick, self.device = args, params, args.quick, args.device

    def want(self, *names: str) -> bool:
        return not self.args.only or any(name in self.args.only for name in names)

    def emit_wanted(self, name: str, value: float) -> None:
        if self.want(name):
            emit(line(name, value))


def bench_params(args: argparse.Namespace) -> dict:
    """The default parameters, shrunk for ``--quick`` or enlarged for ``--large``."""
    import bench_model

    params = bench_model.load_params()
    if args.quick:
        params["model"].update(widths=[8, 16], layers_per_stage=[1, 1], stem_width=8)
        params["data"].update(frames=4, size=16)
    if args.large:
        params["model"].update(widths=[64, 128, 256], stem_width=32)
        params["data"].update(frames=16, size=112)
        params["supernet"]["batch_size"] = 32
    return params


def model_goals(run: Run) -> dict | None:
    """(1) supernet training-step overhead, (2) hard-gate mode vs the exported subnet; returns the supernet step's
    figures (the loader's goal is relative to its consumption) when measured."""
    import bench_model

    res = None
    if run.want("supernet_overhead", "data_loader"):
        res = bench_model.supernet_overhead(run.params, repeats=3 if run.quick else 80, device=run.device,
                                            channels_last=run.args.channels_last, compile=run.args.compile)
        run.emit_wanted("supernet_overhead", res["ratio"])
        note(f"supernet step {res['candidate_s'] * 1e3:.1f} ms vs plain {res['baseline_s'] * 1e3:.1f} ms "
             f"(batch {res['batch']}, median of {res['repeats']} interleaved pairs, quartiles {res['ratio_q1']:.3f}-"
             f"{res['ratio_q3']:.3f} (goal <= 1.10); CPU-time ratio {res['cpu_ratio']:.3f})")
    if run.want("hard_gate_subnet"):
        hard = bench_model.hard_gate_subnet(run.params, repeats=3 if run.quick else 30, device=run.device)
        emit(line("hard_gate_subnet", hard["ratio"]))
        note(f"hard-gate {hard['candidate_s'] * 1e3:.1f} ms vs exported {hard['baseline_s'] * 1e3:.1f} ms, "
             f"strategy {hard['strategy']}")
    return res


def scoring_goals(run: Run, cache) -> None:
    """(3) prefix-shared vs naive scoring (equal scores and identical ranking asserted inside); (3b) racing +
    prefix sharing vs naive full scoring, 256 strategies, >= 1,000 validation clips."""
    import bench_scoring

    if run.want("prefix_scoring", "prefix_scoring_flops"):
        res = bench_scoring.prefix_scoring(run.quick, cache, device=run.device, params=run.params)
        emit(line("prefix_scoring", res["ratio"]))
        emit(line("prefix_scoring_flops", res["flops_ratio"]))
        note(f"prefix {res['prefix_s']:.1f} s vs naive {res['naive_s']:.1f} s; MACs {res['macs_prefix']:.3g} vs "
             f"{res['macs_naive']:.3g}; {res['strategies']} strategies ({res['distinct']} distinct, {res['nodes']} "
             f"tree nodes), posterior entropy {res['entropy_nats']:.2f} nats; {res['val_clips']} val + "
             f"{res['calib_clips']} calibration clips; trained {res['train_s']:.0f} s on {res['source']}; "
             f"max |diff| {res['max_abs_diff']:.1e}, rankings "
             f"{'identical' if res['same_ranking'] else 'differ (GPU kernels)'}")
    if run.want("racing_time", "racing_flops"):
        res = bench_scoring.racing(run.quick, device=run.device)
        emit(line("racing_time", res["ratio"]))
        emit(line("racing_flops", res["flops_ratio"]))
        note(f"racing {res['race_s']:.1f} s vs naive {res['naive_s']:.1f} s (extrapolated from {res['naive_sample']} "
             f"strategies scored naively in {res['naive_sample_s']:.1f} s); MACs {res['macs_race']:.3g} vs naive "
             f"{res['macs_naive']:.3g} (prefix sharing alone, one pass: {res['macs_prefix_full']:.3g} in "
             f"{res['prefix_full_s']:.1f} s); "
             f"{res['strategies']} strategies ({res['distinct']} distinct, posterior entropy "
             f"{res['entropy_nats']:.2f} nats), {res['full']} distinct scored in full on {res['val_clips']} validation clips; "
             f"rounds {[(r['clips'], r['scored'], r['dropped']) for r in res['rounds']]} (clips, scored, dropped); "
             f"same best: {res['same_best']}, same top-5 set: {res['same_top5']} (naive {res['top5_naive']}, racing "
             f"{res['top5_race']}); data {res['data_s']:.0f} s, training {res['train_s']:.0f} s")


def loader_goal(run: Run, cache, supernet: dict) -> None:
    """(4) the data loader's clips/s over the supernet's consumption."""
    from bench_data import bench_loader

    if run.want("data_loader"):
        rate = bench_loader(cache, frames=run.params["data"]["frames"], batch_size=supernet["batch"],
                            epochs=2 if run.quick else 10)
        emit(line("data_loader", rate / supernet["supernet_clips_per_s"]))
        note(f"loader {rate:.0f} clips/s vs supernet training {supernet['supernet_clips_per_s']:.0f} clips/s")


def cache_goals(run: Run, supernet: dict | None) -> None:
    """Goals (3)-(4), on a small built-in benchmark cache made for them."""
    import bench_scoring

    if not run.want("prefix_scoring", "prefix_scoring_flops", "data_loader", "racing_time", "racing_flops"):
        return
    with tempfile.TemporaryDirectory(prefix="stfusion-bench-") as tmp:
        cache = None
        if run.want("prefix_scoring", "prefix_scoring_flops", "data_loader"):
            cache, why = bench_scoring.builtin_cache(tmp, clips_per_class=4 if run.quick else 16,
                                                     size=run.params["data"]["size"],
                                                     frames=run.params["data"]["frames"])
            note(why)
        scoring_goals(run, cache)
        loader_goal(run, cache, supernet)


def video_goals(run: Run) -> None:
    """(5) videos storage: loader clips/s per worker process, training-epoch memory over 4x the videos; (5b)
    supply and demand of clips per paper preset."""
    import bench_supply
    import bench_videos

    for name, value in bench_videos.run(run.quick, note=note, names=set(run.args.only or GOALS)).items():
        emit(line(name, value))
    wanted = [name for name in presets() if run.want(f"supply_{name}")]
    for name, value in (bench_supply.run(run.quick, run.device, wanted, note=note) if wanted else {}).items():
        emit(line(name, value))


def gpu_goals(run: Run) -> None:
    """(6) GPU paths: bf16 autocast, channels_last_3d, both, pinned memory."""
    import bench_model
    import torch

    if not run.want(*(name for name in GOALS if name.startswith("gpu_"))):
        return
    if not torch.cuda.is_available():
        emit("gpu: skipped (CUDA not available)")
        return
    res = bench_model.gpu_paths(run.params, repeats=5 if run.quick else 30)
    for key in ("bf16_autocast", "channels_last_3d", "bf16_channels_last_3d", "pinned_memory"):
        value = res[key]
        if isinstance(value, Exception):
            emit(f"gpu_{key}: skipped (failed: {type(value).__name__})")
            note(f"gpu_{key}: {value}")
        else:
            emit(line(f"gpu_{key}", value))
    note(f"GPU: {res['device']}")


def prepare_goals(run: Run) -> None:
    """(7) videos storage: seeking in prepared files (information), their size, the memory of preparing them."""
    import bench_prepare

    seek = set() if run.args.only else {"prepared_seek_speedup"}  # information only, so in full runs only
    prep = bench_prepare.run(run.quick, names=set(run.args.only or GOALS) | seek)
    for name in ("prepared_bytes", "prepare_peak_memory"):
        if name in prep:
            emit(line(name, prep[name]["ratio"]))
    if "prepared_seek_speedup" in prep:  # information, no goal: what remains is decord's fixed cost a call
        res = prep["prepared_seek_speedup"]
        note(f"prepared_seek_speedup (no goal): {res['ratio']:.2f}; random 16-frame clip at 128p: "
             f"{res['long_s'] * 1e3:.1f} ms with key frames every 250, {res['prepared_s'] * 1e3:.1f} ms prepared "
             f"({res['clips']} clips)")
    if "prepared_bytes" in prep:
        res = prep["prepared_bytes"]
        note(f"GB per hour of video: sources 480x360 {res['source_gb_per_hour']:.3f}, prepared short side 256 "
             f"{res['prepared_gb_per_hour']:.3f}, short side 128 {res['prepared_128_gb_per_hour']:.3f}")
    if "prepare_peak_memory" in prep:
        res = prep["prepare_peak_memory"]
        note(f"preparing {res['videos']} videos adds {res['added_1x_mb']:.1f} MiB (peak {res['peak_1x_mb']:.0f} MiB), "
             f"4x adds {res['added_4x_mb']:.1f} MiB (peak {res['peak_4x_mb']:.0f} MiB); VmHWM of a fresh process each")


def cpu_settings_report(run: Run) -> None:
    """``--cpu-settings``: the supernet step under other CPU settings, on stderr (no goals)."""
    import bench_model

    res = bench_model.cpu_settings(run.params, repeats=3 if run.quick else 8)
    note("CPU settings, supernet step time over the default ({threads} threads, oneDNN on, contiguous): "
         "1 thread x{threads_1:.3f}, channels_last_3d x{channels_last_3d:.3f}, oneDNN off x{mkldnn_off:.3f}"
         .format(**{"threads_1": float("nan"), **res}))
    res = bench_model.omp_wait_policy(rounds=1 if run.quick else 3, steps=3 if run.quick else 8)
    note(f"OMP_WAIT_POLICY=PASSIVE over the OpenMP default: x{res['ratio']:.3f} "
         f"({res['passive_s'] * 1e3:.0f} ms vs {res['default_s'] * 1e3:.0f} ms per supernet step)")


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    import torch

    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    note(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
         f"{os.environ.get('OMP_WAIT_POLICY')}, quick={args.quick}")
    run = Run(args, bench_params(args))
    note(f"goals 1-3 on {run.device}" + (f" ({torch.cuda.get_device_name(0)})" if run.device == "cuda" else ""))
    supernet = model_goals(run)
    cache_goals(run, supernet)
    video_goals(run)
    gpu_goals(run)
    prepare_goals(run)
    if args.cpu_settings:
        cpu_settings_report(run)
    note(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
