"""Supernet training on tiny tensor clip sets: motion needs ST, appearance does not; resume is exact."""

import pandas as pd
import pytest
import torch

from stfusion.errors import StfusionError
from stfusion.config.settings import Settings
from stfusion.models import build_model
from stfusion.scoring.naive import calibration_batches, score_strategies
from stfusion.engine.evaluation import eval_loader
from stfusion.core.strategies import families
from stfusion.engine.train import TrainConfig, fit

from conftest import appearance_clips, motion_clips


def _train(params, data, out, epochs=6, warmup=2, **kw):
    torch.manual_seed(0)
    model = build_model(Settings.for_stage(params), 2)
    cfg = TrainConfig(epochs=epochs, warmup_epochs=warmup, batch_size=16, lr=0.05, kl_k=5.0, **kw)
    hist = fit(model, data, cfg, out, progress=False)
    return model, hist


def _family_scores(model, train, val):
    fam = families(model.n_fusion_layers)
    names = ["all-S", "all-ST", "all-S+ST"]
    df = score_strategies(model, [fam[n] for n in names], eval_loader(val, 32), 2,
                          calib_batches=calibration_batches(train, 32, 2, 0), progress=False)
    return dict(zip(names, df["top1"]))


def test_temporal_task_keeps_st_paths(tmp_path, tiny_params):
    train, val = motion_clips(128, seed=1), motion_clips(64, seed=2)
    model, hist = _train(tiny_params, train, tmp_path)
    p = model.drop_rates()
    assert (p[:, 1] < p[:, 0]).any(), p  # an ST path is kept more than the S path of its layer
    scores = _family_scores(model, train, val)
    assert scores["all-ST"] >= 0.8
    assert scores["all-S"] <= 0.65  # frames alone cannot tell left from right
    rates = pd.read_csv(tmp_path / "drop_rates.csv")
    assert list(rates.columns) == ["epoch", "layer", "stage", "p_S", "p_ST"]
    assert len(rates) == 8 * model.n_fusion_layers  # (warm-up + gated epochs) x layers
    warm = rates[rates.epoch <= 2][["p_S", "p_ST"]].to_numpy()
    assert abs(warm - 0.1).max() < 1e-6  # the gates do not move in the warm-up
    assert set(hist["phase"]) == {"warmup", "gated"}


def test_appearance_task_all_s_matches_all_st(tmp_path, tiny_params):
    train, val = appearance_clips(128, seed=1), appearance_clips(64, seed=2)
    model, _ = _train(tiny_params, train, tmp_path)
    scores = _family_scores(model, train, val)
    assert scores["all-S"] >= 0.9
    assert abs(scores["all-S"] - scores["all-ST"]) <= 0.1


def test_resume_gives_the_same_weights(tmp_path, tiny_params):
    data = motion_clips(48, seed=3)
    full, _ = _train(tiny_params, data, tmp_path / "full", epochs=3, warmup=1)
    assert torch.load(tmp_path / "full" / "last.pt", weights_only=False)["epoch"] == 4
    # the same run interrupted during epoch 3, then started again: it resumes from the epoch-2 checkpoint
    _stop_after(tiny_params, data, tmp_path / "cut", stop_epoch=2)
    resumed, _ = _train(tiny_params, data, tmp_path / "cut", epochs=3, warmup=1)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    h_full = pd.read_csv(tmp_path / "full" / "history.csv")
    h_res = pd.read_csv(tmp_path / "cut" / "history.csv")
    pd.testing.assert_frame_equal(h_full, h_res)


def _stop_after(params, data, out, stop_epoch):
    """Run the same configuration but kill it (by an exception from the data) once ``stop_epoch`` epochs are done."""

    class Interrupting(torch.utils.data.Dataset):
        def __init__(self):
            self.calls = 0

        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            self.calls += 1
            if self.calls > stop_epoch * (len(data) // 16) * 16:
                raise KeyboardInterrupt
            return data[i]

    with pytest.raises(KeyboardInterrupt):
        _train(params, Interrupting(), out, epochs=3, warmup=1)
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == stop_epoch


def test_nan_loss_stops_with_epoch_and_step(tmp_path, tiny_params):
    data = motion_clips(32, seed=0)
    torch.manual_seed(0)
    model = build_model(Settings.for_stage(tiny_params), 2)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e30, kl_k=5.0)
    with pytest.raises(StfusionError, match=r"epoch \d+, step \d+"):
        fit(model, data, cfg, tmp_path, progress=False)


def test_checkpoint_from_other_architecture_is_refused(tmp_path, tiny_params):
    data = motion_clips(32, seed=0)
    _train(tiny_params, data, tmp_path, epochs=1, warmup=0)
    tiny_params["model"]["widths"] = [8, 24]
    with pytest.raises(StfusionError, match="different architecture"):
        _train(tiny_params, data, tmp_path, epochs=2, warmup=0)


