"""The command line: help texts, error handling (one line, exit status 2), overrides, logging, the per-stage
parameter lists."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from stfusion.cli import app as cli
from stfusion.config import layout
from stfusion.config.loading import load_params

from conftest import REPO

COMMANDS = [
    "generate", "prepare", "train-supernet", "sample-strategies", "score-strategies", "analyze", "derive",
    "finetune", "finetune-table", "select-standalone", "train-standalone", "validate-ranking", "report", "export",
    "init", "select-fidelity", "train-fidelity", "fidelity", "compare",
]


def run_main(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_command_has_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    top = capsys.readouterr().out
    for name in COMMANDS:
        assert name in top
        with pytest.raises(SystemExit) as exc:
            cli.main([name, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert "--params" in text and "--log" in text, name
        assert len(text.split("\n\n")[1]) > 60, f"{name} needs a description"


def test_console_script_and_module_entry_points():
    out = subprocess.run([sys.executable, "-m", "stfusion.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("stfusion ")


def test_invalid_parameter_is_one_line_exit_2(tmp_path, capsys):
    code, out, err = run_main(
        ["derive", "--params", str(REPO / "params.yaml"), "--set", "gate.temperature=-1"], capsys)
    assert code == 2
    lines = [l for l in err.splitlines() if l.startswith("stfusion: error:")]
    assert len(lines) == 1 and "gate.temperature" in lines[0]
    assert "Traceback" not in err


def test_missing_input_is_one_line_exit_2(tmp_path, capsys):
    log = tmp_path / "logs" / "derive.log"
    code, out, err = run_main(
        ["derive", "--params", str(REPO / "params.yaml"), "--preference", str(tmp_path / "nope.csv"),
         "--log", str(log)], capsys)
    assert code == 2
    assert "stfusion: error: preference table not found" in err
    assert "stfusion: error:" in log.read_text()


def test_unknown_params_file(tmp_path, capsys):
    code, _, err = run_main(["report", "--params", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "params file not found" in err


def test_params_default_from_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STFUSION_PARAMS", str(tmp_path / "other.yaml"))
    code, _, err = run_main(["report"], capsys)
    assert code == 2 and "other.yaml" in err


def test_parse_overrides():
    assert cli.parse_overrides(["a.b=1", "c=x", "d.e.f=[1, 2]", "g=null"]) == {
        "a": {"b": 1}, "c": "x", "d": {"e": {"f": [1, 2]}}, "g": None}
    from stfusion.errors import StfusionError

    with pytest.raises(StfusionError):
        cli.parse_overrides(["novalue"])


def test_stage_params_name_existing_keys():
    params = load_params(REPO / "params.yaml")
    schema = yaml.safe_load((REPO / "stfusion" / "config" / "schema" / "params.schema.yaml").read_text())
    for stage, keys in layout.STAGE_PARAMS.items():
        for key in keys:
            node = schema
            for part in key.split("."):
                props = node.get("properties") or {}
                if part not in props and "$ref" in node:
                    node = schema["$defs"][node["$ref"].split("/")[-1]]
                    props = node.get("properties") or {}
                assert part in props, f"{stage}: {key} is not a parameter"
                node = props[part]
                if "$ref" in node:
                    node = schema["$defs"][node["$ref"].split("/")[-1]]
        sub = layout.stage_params(params, stage)
        assert set(sub) <= set(params)


def test_stage_params_subset():
    params = {"seed": 1, "data": {"frames": 8, "size": 32, "builtin": {"frames": 12, "size": 64}}, "gate": {}}
    assert layout.subset(params, ["seed", "data.frames", "data.builtin.frames", "gate.kl_k"]) == {
        "seed": 1, "data": {"frames": 8, "builtin": {"frames": 12}}}


def test_threshold_and_keep_rule_params_do_not_reach_training():
    # scoring-only and analysis-only parameters must not be read by the supernet stage (no retraining)
    keys = set(layout.STAGE_PARAMS["train_supernet"])
    assert not any(k.startswith(("scoring", "derive", "finetune", "standalone")) for k in keys)
    assert "gate.keep_prob" not in keys


@pytest.mark.parametrize("name", ["train-supernet", "finetune", "train-standalone", "train-fidelity"])
def test_training_commands_set_up_the_process_group(name, monkeypatch, tmp_path):
    """Every command that trains networks runs in every process of a torchrun launch: the process group is
    set up before its stage and torn down after it (else a cluster job trains on one process)."""
    import importlib

    from stfusion.cli.commands import COMMANDS
    from stfusion.engine import distributed

    calls = []
    module, _, func = next(c for c in COMMANDS if c.name == name).stage.partition(":")
    monkeypatch.setattr(distributed, "init_from_env", lambda: calls.append("init"))
    monkeypatch.setattr(distributed, "cleanup", lambda: calls.append("cleanup"))
    monkeypatch.setattr(importlib.import_module(module), func, lambda *a, **k: calls.append("stage") or {})
    monkeypatch.chdir(tmp_path)
    assert cli.main([name, "--params", str(REPO / "params.yaml"), "--no-progress"]) == 0
    assert calls == ["init", "stage", "cleanup"]


def test_a_warning_under_a_command_is_one_line(capsys):
    """A decoder fallback while a command runs: one line, stfusion's own message (another library's warning:
    its category and origin), not Python's two-line warning with the source line."""
    import warnings

    from stfusion.data.video import DecoderFallbackWarning

    import logging

    with warnings.catch_warnings():  # pytest records warnings itself: route them to the command's logging
        warnings.simplefilter("always")
        logging.captureWarnings(False)
        cli.setup_logging(None)
        warnings.warn("decord could not read a.mp4 (bad)\n; used PyAV instead", DecoderFallbackWarning)
        warnings.warn("old API", FutureWarning)
        logging.captureWarnings(False)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "WARNING: decord could not read a.mp4 (bad) ; used PyAV instead"
    assert err[1].startswith("WARNING: FutureWarning: old API (") and len(err) == 2, err
