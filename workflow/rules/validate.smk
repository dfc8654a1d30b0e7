# Stage 8: ranking fidelity (stfusion/stages/fidelity.py). Strategies chosen to span the score range (a
# checkpoint), each trained stand-alone from scratch under each seed index (wildcards sid, fseed), then the
# statistics against the supernet's scores (stfusion/analysis/fidelity.py). The same rules serve two studies, a
# row each below: the default run's check (part of `all`: standalone.n_strategies strategies, one seed) and the
# ranking-fidelity study, its own target (`snakemake --cores all fidelity`: fidelity.n_strategies strategies,
# fidelity.seeds seeds, a folder a seed index). The rule, command and file names come from layout.FidelityStudy.
FIDELITY_STUDIES = [
    dict(
        study=layout.FIDELITY_CHECK,
        selection=SELECTION,
        runs=STANDALONE_RUNS,
        ckpt=STANDALONE_CKPT,
        logs="logs/standalone",
        out_dir=LAYOUT.validation,
        timing=LAYOUT.timing(layout.FIDELITY_CHECK.gather),
        label="supernet score vs stand-alone accuracy",
    ),
    dict(
        study=layout.FIDELITY_STUDY,
        selection=LAYOUT.fidelity_selection,
        runs=LAYOUT.fidelity_runs,
        ckpt=LAYOUT.fidelity_ckpt,
        logs="logs/fidelity",
        out_dir=LAYOUT.fidelity_dir,
        timing=LAYOUT.fidelity_timing,
        label="supernet score vs stand-alone accuracy, several seeds (study)",
    ),
]


def seed_pattern(study, folder):
    """The folder of one seed index's files: `folder/seed{fseed}` in a study with several seeds, else `folder`."""
    return layout.seed_folder(folder, "{fseed}") if study.several_seeds else folder


def train_command(study):
    """A params function: the study's training command, with `--seed-index` in a study with several seeds."""
    command = study.command(study.train)
    return lambda wildcards: f"{command} --seed-index {wildcards.fseed}" if study.several_seeds else command


def study_runs(row):
    """An input function: the run files of every strategy the study's selection chose (known once its checkpoint
    has run), under each of its seed indices."""
    study = row["study"]
    pattern = f"{seed_pattern(study, row['runs'])}/{{sid}}.{{kind}}"

    def files(wildcards):
        ids = _ids(getattr(checkpoints, study.select).get().output.table)
        return expand(pattern, fseed=study.seeds(SETTINGS), sid=ids, kind=layout.RUN_FILES.values())

    return files


for _row in FIDELITY_STUDIES:
    _study, _out = _row["study"], _row["out_dir"]
    _runs, _ckpt = seed_pattern(_study, _row["runs"]), seed_pattern(_study, _row["ckpt"])
    _up = 2 if _study.several_seeds else 1  # from a run file to the folder of the run records

    checkpoint:
        name:
            _study.select
        input:
            ranking=RANKING,
        output:
            table=_row["selection"],
            markdown=_row["selection"].replace(".csv", ".md"),
        log:
            f"logs/{_study.select}.log",
        conda:
            CONDA_ENV
        params:
            values=stage_values(_study.select),
            command=_study.command(_study.select),
        shell:
            "python -m stfusion.cli {params.command} --ranking {input.ranking} --out {output.table} "
            "--log {log} --no-progress"

    rule:
        name:
            _study.train
        input:
            **CACHE_FILES,
            model=SUPERNET,
            selection=_row["selection"],
        output:
            run=layout.run_file(_runs, "{sid}", "record"),
            history=layout.run_file(_runs, "{sid}", "history"),
            predictions=layout.run_file(_runs, "{sid}", "predictions"),
            model=f"{_ckpt}/{{sid}}/model.pt",
        log:
            f"{seed_pattern(_study, _row['logs'])}/{{sid}}.log",
        conda:
            CONDA_ENV
        threads: 1
        resources:
            **TRAIN_RESOURCES,
            mem_mb=4000,
            runtime=30,
        params:
            values=stage_values(_study.train),
            command=train_command(_study),
            cache=dirname("manifest"),
            ckpt_dir=dirname("model", "output", up=_up + 1),
            runs_dir=dirname("run", "output", up=_up),
            launch=TRAIN_LAUNCH,
            threads=threads_per_process,
        shell:
            "{params.launch} stfusion.cli {params.command} --strategy {wildcards.sid} "
            "--checkpoint {input.model} --cache {params.cache} --selection {input.selection} "
            "--ckpt-dir {params.ckpt_dir} --runs-dir {params.runs_dir} --threads {params.threads} --log {log} "
            "--no-progress"

    rule:
        name:
            _study.gather
        input:
            selection=_row["selection"],
            ranking=RANKING,
            runs=study_runs(_row),
        output:
            result=f"{_out}/{_study.result}",
            summary=f"{_out}/{_study.summary}",
            table=f"{_out}/{_study.table}",
            markdown=f"{_out}/{_study.table}".replace(".csv", ".md"),
            figure=report(
                f"{_out}/{_study.figure}",
                caption="../report/fidelity.rst",
                category="4. Ranking fidelity",
                labels={"kind": "figure", "name": _row["label"]},
            ),
            best_history=layout.best_run_file(_out, "history"),
            best_predictions=layout.best_run_file(_out, "predictions"),
            timing=_row["timing"],
        log:
            f"logs/{_study.gather}.log",
        conda:
            CONDA_ENV
        params:
            values=stage_values(_study.gather),
            command=_study.command(_study.gather),
            runs_dir=dirname("runs", up=_up),
            out_dir=dirname("result", "output"),
        shell:
            "python -m stfusion.cli {params.command} --selection {input.selection} --runs-dir {params.runs_dir} "
            "--ranking {input.ranking} --out-dir {params.out_dir} --timing {output.timing} --log {log} "
            "--no-progress"
