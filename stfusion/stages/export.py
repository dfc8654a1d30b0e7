"""Deployable files of a derived or finetuned network (``stfusion export``).

The network is the plain network a strategy exports to (:meth:`FusionNetwork.export`: only the kept convs, no
gates), with the finetuned weights of ``<finetuned folder>/<id>/model.pt`` when that strategy was finetuned,
else the supernet's weights (a derived network before finetuning). Formats:

* ``pt2``: a :func:`torch.export.export` program saved with :func:`torch.export.save` (load it with
  ``torch.export.load(path).module()``);
* ``onnx``: :func:`torch.onnx.export` (the ``[onnx]`` extra: onnx, onnxscript, onnxruntime), input ``clips``,
  output ``logits``.

Both take a batch of any size: ``clips (N, 3, T, H, W)``, normalised as in training (``(x - mean) / std`` on the
0-255 scale), and give ``logits (N, num_classes)``. Every written file is loaded back and run on a random batch:
its logits must match PyTorch's within :data:`TOLERANCE` (largest absolute difference). A JSON file beside it
(``<file>.json``) records the strategy, the weights' origin, the input layout and normalisation, the class names, MACs and
parameters.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from stfusion.config.layout import LAYOUT, in_folder
from stfusion.io.files import atomic_write
from stfusion.engine.checkpoint import load_checkpoint
from stfusion.errors import StfusionError

log = logging.getLogger(__name__)

FORMATS = ("pt2", "onnx")
#: largest absolute logit difference accepted between the written file and the PyTorch network
TOLERANCE = 1e-4


def load_network(strategy: str, *, checkpoint: str | Path, finetuned_dir: str | Path) -> tuple[torch.nn.Module, dict]:
    """The plain network of ``strategy`` (id like ``stb`` or text like ``S|ST|S+ST``) in eval mode, and what
    the JSON beside the export records about it."""
    from stfusion.stages.common import clip_shape, load_supernet, strategy_of

    supernet, ckpt = load_supernet(checkpoint)
    chosen = strategy_of(strategy, supernet.n_fusion_layers)
    net = supernet.export(chosen)
    finetuned = in_folder(LAYOUT.supernet, Path(finetuned_dir) / chosen.id)
    if finetuned.is_file():
        net.load_state_dict(load_checkpoint(finetuned, arch=net.arch)["model"])
        origin = str(finetuned)
    else:
        log.warning("%s not found: exporting the derived network with the supernet's weights (not finetuned)",
                    finetuned)
        origin = f"{checkpoint} (supernet weights, not finetuned)"
    build = ckpt["build"]
    info = {"strategy": chosen.text, "id": chosen.id, "weights": origin, "clip_shape": clip_shape(ckpt, checkpoint),
            "classes": [str(c.get("name", i)) for i, c in enumerate(build.get("classes", []))]}
    return net.eval(), info


def _example(clip_shape, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, *clip_shape), generator=torch.Generator().manual_seed(seed))


def _batch_dim() -> torch.export.Dim:
    return torch.export.Dim("batch", min=1)


def write_pt2(net: torch.nn.Module, clip_shape, out: Path) -> None:
    program = torch.export.export(net, (_example(clip_shape),), dynamic_shapes=({0: _batch_dim()},))
    atomic_write(out, lambda tmp: torch.export.save(program, tmp))


#: loggers of the ONNX exporter and the level below which their records are dropped: the graph passes log every
#: step at INFO, and torch warns of torchvision operators it cannot register (a video network uses none)
_ONNX_LOGGERS = {"onnxscript": logging.WARNING, "onnx_ir": logging.WARNING, "torch.onnx": logging.ERROR}


@contextmanager
def _quiet_onnx():
    """The ONNX export without its progress records and the deprecation warnings of its own internals."""
    loggers = {logging.getLogger(name): level for name, level in _ONNX_LOGGERS.items()}
    before = {lg: lg.level for lg in loggers}
    try:
        for lg, level in loggers.items():
            lg.setLevel(level)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for lg, level in before.items():
            lg.setLevel(level)


def write_onnx(net: torch.nn.Module, clip_shape, out: Path) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise StfusionError("the onnx format needs the onnx extra: pip install 'stfusion[onnx]'") from None
    with _quiet_onnx():
        atomic_write(out, lambda tmp: torch.onnx.export(
            net, (_example(clip_shape),), str(tmp), dynamo=True, dynamic_shapes=({0: _batch_dim()},),
            input_names=["clips"], output_names=["logits"], external_data=False, verbose=False))


def run_exported(path: Path, fmt: str, clips: torch.Tensor) -> torch.Tensor:
    """Logits of the exported file ``path`` for ``clips (N, 3, T, H, W)``: the pt2 program through
    ``torch.export.load``, the ONNX file through onnxruntime."""
    if fmt == "pt2":
        with torch.no_grad():
            return torch.export.load(str(path)).module()(clips)
    try:
        import onnxruntime
    except ImportError:
        raise StfusionError("checking an onnx file needs onnxruntime: pip install 'stfusion[onnx]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"clips": clips.numpy()})[0])


def resolve_best(strategy: str, finetune_table: str | Path) -> str:
    """``strategy``, or for ``best`` the id of the derived strategy with the best validation top-1 after
    finetuning (:func:`~stfusion.analysis.derive.best_finetuned`)."""
    if strategy != "best":
        return strategy
    import pandas as pd

    from stfusion.analysis.derive import best_finetuned

    if not Path(finetune_table).is_file():
        raise StfusionError(f"--strategy best reads {finetune_table}, which does not exist: run the pipeline up to "
                            f"finetuning first (snakemake --cores all {finetune_table}), or give --strategy ID")
    best = best_finetuned(pd.read_csv(finetune_table))
    log.info("best derived strategy: %s (%s), validation top-1 %.4f after finetuning", best["id"],
             best["strategy"], best["top1_val"])
    return str(best["id"])


def export(strategy: str, fmt: str, out: str | Path | None, *, checkpoint: str | Path,
           finetuned_dir: str | Path, finetune_table: str | Path) -> dict:
    """Write the network of ``strategy`` (an id, a text, or ``best``: :func:`resolve_best`) as ``fmt`` to ``out``
    (``None``: ``<id>.<fmt>`` in the standard layout's export folder) and the JSON record beside it (``out`` +
    ``.json``), after checking the file against PyTorch; returns the record."""
    from stfusion.core.costs import CONVENTION, network_costs
    from stfusion.data.dataset import MEAN, STD
    from stfusion.io.files import write_json

    if fmt not in FORMATS:
        raise StfusionError(f"unknown export format {fmt!r} (use {' or '.join(FORMATS)})")
    strategy = resolve_best(strategy, finetune_table)
    net, info = load_network(strategy, checkpoint=checkpoint, finetuned_dir=finetuned_dir)
    out = Path(out) if out is not None else Path(LAYOUT.export_dir) / f"{info['id']}.{fmt}"
    shape = info["clip_shape"]
    (write_pt2 if fmt == "pt2" else write_onnx)(net, shape, out)
    clips = _example(shape, n=3, seed=1)  # another batch size than the example the export traced
    with torch.no_grad():
        expected = net(clips)
    diff = float((run_exported(out, fmt, clips) - expected).abs().max())
    if not diff <= TOLERANCE:
        out.unlink()
        raise StfusionError(f"the exported {fmt} network differs from PyTorch by {diff:.3g} (tolerance "
                            f"{TOLERANCE:g}); nothing was written")
    info.update(format=fmt, file=out.name, input={"name": "clips", "layout": "N, 3, T, H, W",
                                                  "mean_0_255": list(MEAN), "std_0_255": list(STD)},
                output={"name": "logits", "shape": ["N", len(info["classes"])]},
                max_abs_difference=diff, tolerance=TOLERANCE, **network_costs(net, shape), cost_convention=CONVENTION)
    write_json(out.with_name(out.name + ".json"), info)
    log.info("exported %s (%s) to %s: %d MACs a clip, %d parameters, max |logit difference| %.2g", info["id"],
             info["weights"], out, info["macs"], info["params"], diff)
    return info