def test_weight_decay_never_touches_gate_logits(tiny_params):
    from stfusion.engine.train import make_optimizer

    model = build_model(Settings.for_stage(tiny_params), 2)
    opt = make_optimizer(model, TrainConfig(epochs=1, batch_size=4, lr=0.1, weight_decay=0.5))
    logit_ids = {id(p) for p in model.gate_parameters()}
    for group in opt.param_groups:
        if any(id(p) in logit_ids for p in group["params"]):
            assert group["weight_decay"] == 0.0
            assert all(id(p) in logit_ids for p in group["params"])
    assert len(logit_ids) == 2 * model.n_fusion_layers


def test_channels_last_and_bf16_train_the_same_network(tmp_path, tiny_params):
    """channels_last_3d changes the memory layout only: the weights match the default run to rounding. bf16
    autocast keeps weights, gate logits and the loss in fp32 and learns the same task (looser tolerance)."""
    data = motion_clips(64, seed=3)
    base, hist = _train(tiny_params, data, tmp_path / "base", epochs=2, warmup=1)
    last, _ = _train(tiny_params, data, tmp_path / "cl", epochs=2, warmup=1, channels_last=True)
    for (k, a), b in zip(base.state_dict().items(), last.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=k)
    conv = next(m for m in last.modules() if isinstance(m, torch.nn.Conv3d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    bf16, hist16 = _train(tiny_params, data, tmp_path / "bf16", epochs=2, warmup=1, precision="bf16")
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    assert torch.isfinite(torch.tensor(hist16["loss"].to_numpy())).all()
    assert abs(hist16["loss"].iloc[-1] - hist["loss"].iloc[-1]) < 0.1 * hist["loss"].iloc[-1]
    torch.testing.assert_close(bf16.drop_rates(), base.drop_rates(), rtol=0.05, atol=0.01)


def test_loader_workers_give_the_same_training(tmp_path, tiny_params):
    """Loading batches in worker processes changes where the work runs, not what the network learns."""
    data = motion_clips(48, seed=4)
    a, _ = _train(tiny_params, data, tmp_path / "w0", epochs=1, warmup=1)
    b, _ = _train(tiny_params, data, tmp_path / "w2", epochs=1, warmup=1, loader_workers=2)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6, msg=k)


def test_uniform_state_masks_draw_every_allowed_state():
    from stfusion.core.fusion import uniform_state_masks

    torch.manual_seed(0)
    masks = uniform_state_masks(3000, False, torch.device("cpu"), torch.float32)
    assert masks.shape == (2, 3000) and set(masks.unique().tolist()) == {0.0, 1.0}
    states = (masks[0] + 2 * masks[1]).long()  # 1 = S, 2 = ST, 3 = S+ST
    freq = torch.bincount(states, minlength=4).float() / 3000
    assert freq[0] == 0  # no bypass, so never both paths dropped
    assert torch.allclose(freq[1:], torch.full((3,), 1 / 3), atol=0.04)
    with_none = uniform_state_masks(3000, True, torch.device("cpu"), torch.float32)
    assert abs(float((with_none.sum(0) == 0).float().mean()) - 0.25) < 0.04


def test_uniform_steps_are_a_seeded_share():
    from stfusion.engine.train import uniform_step

    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.1, uniform_share=0.3)
    picks = [uniform_step(cfg, e, s) for e in range(4) for s in range(500)]
    assert abs(sum(picks) / len(picks) - 0.3) < 0.03
    assert picks == [uniform_step(cfg, e, s) for e in range(4) for s in range(500)]  # a resumed run repeats them
    assert not any(uniform_step(TrainConfig(epochs=1, batch_size=4, lr=0.1), 0, s) for s in range(100))


def test_uniform_share_one_trains_the_weights_and_leaves_the_gates(tmp_path, tiny_params):
    """With every gated step uniform, the logits get zero gradients (their momentum starts at zero), so the drop
    rates stay at their start while the weights learn the task under all strategies."""
    train, val = motion_clips(96, seed=5), motion_clips(64, seed=6)
    model, hist = _train(tiny_params, train, tmp_path, epochs=4, warmup=1, uniform_share=1.0)
    assert abs(model.drop_rates() - 0.1).max() < 1e-6
    assert hist["kl"].iloc[-1] == 0.0 and hist["train_top1"].iloc[-1] > 0.6
    scores = _family_scores(model, train, val)
    assert scores["all-ST"] >= 0.8 and scores["all-S+ST"] >= 0.8  # both trained although the gates never sampled
