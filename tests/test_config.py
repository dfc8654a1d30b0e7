"""The configuration: typed settings with no default in code, keys that moved, the preset's place in the order of
precedence (CLI and Snakefile), and every stage running on the keys it declares alone."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess

import pytest
import yaml

from stfusion.cli import app as cli
from stfusion.config import layout
from stfusion.config.loading import DEFAULTS_PATH, MOVED, PRESET_DIR, load_params, resolve_params
from stfusion.config.settings import Settings
from stfusion.errors import StfusionError

from conftest import REPO

DEFAULTS = yaml.safe_load(DEFAULTS_PATH.read_text())


def _leaf_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        keys += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return keys


def _without(params: dict, dotted: str) -> dict:
    out = copy.deepcopy(params)
    *parents, last = dotted.split(".")
    node = out
    for part in parents:
        node = node[part]
    del node[last]
    return out


# ------------------------------------------------------------------------------------------- typed settings
@pytest.mark.parametrize("key", _leaf_keys(DEFAULTS) + ["data.builtin", "compute", "standalone"])
def test_no_default_lives_in_code(key):
    """Every key of the packaged defaults is needed: without it the settings are not built, and the one-line
    error names it (nothing falls back to a value written in the code)."""
    with pytest.raises(StfusionError, match=rf"^missing parameter {key.replace('.', '[.]')} "):
        Settings.from_params(_without(DEFAULTS, key))


def test_settings_are_typed_and_frozen():
    s = Settings.from_params(load_params(REPO / "params.yaml", {"gate": {"kl_k": 3}}))
    assert s.gate.kl_k == 3.0 and isinstance(s.gate.kl_k, float)
    assert s.model.widths == (16, 32, 64) and s.solver.milestones == (0.45, 0.67, 0.9)
    assert s.data.builtin.clips_per_class == DEFAULTS["data"]["builtin"]["clips_per_class"]
    with pytest.raises(AttributeError):
        s.gate.kl_k = 5.0
    with pytest.raises(StfusionError, match="unknown parameter gate.kl_q"):
        Settings.for_stage({"gate": {"kl_q": 1}})


def test_a_stage_reading_an_undeclared_key_is_told_which():
    sub = layout.stage_params(load_params(REPO / "params.yaml"), "sample_strategies")
    s = Settings.for_stage(sub)
    assert s.scoring.top_k == DEFAULTS["scoring"]["top_k"]
    with pytest.raises(StfusionError, match=r"parameter scoring\.batch_size is not among .*\(STAGE_PARAMS"):
        s.scoring.batch_size
    with pytest.raises(StfusionError, match=r"parameter compute is not among"):
        s.compute


@pytest.mark.parametrize("old, new", [("supernet.device", "compute.device"),
                                      ("supernet.milestones", "solver.milestones"),
                                      ("validate.epochs", "standalone.epochs")])
def test_moved_keys_name_their_new_place(tmp_path, capsys, old, new):
    assert MOVED[old] == new
    section, key = old.split(".")
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({section: {key: DEFAULTS[new.split(".")[0]][key]}}))
    assert cli.main(["sample-strategies", "--params", str(tmp_path / "old.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"stfusion: error: unknown parameter {old}: moved to {new}"]
    with pytest.raises(StfusionError, match="unknown parameter validate: moved to standalone"):
        resolve_params({"validate": {}})


# --------------------------------------------------------------------------------------------- precedence
def _user_file(tmp_path, **sections) -> str:
    """A user's params.yaml: the full packaged file with ``preset: ucf101`` and ``sections`` changed."""
    user = {**copy.deepcopy(DEFAULTS), "preset": "ucf101"}
    for name, values in sections.items():
        user[name].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(user))
    return str(path)


