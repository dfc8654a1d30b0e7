"""``benchmarks/run.py --quick`` runs and prints exactly one well-formed line per goal (no timing assertions)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RATIO = re.compile(r"^(?P<name>[a-z0-9_]+): ratio (?P<value>\d+\.\d+) \(goal (?P<op><=|>=) (?P<goal>\d+\.\d+)\)$")
SKIPPED = re.compile(r"^(?P<name>[a-z0-9_]+): skipped \((?P<why>.+)\)$")
GOALS = {
    "supernet_overhead": ("<=", 1.10),
    "hard_gate_subnet": ("<=", 1.05),
    "prefix_scoring": ("<=", 0.33),
    "prefix_scoring_flops": ("<=", 0.33),
    "data_loader": (">=", 5.0),
}
GPU = {"gpu_bf16_autocast", "gpu_channels_last_3d", "gpu_pinned_memory"}


def test_quick_run_prints_one_line_per_goal():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines, proc.stderr[-3000:]
    ratios, skipped = {}, {}
    for line in lines:
        m = RATIO.match(line)
        if m:
            ratios[m["name"]] = m
            continue
        m = SKIPPED.match(line)
        assert m, f"malformed benchmark line: {line!r}"
        skipped[m["name"]] = m["why"]
    names = [RATIO.match(line)["name"] if RATIO.match(line) else SKIPPED.match(line)["name"] for line in lines]
    assert len(names) == len(set(names)), "a goal printed twice"
    for name, (op, goal) in GOALS.items():
        assert (name in ratios) != (name in skipped), name
        if name in ratios:
            assert ratios[name]["op"] == op and float(ratios[name]["goal"]) == goal
            assert float(ratios[name]["value"]) > 0
    for name in ("supernet_overhead", "hard_gate_subnet", "prefix_scoring", "prefix_scoring_flops"):
        assert name in ratios, f"{name} must always run"
    gpu = GPU & set(ratios)
    assert gpu == GPU or (not gpu and "gpu" in skipped)  # all three GPU lines, or the one skipped line
    assert set(names) <= set(GOALS) | GPU | {"gpu"}
