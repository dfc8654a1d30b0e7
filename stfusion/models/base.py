"""What every template network shares: its fusion layers, strategies, gates and KL term."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn

from stfusion.errors import StfusionError
from stfusion.core.droppath import kl_sum
from stfusion.core.fusion import FusionPaths, InputGate, paths_price
from stfusion.core.strategies import Posterior, Strategy, families


class FusionNetwork(nn.Module):
    """Base class of template networks. Subclasses build their modules; this class finds the gated
    :class:`~stfusion.core.fusion.FusionPaths` in definition order and offers the strategy-level API."""

    arch: dict  # the constructor arguments, stored in checkpoints to detect a different architecture

    @property
    def fusion_layers(self) -> list[FusionPaths]:
        return [m for m in self.modules() if isinstance(m, FusionPaths)]

    def gated_inputs(self) -> list[tuple[InputGate, nn.Module]]:
        """Gates on the input of a layer without an S / ST choice, each with the layer it gates (whose weights its
        KL term prices); outside the strategies. None by default."""
        return []

    @property
    def n_fusion_layers(self) -> int:
        return len(self.fusion_layers)

    @property
    def allow_none(self) -> list[bool]:
        return [f.allow_none for f in self.fusion_layers]

    @property
    def stage_of_layer(self) -> list[int]:
        """Stage index of each fusion layer (for per-stage families and plots)."""
        return list(self._stage_of_layer)

    def families(self) -> dict[str, Strategy]:
        """The named strategies every strategy table lists (:func:`stfusion.core.strategies.families`)."""
        return families(self.n_fusion_layers, self.stage_of_layer)

    def sequence(self) -> list[nn.Module]:
        """The network as a chain of modules: ``forward(x)`` equals applying them in order, and every fusion
        layer lies inside exactly one of them. Prefix-shared scoring walks this chain."""
        raise NotImplementedError(f"{type(self).__name__} does not expose a module chain")

    def set_strategy(self, strategy: Strategy | None) -> None:
        """Hard-gate mode for ``strategy`` (only kept paths run), or back to the template with ``None``."""
        layers = self.fusion_layers
        if strategy is None:
            for f in layers:
                f.set_state(None)
            return
        if len(strategy) != len(layers):
            raise StfusionError(f"strategy has {len(strategy)} layers but the network has {len(layers)}")
        for i, (f, s) in enumerate(zip(layers, strategy.states)):
            try:
                f.set_state(s)
            except ValueError as exc:
                raise StfusionError(f"layer {i}: {exc}") from None

    @property
    def strategy(self) -> Strategy | None:
        states = [f.state for f in self.fusion_layers]
        return None if any(s is None for s in states) else Strategy(tuple(states))

    def set_gates_active(self, active: bool) -> None:
        """``False`` for the gate-free warm-up: both paths on, no masks, no KL."""
        for f in self.fusion_layers:
            f.gates_active = active
        for g, _ in self.gated_inputs():
            g.gates_active = active

    def set_uniform_states(self, uniform: bool) -> None:
        """``True``: gated training draws every layer's state uniformly per sample, ignoring the gates (the
        steps of ``supernet.uniform_share``); ``False``: masks from the gates again."""
        for f in self.fusion_layers:
            f.uniform_states = uniform
        for g, _ in self.gated_inputs():
            g.uniform_states = uniform

    def gate_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.endswith("p_logit")]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.endswith("p_logit")]

    def drop_rates(self) -> np.ndarray:
        """``(L, 2)`` learned drop rates (p_S, p_ST) of every fusion layer."""
        return torch.stack([f.drop_rates() for f in self.fusion_layers]).cpu().double().numpy()

    def posterior(self, rule: str = "paper") -> Posterior:
        return Posterior.from_drop_rates(self.drop_rates(), self.allow_none, rule)

    def kl(self, n_train: int, k: float, form: str = "linear", price: str = "weight") -> Tensor:
        """Sum of the KL terms of every gate (docs/method.md §4), computed for all gates at once: a few ops in all
        instead of about ten per gate, which on a GPU are kernel launches that cost more than the arithmetic.
        ``price`` says what each kept path pays for (:func:`stfusion.core.fusion.paths_price`)."""
        layers = self.fusion_layers
        gates = [g for f in layers for g in (f.gate_s, f.gate_st)]
        priced = paths_price([p for f in layers for p in (f.s, f.st)], price).to(gates[0].p_logit.device)
        total = kl_sum(gates, priced, n_train, k, form)
        for g, layer in self.gated_inputs():
            total = total + g.kl(layer, n_train, k, form, price)
        return total

    def export(self, strategy: Strategy) -> "FusionNetwork":
        """A plain copy for ``strategy``: only the kept convs, no gates and no trainable logits; weights are the
        template's (a derived network, docs/method.md §6)."""
        net = copy.deepcopy(self)
        net.set_strategy(strategy)
        net.arch = {**self.arch, "strategy": strategy.id}
        for f, s in zip(net.fusion_layers, strategy.states):
            f.freeze(s)
        for g, _ in net.gated_inputs():
            g.freeze()
        return net
