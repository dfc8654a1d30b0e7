"""Variational DropPath: a learned Bernoulli gate on a whole path (docs/method.md §4).

Each gate holds one scalar logit; ``p = sigmoid(logit)`` is the probability that the path is *dropped*.
In training the gate draws one relaxed-Bernoulli (binary concrete) mask per sample, shape ``(N, 1, 1, 1, 1)``,
so gradients reach the logit; the KL term of concrete dropout (Gal, Hron, Kendall 2017) prices each kept path.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

KL_FORMS = ("linear", "paper")


class VariationalDropPath(nn.Module):
    """A learned drop gate for one path.

    Args:
        init_p: initial drop rate p (the paper uses 0.1).
        temperature: relaxed Bernoulli temperature t (the paper uses 0.2).
        rescale: divide kept masks by ``1 - p`` (inverted dropout). Off in the paper's experimental code.
        p_clamp: p is clamped to ``[p_clamp, 1 - p_clamp]`` so ``log p`` and ``log(1 - p)`` stay finite
            (the experimental code has no guard and can produce NaN).
    """

    def __init__(self, init_p: float = 0.1, temperature: float = 0.2, rescale: bool = False, p_clamp: float = 1e-4):
        super().__init__()
        if not 0.0 < init_p < 1.0:
            raise ValueError(f"init_p must lie in (0, 1), got {init_p}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.p_logit = nn.Parameter(torch.tensor(math.log(init_p) - math.log1p(-init_p)))
        self.temperature = float(temperature)
        self.rescale = bool(rescale)
        self.p_clamp = float(p_clamp)

    @property
    def p(self) -> Tensor:
        """Drop rate, a 0-dim tensor in ``[p_clamp, 1 - p_clamp]`` (differentiable inside the clamp)."""
        return torch.sigmoid(self.p_logit).clamp(self.p_clamp, 1.0 - self.p_clamp)

    def sample_mask(self, n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Relaxed-Bernoulli keep masks, one per sample: ``(n, 1, 1, 1, 1)`` in (0, 1).

        ``d = sigmoid((log p - log(1-p) + log(-log u1) - log(-log u2)) / t)`` is the relaxed drop indicator;
        the mask is ``1 - d`` (divided by ``1 - p`` when ``rescale``).
        """
        return sample_masks([self], n, device, dtype).view(n, 1, 1, 1, 1)

    def kl(self, weight_sq: Tensor, n_train: int, k: float, form: str = "linear") -> Tensor:
        """KL term of this gate (docs/method.md §4).

        ``KL = c * (1 - p) * ||W||^2 + (1/N) * (p log p + (1 - p) log(1 - p))`` with ``c = k / N`` (``linear``,
        the experimental code) or ``c = k^2 / (2N)`` (``paper``, the paper's text). ``weight_sq`` is ``||W||^2``
        of the path's weights. The entropy part is not scaled by channel count.
        """
        return kl_sum([self], weight_sq.reshape(1), n_train, k, form)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, temperature={self.temperature}, rescale={self.rescale}"


def sample_masks(gates: Sequence[VariationalDropPath], n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Keep masks of several gates at once: ``(len(gates), n)``, row ``g`` distributed exactly as
    ``gates[g].sample_mask(n, ...)`` (independent uniforms per gate and sample).

    One uniform draw and one chain of small ops for all the gates, instead of one chain per gate: the gated
    layers call this once for their two paths. Gates with different temperature, clamp or rescale settings
    are handled one by one.
    """
    first = gates[0]
    if any((g.temperature, g.p_clamp, g.rescale) != (first.temperature, first.p_clamp, first.rescale) for g in gates):
        return torch.cat([sample_masks([g], n, device, dtype) for g in gates])
    logit = first.p_logit[None] if len(gates) == 1 else torch.stack([g.p_logit for g in gates])
    p = torch.sigmoid(logit).clamp(first.p_clamp, 1.0 - first.p_clamp)  # (G,), as VariationalDropPath.p
    u = torch.rand(2, len(gates), n, device=device).clamp_(1e-7, 1.0 - 1e-7)
    noise = torch.log(-torch.log(u[0])) - torch.log(-torch.log(u[1]))
    drop = torch.sigmoid(((torch.log(p) - torch.log1p(-p))[:, None] + noise) / first.temperature)
    mask = 1.0 - drop
    if first.rescale:
        mask = mask / (1.0 - p)[:, None]
    return mask.to(dtype)


def kl_sum(gates: Sequence[VariationalDropPath], weight_sq: Tensor, n_train: int, k: float,
           form: str = "linear") -> Tensor:
    """Sum of the KL terms of ``gates`` (see :meth:`VariationalDropPath.kl`) in one vectorised computation;
    ``weight_sq: (len(gates),)`` holds ``||W||^2`` of each gate's path. A 0-dim tensor."""
    if form not in KL_FORMS:
        raise ValueError(f"kl form must be one of {KL_FORMS}, got {form!r}")
    first = gates[0]
    if any(g.p_clamp != first.p_clamp for g in gates):
        return sum(kl_sum([g], w.reshape(1), n_train, k, form) for g, w in zip(gates, weight_sq))
    coef = k / n_train if form == "linear" else k * k / (2.0 * n_train)
    logit = first.p_logit[None] if len(gates) == 1 else torch.stack([g.p_logit for g in gates])
    p = torch.sigmoid(logit).clamp(first.p_clamp, 1.0 - first.p_clamp)  # (G,), as VariationalDropPath.p
    entropy = p * torch.log(p) + (1.0 - p) * torch.log1p(-p)
    return (coef * (1.0 - p) * weight_sq + entropy / n_train).sum()
