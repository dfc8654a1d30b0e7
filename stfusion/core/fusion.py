"""Basic fusion units (docs/method.md §2): a spatial path S, a spatiotemporal path ST, each behind its own gate.

Two instantiations of the units, chosen by ``unit``:

* ``full``: S = 1x3x3 conv, ST = 3x3x3 conv (C3D / I3D style, the natural reading of the paper's Fig. 1).
* ``factorised``: S = 1x1x1 conv, ST = 3x1x1 temporal conv; the layer that owns the paths follows their sum with a
  shared 1x3x3 conv, so S = 2D, ST = (2+1)D (the paper's template and experimental code).

Temporal stride is 1 and temporal padding keeps T, so every unit maps ``(N, C, T, H, W)`` to ``(N, C', T, H, W)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stfusion.core.droppath import VariationalDropPath, kl_sum, sample_masks
from stfusion.core.strategies import BOTH, NONE, S, ST, STATE_NAMES

UNITS = ("full", "factorised")


def conv_s(cin: int, cout: int, unit: str) -> nn.Conv3d:
    """The spatial unit's conv: 1x3x3 (full) or 1x1x1 (factorised)."""
    if unit == "full":
        return nn.Conv3d(cin, cout, (1, 3, 3), padding=(0, 1, 1), bias=False)
    if unit == "factorised":
        return nn.Conv3d(cin, cout, 1, bias=False)
    raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")


def conv_st(cin: int, cout: int, unit: str) -> nn.Conv3d:
    """The spatiotemporal unit's conv: 3x3x3 (full) or 3x1x1 (factorised)."""
    if unit == "full":
        return nn.Conv3d(cin, cout, 3, padding=1, bias=False)
    if unit == "factorised":
        return nn.Conv3d(cin, cout, (3, 1, 1), padding=(1, 0, 0), bias=False)
    raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")


def conv_bn(conv: nn.Conv3d) -> nn.Sequential:
    """torchvision-style path: conv -> BN (the ReLU comes after the gated sum)."""
    return nn.Sequential(conv, nn.BatchNorm3d(conv.out_channels))


def bn_relu_conv(conv: nn.Conv3d) -> nn.Sequential:
    """Pre-activated path of the paper's DenseNet template: BN -> ReLU -> conv."""
    return nn.Sequential(nn.BatchNorm3d(conv.in_channels), nn.ReLU(inplace=False), conv)


def paths_weight_sq(paths: list[nn.Module]) -> Tensor:
    """``(len(paths),)``: ``||W||^2`` over the conv weights of each path (the quantity the KL term prices),
    from one fused norm over all the weights (``torch._foreach_norm``) instead of two ops per conv."""
    weights = [[m.weight for m in path.modules() if isinstance(m, nn.Conv3d)] for path in paths]
    sq = torch.stack(torch._foreach_norm([w for ws in weights for w in ws])).pow(2)
    if len(sq) == len(paths):  # one conv a path (every backbone here): nothing to add up
        return sq
    return torch.stack([part.sum() for part in sq.split([len(ws) for ws in weights])])


#: what the KL term prices for each kept path (``gate.kl_price``; see :func:`paths_price`)
KL_PRICES = ("weight", "gamma", "normalized")