def test_preset_is_the_base_and_the_users_keys_win(tmp_path, caplog):
    """defaults < preset < the keys the user's file changes < --set (the README's example: a full copy of the
    defaults with a preset and the user's own data keys); the packaged values the preset replaced are logged."""
    preset = yaml.safe_load((PRESET_DIR / "ucf101.yaml").read_text())
    assert preset["data"]["short_side"] != 160 and preset["data"]["workers"] != 3
    path = _user_file(tmp_path, data={"short_side": 160, "workers": 3})
    with caplog.at_level("INFO", logger="stfusion.config.loading"):
        p = load_params(path)
    assert "preset ucf101 sets" in caplog.text and "data.frames" in caplog.text and "data.workers" not in caplog.text
    assert p["data"]["short_side"] == 160 and p["data"]["workers"] == 3  # the user's keys win over the preset
    assert p["data"]["frames"] == preset["data"]["frames"] and p["model"]["backbone"] == "resnet50"  # the preset's
    p = load_params(path, cli.parse_overrides(["data.short_side=192", "data.frames=8"]))
    assert p["data"]["short_side"] == 192 and p["data"]["frames"] == 8 and p["data"]["workers"] == 3  # --set wins
    assert load_params(path, {"preset": None})["model"]["backbone"] == "plain"  # --set names the preset too
    with caplog.at_level("INFO", logger="stfusion.config.loading"):
        p = load_params(path, {"model": {"backbone": "plain"}})  # another backbone: the preset's model goes
    assert p["model"]["variant"] == "stfusion" and p["model"]["temporal_stride"] is False and p["data"]["frames"] == 16
    assert "model.backbone plain replaces preset ucf101's model section" in caplog.text


def test_the_snakefile_resolves_as_the_cli_does(tmp_path):
    """Under Snakemake: the user's key beside `preset:` wins, --config wins over both; the commands get the
    resolved configuration (STFUSION_PARAMS), which loads back to the same parameters."""
    if shutil.which("snakemake") is None:
        pytest.skip("snakemake is not installed")
    _user_file(tmp_path, data={"short_side": 160, "workers": 3, "storage": "videos"})  # no videos to count
    (tmp_path / "Snakefile").write_text(
        f'include: "{REPO / "workflow" / "Snakefile"}"\n\n\n'
        "rule resolved:\n"
        "    output:\n"
        '        "resolved.json",\n'
        "    run:\n"
        "        import json\n        import os\n\n"
        '        json.dump({"config": config, "file": os.environ["STFUSION_PARAMS"]}, open(output[0], "w"))\n')
    out = subprocess.run(["snakemake", "-s", "Snakefile", "--cores", "1", "--config", "data={workers: 5}",
                          "--", "resolved"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads((tmp_path / "resolved.json").read_text())
    p = got["config"]
    assert p["data"]["short_side"] == 160 and p["data"]["workers"] == 5 and p["model"]["backbone"] == "resnet50"
    cli_view = load_params(tmp_path / "params.yaml", {"data": {"workers": 5}})
    assert p == cli_view and load_params(tmp_path / got["file"]) == {**cli_view, "preset": None}


# ------------------------------------------------------------------------------ stages on their declared keys
STAGE_COMMANDS = ("generate", "prepare", "train-supernet", "sample-strategies", "score-strategies", "analyze",
                  "derive", "finetune", "finetune-table", "select-standalone", "train-standalone",
                  "validate-ranking", "report", "select-fidelity", "train-fidelity", "fidelity")


def _run_every_stage(params_file) -> None:
    """Every command of the default run and of the fidelity study, in order, in this process: the dispatcher
    gives each stage only the keys ``STAGE_PARAMS`` declares for it (the standard layout, under the working
    folder)."""
    from stfusion.cli import app

    for command in STAGE_COMMANDS:
        assert app.main([command, "--params", str(params_file), "--no-progress", "--quiet"]) == 0, command


def test_every_stage_runs_on_its_declared_keys_alone(tmp_path, monkeypatch):
    """Each stage gets the subset of the parameters it declares and nothing else (as the CLI gives it): reading
    any other key would stop it with an error naming the key. Videos storage and racing, so that the decoding
    and racing paths read their keys too."""
    tiny = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    tiny["data"].update(storage="videos", short_side=32)
    tiny["scoring"].update(racing=True, race_first_clips=4)
    tiny["standalone"].update(n_strategies=2)
    tiny["fidelity"].update(n_strategies=3, seeds=1)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    monkeypatch.chdir(tmp_path)
    _run_every_stage(tmp_path / "tiny.yaml")
    L = layout.LAYOUT
    assert json.loads((tmp_path / L.storage).read_text())["storage"] == "videos"
    assert "race_status" in (tmp_path / L.ranking).read_text()
    assert (tmp_path / L.metrics).is_file() and (tmp_path / L.fidelity_dir / "fidelity.json").is_file()
