"""Stages of ranking fidelity: strategies trained stand-alone from scratch, against which the supernet's ranking is
checked (:mod:`stfusion.analysis.fidelity`). One implementation, run twice with its own settings
(:class:`stfusion.config.layout.FidelityStudy`):

* the default run's check (``select_standalone``, ``train_standalone``, ``validate_ranking``):
  ``standalone.n_strategies`` strategies, one seed;
* the study, its own target (``select_fidelity``, ``train_fidelity``, ``fidelity``): ``fidelity.n_strategies``
  strategies, ``fidelity.seeds`` seeds, each seed index in its own folder.

:func:`select` chooses the strategies, :func:`train` trains them, :func:`report` gathers every seed's runs and
writes the statistics. Every run trains with the ``standalone`` budget. Seed index ``j`` initialises the network
with ``seed + j`` and shuffles / augments with the same offset, so the check's runs are the study's seed 0.

Files of the output folder (names from the study's settings): the table (CSV and Markdown: the selection, the
supernet scores, seed 0's run as ``standalone_*`` columns, and with several seeds each seed's test top-1
``seed<j>`` and their ``standalone_mean|min|max``), the statistics (JSON, with the training time and budget), the
summary (Markdown), the figure, and the best run's ``best_history.csv`` and ``best_test_predictions.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from stfusion.config.layout import FidelityStudy, seed_folder
from stfusion.config.settings import Settings
from stfusion.io.files import read_table, write_json, write_text
from stfusion.io.tables import to_markdown, write_table
from stfusion.stages.common import build_from_checkpoint, strategy_of
from stfusion.stages.plain_runs import gather_runs, train_plain_runs

if TYPE_CHECKING:  # heavy imports stay inside the functions (the CLI's --help imports the stages)
    import numpy as np
    import pandas as pd

BUDGET = ("epochs", "lr", "batch_size", "weight_decay")  #: the ``standalone`` keys every stand-alone run trains with


def select(params: dict, study: FidelityStudy, *, ranking: str | Path, out: str | Path) -> pd.DataFrame:
    """``<section>.n_strategies`` scored strategies spanning the score range
    (:func:`stfusion.analysis.fidelity.select_strategies`)."""
    from stfusion.analysis.fidelity import select_strategies

    n = getattr(Settings.for_stage(params), study.section).n_strategies
    df = select_strategies(read_table(ranking, "ranking"), n, f"{study.section}.n_strategies")
    write_table(df, out)
    return df


def _folder(folder: str | Path, study: FidelityStudy, j: int) -> Path:
    return Path(seed_folder(str(folder), j) if study.several_seeds else folder)


def train(
    params: dict, study: FidelityStudy, *, checkpoint: str | Path, cache_dir: str | Path, selection: str | Path,
    ckpt_dir: str | Path, runs_dir: str | Path, strategies: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None, progress: bool = True,
) -> list[dict]:
    """Train each selected strategy (all, or the given ids) under each seed index (all, or the given ones) from
    scratch: a freshly initialised network of the supernet's architecture holding only the strategy's convs,
    the ``standalone`` budget. Writes ``<runs_dir>/<id>.json`` and ``<ckpt_dir>/<id>/`` (below ``seed<j>/`` with
    several seeds)."""
    import torch
    from stfusion.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    table = read_table(selection, "stand-alone selection")
    results, settings = [], Settings.for_stage(params)
    for j in study.seeds(settings) if seeds is None else seeds:
        seed = settings.seed + int(j)

        def make(row, seed=seed):
            torch.manual_seed(seed)
            fresh = build_from_checkpoint(ckpt, checkpoint)
            return fresh.export(strategy_of(row["strategy"], fresh.n_fusion_layers))

        results += train_plain_runs(
            params, "standalone", table, strategies, make, cache_dir=cache_dir, ckpt_dir=_folder(ckpt_dir, study, j),
            runs_dir=_folder(runs_dir, study, j), seed_offset=int(j), progress=progress,
            what=f"stand-alone seed {j}")
    return results


def gather(params: dict, study: FidelityStudy, *, selection: str | Path, ranking: str | Path,
           runs_dir: str | Path) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """The study's table (see the module docstring), its stand-alone test top-1 ``(n_strategies, n_seeds)`` and
    its training time: ``train_seconds`` (all runs, one after another) and ``wall_seconds`` (first start to last
    end, from the run files' times)."""
    import numpy as np
    from stfusion.analysis.supernet_side import supernet_scores

    sel = supernet_scores(read_table(selection, "stand-alone selection"), read_table(ranking, "ranking"))
    ids = sel["id"].astype(str)
    seeds = study.seeds(Settings.for_stage(params))
    folders = [_folder(runs_dir, study, j) for j in seeds]
    command = f"stfusion {study.command(study.train)}" + (" --seed-index {}" if study.several_seeds else "")
    runs = [gather_runs(ids, f, command.format(j)) for j, f in zip(seeds, folders)]
    first = runs[0].drop(columns=["strategy", "name"], errors="ignore")
    first = first.rename(columns={c: f"standalone_{c}" for c in first.columns if c not in ("id", "macs", "params")})
    df = sel.merge(first, on="id", how="left")
    per_seed = np.stack([df["id"].map(r.set_index("id")["top1_test"]).to_numpy(float) for r in runs], axis=1)
    if study.several_seeds:
        df[[f"seed{j}" for j in seeds]] = per_seed
        df = df.assign(standalone_mean=per_seed.mean(axis=1), standalone_min=per_seed.min(axis=1),
                       standalone_max=per_seed.max(axis=1))
    ends = [(f / f"{i}.json").stat().st_mtime for f in folders for i in ids]
    seconds = [float(s) for r in runs for s in r["seconds"]]
    starts = [end - s for end, s in zip(ends, seconds)]
    timing = {"train_seconds": round(sum(seconds), 3), "wall_seconds": round(max(ends) - min(starts), 1)}
    return df, per_seed, timing


def report(params: dict, study: FidelityStudy, *, selection: str | Path, ranking: str | Path,
           runs_dir: str | Path, out_dir: str | Path) -> dict:
    """Gather the runs (:func:`gather`) and write the study's files into ``out_dir`` (see the module docstring);
    returns the statistics (:func:`stfusion.analysis.fidelity.study`) with the training time, the number of
    ``runs``, the ``budget`` and the ``strategies`` (ids)."""
    from stfusion.analysis.fidelity import plot_study, study as statistics, summary_lines
    from stfusion.engine.evaluation import copy_best_run

    df, per_seed, timing = gather(params, study, selection=selection, ranking=ranking, runs_dir=runs_dir)
    out_dir = Path(out_dir)
    write_table(df, out_dir / study.table)
    copy_best_run(df, "standalone_top1_val", _folder(runs_dir, study, 0), out_dir)
    settings = Settings.for_stage(params)
    result = {**statistics(df, per_seed, seed=settings.seed), **timing, "runs": int(per_seed.size),
              "budget": {k: getattr(settings.standalone, k) for k in BUDGET}, "strategies": list(df["id"].astype(str))}
    write_json(out_dir / study.result, result)
    plot_study(df, per_seed, out_dir / study.figure)
    lines = ["# Ranking fidelity", "", *summary_lines(result), "",
             f"Training: {timing['train_seconds'] / 60:.1f} min of runs one after another, "
             f"{timing['wall_seconds'] / 60:.1f} min from the first start to the last end.", "",
             to_markdown(df), "", f"![ranking fidelity]({study.figure})", ""]
    write_text(out_dir / study.summary, "\n".join(lines))
    return result