def paths_gamma_sq(paths: list[nn.Module]) -> Tensor:
    """``(len(paths),)``: ``||gamma||^2`` over the BatchNorm scales of each path (0 for a path without BN)."""
    out = []
    for path in paths:
        gammas = [m.weight for m in path.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
        out.append(torch.stack([g.pow(2).sum() for g in gammas]).sum() if gammas else torch.zeros(()))
    return torch.stack(out)


def paths_reference_sq(paths: list[nn.Module]) -> Tensor:
    """``(len(paths),)``: the squared norm each path's conv weights have in expectation under PyTorch's default
    initialisation (``Var = 1 / (3 fan_in)``), i.e. ``C_out / 3`` per conv. A constant: the weights normalised
    per output channel to a fixed length, so the price cannot be lowered by rescaling them."""
    return torch.tensor([sum(m.out_channels / 3.0 for m in path.modules() if isinstance(m, nn.Conv3d))
                         for path in paths])


def paths_price(paths: list[nn.Module], price: str = "weight") -> Tensor:
    """``(len(paths),)``: the quantity the KL term multiplies by ``(k/N)(1 - p)`` for each path.

    * ``weight``: ``||W||^2`` of the path's convs (the paper and concrete dropout). Where the path feeds
      BatchNorm the network is invariant to the scale of W, so this price can be paid by shrinking W instead of
      dropping the path (measured: ``||W||^2`` falls 5-10x while the drop rates stay near their start).
    * ``gamma``: ``||gamma||^2`` of the path's BatchNorm scales, which set the path's output scale. Still
      dodgeable by scaling the gammas of both paths of a layer together when the next layer normalises.
    * ``normalized``: ``||W||^2`` with every output channel's filter normalised to its expected length at
      initialisation (:func:`paths_reference_sq`): a constant price per kept path, proportional to its output
      channels, that only dropping the path lowers.
    """
    if price == "weight":
        return paths_weight_sq(paths)
    if price == "gamma":
        return paths_gamma_sq(paths)
    if price == "normalized":
        return paths_reference_sq(paths)
    raise ValueError(f"kl price must be one of {KL_PRICES}, got {price!r}")


class _GatedSum(torch.autograd.Function):
    """``y = ms * ys + mst * yst`` with per-sample masks ``ms, mst: (N,)``.

    Same values and gradients as ``torch.addcmul(yst * mst, ys, ms)``, with fewer full-size temporaries: the
    forward writes one output buffer (no ``yst * mst`` temporary) and the backward computes only the gradients
    that are needed, without the autograd graph of two ``mul`` nodes. On CPU every fresh activation-sized buffer
    costs page faults, which were a large part of the gate's overhead in the supernet step.
    """

    @staticmethod
    def forward(ctx, ys: Tensor, yst: Tensor, ms: Tensor, mst: Tensor) -> Tensor:
        shape = (ys.shape[0],) + (1,) * (ys.dim() - 1)
        y = torch.mul(yst, mst.view(shape))
        y.addcmul_(ys, ms.view(shape))
        ctx.save_for_backward(ys, yst, ms, mst)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        ys, yst, ms, mst = ctx.saved_tensors
        need = ctx.needs_input_grad
        g_ys, g_ms = _path_grads(grad, ys, ms, need[0], need[2])
        g_yst, g_mst = _path_grads(grad, yst, mst, need[1], need[3])
        return g_ys, g_yst, g_ms, g_mst


def _path_grads(grad: Tensor, y: Tensor, m: Tensor, need_y: bool, need_m: bool) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of ``m * y`` for one path (``grad, y: (N, C, T, H, W)``, ``m: (N,)``): ``grad * m`` and the
    per-sample ``sum(grad * y)``, in one activation-sized buffer: the product for the sum is written first, summed,
    then overwritten by ``grad * m``. Same values as two fresh products, one allocation (and its page faults)
    fewer."""
    if not need_m:
        return (grad * m.view((-1,) + (1,) * (grad.dim() - 1)) if need_y else None), None
    buf = torch.mul(grad, y)
    g_m = buf.sum(dim=tuple(range(1, buf.dim()))).to(m.dtype)
    return (torch.mul(grad, m.view((-1,) + (1,) * (grad.dim() - 1)), out=buf) if need_y else None), g_m


def gated_sum(ys: Tensor, yst: Tensor, ms: Tensor, mst: Tensor) -> Tensor:
    """``ms * ys + mst * yst`` for per-sample masks ``ms, mst`` of shape ``(N,)`` (or ``(N, 1, 1, 1, 1)``)."""
    n = ys.shape[0]
    ms, mst = ms.reshape(n), mst.reshape(n)
    if ys.shape == yst.shape and ys.dtype == yst.dtype == ms.dtype == mst.dtype:
        return _GatedSum.apply(ys, yst, ms, mst)
    shape = (n,) + (1,) * (ys.dim() - 1)
    return torch.addcmul(yst * mst.view(shape), ys, ms.view(shape))


def uniform_state_masks(n: int, allow_none: bool, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Hard keep masks ``(2, n)`` (rows S, ST; values 0 or 1) of one state per sample, drawn uniformly from
    S, ST, S+ST (and none where ``allow_none``) with torch's global generator."""
    # states are bit masks (S = 1, ST = 2, S+ST = 3, none = 0): k + 1 for k < 3, and k = 3 wraps to none
    drawn = (torch.randint(4 if allow_none else 3, (n,), device=device) + 1) % 4
    return torch.stack([(drawn & S) > 0, (drawn & ST) > 0]).to(dtype)


class FusionPaths(nn.Module):
    """The gated pair ``y = z_S * S(x) + z_ST * ST(x)`` on the same input ``x: (N, C, T, H, W)``.

    Modes:
      * template, gated (``state is None``, training, ``gates_active``): one relaxed-Bernoulli mask per sample
        and path, shape ``(N, 1, 1, 1, 1)``;
      * template, uniform (``uniform_states``, training, ``gates_active``): one hard state per sample drawn
        uniformly (:func:`uniform_state_masks`), the gates left out (``supernet.uniform_share``);
      * template, gate-free (warm-up, or evaluation without a strategy): both paths, no masks;
      * hard (``state`` set by a strategy): only the kept paths are computed; a dropped path costs nothing.
        ``forward`` returns ``None`` for the state ``none``; the owning layer decides what that means.

    ``allow_none`` says whether the owning layer has a bypass (residual or dense connection) that makes the state
    ``none`` meaningful.
    """

    def __init__(self, s_path: nn.Module, st_path: nn.Module, *, gate: dict | None = None, allow_none: bool = False):
        super().__init__()
        gate = gate or {}
        self.s = s_path
        self.st = st_path
        self.gate_s = VariationalDropPath(**gate)
        self.gate_st = VariationalDropPath(**gate)
        self.allow_none = allow_none
        self.state: int | None = None
        self.gates_active = True
        self.uniform_states = False  # gated training draws hard states uniformly instead of from the gates
        self.frozen = False

    def set_state(self, state: int | None) -> None:
        if state is not None and state not in STATE_NAMES:
            raise ValueError(f"unknown state {state!r}")
        if state == NONE and not self.allow_none:
            raise ValueError("this layer has no bypass, so the state 'none' is not allowed")
        if self.frozen and state != self.state:
            raise ValueError("this layer was exported for one strategy and cannot change state")
        self.state = state

    def forward(self, x: Tensor) -> Tensor | None:
        state = self.state
        if state is None:
            ys, yst = self.s(x), self.st(x)
            if self.training and self.gates_active:
                if self.uniform_states:
                    masks = uniform_state_masks(x.shape[0], self.allow_none, x.device, ys.dtype)
                else:  # both gates' masks from one draw, then one fused gated sum (see gated_sum)
                    masks = sample_masks((self.gate_s, self.gate_st), x.shape[0], x.device, ys.dtype)
                return gated_sum(ys, yst, masks[0], masks[1])
            return ys + yst
        if state == BOTH:
            return self.s(x) + self.st(x)
        if state == S:
            return self.s(x)
        if state == ST:
            return self.st(x)
        return None

    def drop_rates(self) -> Tensor:
        """``(2,)`` drop rates (p_S, p_ST), detached."""
        return torch.stack([self.gate_s.p, self.gate_st.p]).detach()

    def kl(self, n_train: int, k: float, form: str, price: str = "weight") -> Tensor:
        """Sum of the two gates' KL terms (docs/method.md §4), pricing ``price`` (see :func:`paths_price`)."""
        paths = [self.s, self.st]
        return kl_sum([self.gate_s, self.gate_st], paths_price(paths, price).to(self.gate_s.p_logit.device),
                      n_train, k, form)

    def freeze(self, state: int) -> None:
        """Turn into a plain unit for ``state``: drop the unused path's modules and both gates (no logits left)."""
        self.set_state(state)
        if not state & S:
            self.s = None
        if not state & ST:
            self.st = None
        self.gate_s = None
        self.gate_st = None
        self.frozen = True

    def extra_repr(self) -> str:
        state = "template" if self.state is None else STATE_NAMES[self.state]
        return f"state={state}, allow_none={self.allow_none}"


class InputGate(nn.Module):
    """One Variational DropPath on the input of a layer without an S / ST choice (the reference code's gate on the
    classifier input): ``x * z`` with one relaxed-Bernoulli keep mask ``z`` per sample while training with the gates
    active, ``x`` otherwise (warm-up, uniform-state steps, evaluation). Any ``(N, ...)`` shape."""

    def __init__(self, gate: dict | None = None):
        super().__init__()
        self.gate = VariationalDropPath(**(gate or {}))
        self.gates_active = True
        self.uniform_states = False

    def forward(self, x: Tensor) -> Tensor:
        if self.gate is None or not (self.training and self.gates_active) or self.uniform_states:
            return x
        mask = sample_masks([self.gate], x.shape[0], x.device, x.dtype)[0]
        return x * mask.view(x.shape[0], *(1,) * (x.dim() - 1))

    def kl(self, layer: nn.Linear, n_train: int, k: float, form: str, price: str = "weight") -> Tensor:
        """The gate's KL term, pricing the gated layer ``layer`` as :func:`paths_price` prices a path's convs."""
        if price not in KL_PRICES:
            raise ValueError(f"kl price must be one of {KL_PRICES}, got {price!r}")
        w = layer.weight
        priced = {"weight": lambda: w.pow(2).sum(), "gamma": lambda: w.new_zeros(()),
                  "normalized": lambda: w.new_tensor(layer.out_features / 3.0)}[price]()
        return kl_sum([self.gate], priced.reshape(1), n_train, k, form)

    def freeze(self) -> None:
        """Drop the gate (an exported network has no logits left)."""
        self.gate = None

