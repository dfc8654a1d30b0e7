"""Fusion strategies and the factorised posterior over them (docs/method.md §5).

A strategy is one state per fusion layer. States are bit masks: bit 0 keeps S, bit 1 keeps ST.

    none = 0, S = 1, ST = 2, S+ST = 3

Text form: ``S|ST|S+ST|none``; file-name-safe id: one letter a layer, ``s`` (S), ``t`` (ST), ``b`` (both), ``n``.

The posterior is factorised over gates: with keep probabilities ``a = keep(S)`` and ``b = keep(ST)`` of a layer,
``P(S) = a(1-b), P(ST) = (1-a)b, P(S+ST) = ab, P(none) = (1-a)(1-b)``. Layers whose backbone has no bypass do not
allow ``none``; there the layer distribution is the gate product conditioned on "not none" (renormalised over the
three other states), which is exactly what rejection-sampling the gates would give.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from stfusion.errors import StfusionError

NONE, S, ST, BOTH = 0, 1, 2, 3
STATE_NAMES = {NONE: "none", S: "S", ST: "ST", BOTH: "S+ST"}
STATE_BY_NAME = {v: k for k, v in STATE_NAMES.items()}
STATE_LETTERS = {NONE: "n", S: "s", ST: "t", BOTH: "b"}
STATE_BY_LETTER = {v: k for k, v in STATE_LETTERS.items()}
STATE_ORDER = (S, ST, BOTH, NONE)  # column order of every table
KEEP_PROB_RULES = ("paper", "plain")


@dataclass(frozen=True)
class Strategy:
    """A fusion strategy: one state per fusion layer (ints from ``STATE_NAMES``)."""

    states: tuple[int, ...]

    def __post_init__(self):
        bad = [s for s in self.states if s not in STATE_NAMES]
        if bad:
            raise StfusionError(f"unknown fusion state {bad[0]!r}")

    def __len__(self) -> int:
        return len(self.states)

    @property
    def text(self) -> str:
        return "|".join(STATE_NAMES[s] for s in self.states)

    @property
    def id(self) -> str:
        return "".join(STATE_LETTERS[s] for s in self.states)

    def counts(self) -> dict[str, int]:
        return {STATE_NAMES[s]: self.states.count(s) for s in STATE_ORDER}

    @classmethod
    def parse(cls, text: str, n_layers: int | None = None) -> "Strategy":
        """Read the text form (``S|ST|S+ST``) or the id form (``stb``); check the length when ``n_layers`` is given."""
        text = text.strip()
        if "|" in text or text in STATE_BY_NAME:
            parts = [p.strip() for p in text.split("|")]
            unknown = [p for p in parts if p not in STATE_BY_NAME]
            if unknown:
                raise StfusionError(
                    f"unknown fusion state {unknown[0]!r} in strategy {text!r} (use S, ST, S+ST or none)"
                )
            states = tuple(STATE_BY_NAME[p] for p in parts)
        elif text and all(c in STATE_BY_LETTER for c in text):
            states = tuple(STATE_BY_LETTER[c] for c in text)
        else:
            raise StfusionError(f"cannot read strategy {text!r}: write states as S|ST|S+ST|none or an id like 'stb'")
        if n_layers is not None and len(states) != n_layers:
            raise StfusionError(f"strategy {text!r} has {len(states)} layers but the network has {n_layers}")
        return cls(states)

    @classmethod
    def uniform(cls, state: int, n_layers: int) -> "Strategy":
        return cls((state,) * n_layers)


def keep_probability(p: np.ndarray, rule: str = "paper") -> np.ndarray:
    """Keep probability of a unit from its drop rate: ``1 - sqrt(p)`` (paper, Eq. 7) or ``1 - p`` (plain)."""
    p = np.asarray(p, dtype=np.float64)
    if rule == "paper":
        return 1.0 - np.sqrt(p)
    if rule == "plain":
        return 1.0 - p
    raise StfusionError(f"keep_prob must be one of {KEEP_PROB_RULES}, got {rule!r}")


class Posterior:
    """The factorised distribution over strategies given per-layer keep probabilities.

    Args:
        keep: ``(L, 2)`` keep probabilities of (S, ST) per fusion layer.
        allow_none: ``(L,)`` whether each layer allows the state ``none``.
        rule: the keep-probability rule used to build ``keep`` (a label carried into every table).
    """

    def __init__(self, keep: np.ndarray, allow_none: Sequence[bool] | None = None, rule: str = "paper"):
        keep = np.asarray(keep, dtype=np.float64)
        if keep.ndim != 2 or keep.shape[1] != 2:
            raise ValueError(f"keep must have shape (L, 2), got {keep.shape}")
        self.keep = keep
        self.allow_none = np.ones(len(keep), bool) if allow_none is None else np.asarray(allow_none, bool)
        self.rule = rule

    @classmethod
    def from_drop_rates(cls, p: np.ndarray, allow_none=None, rule: str = "paper") -> "Posterior":
        """From ``(L, 2)`` learned drop rates (p_S, p_ST)."""
        return cls(keep_probability(p, rule), allow_none, rule)

    @property
    def n_layers(self) -> int:
        return len(self.keep)

    def gate_state_probs(self) -> np.ndarray:
        """``(L, 4)`` unconditioned product probabilities, columns indexed by state (none, S, ST, S+ST)."""
        a, b = self.keep[:, 0], self.keep[:, 1]
        return np.stack([(1 - a) * (1 - b), a * (1 - b), (1 - a) * b, a * b], axis=1)

    def layer_probs(self) -> np.ndarray:
        """``(L, 4)`` per-layer state distribution (conditioned on not-none where none is not allowed)."""
        probs = self.gate_state_probs()
        probs[~self.allow_none, NONE] = 0.0
        return probs / probs.sum(axis=1, keepdims=True)

    def log_prob(self, strategy: Strategy) -> float:
        self._check(strategy)
        probs = self.layer_probs()
        with np.errstate(divide="ignore"):
            return float(np.sum(np.log(probs[np.arange(self.n_layers), list(strategy.states)])))

    def prob(self, strategy: Strategy) -> float:
        return math.exp(self.log_prob(strategy))

    def entropy(self) -> float:
        """Entropy (nats) of the strategy distribution: the sum of the per-layer entropies."""
        p = self.layer_probs()
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(-np.nansum(np.where(p > 0, p * np.log(p), 0.0)))

    def most_probable(self) -> Strategy:
        return Strategy(tuple(int(i) for i in self.layer_probs().argmax(axis=1)))

    def top_k(self, k: int) -> list[tuple[Strategy, float]]:
        """The ``k`` most probable strategies with their log-probabilities, best first (exact, best-first search)."""
        logp = np.log(np.maximum(self.layer_probs(), 1e-300))
        logp[self.layer_probs() == 0] = -np.inf
        order = np.argsort(-logp, axis=1, kind="stable")  # (L, 4) states per layer, best first
        sorted_lp = np.take_along_axis(logp, order, axis=1)
        n_options = np.isfinite(sorted_lp).sum(axis=1)
        start = (0,) * self.n_layers
        heap = [(-float(sorted_lp[:, 0].sum()), start)]
        seen = {start}
        out: list[tuple[Strategy, float]] = []
        while heap and len(out) < k:
            neg, ranks = heapq.heappop(heap)
            out.append((Strategy(tuple(int(order[i, r]) for i, r in enumerate(ranks))), -neg))
            for i in range(self.n_layers):
                if ranks[i] + 1 < n_options[i]:
                    nxt = ranks[:i] + (ranks[i] + 1,) + ranks[i + 1 :]
                    if nxt not in seen:
                        seen.add(nxt)
                        score = -neg - sorted_lp[i, ranks[i]] + sorted_lp[i, ranks[i] + 1]
                        heapq.heappush(heap, (-float(score), nxt))
        return out

    def sample(self, n: int, seed: int) -> list[Strategy]:
        """``n`` strategies drawn independently from the posterior with ``numpy.random.default_rng(seed)``."""
        rng = np.random.default_rng(seed)
        cdf = np.cumsum(self.layer_probs(), axis=1)
        u = rng.random((n, self.n_layers, 1))
        idx = (u > cdf[None]).sum(axis=2).clip(max=3)
        return [Strategy(tuple(int(i) for i in row)) for row in idx]

    def marginals(self, raw_p: np.ndarray | None = None) -> pd.DataFrame:
        """Layer-level preference: one row a layer, columns P(S), P(ST), P(S+ST), P(none) (+ raw p if given)."""
        probs = self.layer_probs()
        df = pd.DataFrame({"layer": np.arange(self.n_layers)})
        for s in STATE_ORDER:
            df[f"P({STATE_NAMES[s]})"] = probs[:, s]
        df["keep_S"] = self.keep[:, 0]
        df["keep_ST"] = self.keep[:, 1]
        if raw_p is not None:
            df["p_S"] = np.asarray(raw_p)[:, 0]
            df["p_ST"] = np.asarray(raw_p)[:, 1]
        df["keep_prob_rule"] = self.rule
        return df

    def _check(self, strategy: Strategy) -> None:
        if len(strategy) != self.n_layers:
            raise StfusionError(f"strategy has {len(strategy)} layers but the network has {self.n_layers}")


def families(n_layers: int, stage_of_layer: Sequence[int] | None = None) -> dict[str, Strategy]:
    """The hand-designed families of docs/method.md §5, built for any depth.

    ``stage_of_layer`` (stage index per fusion layer) adds the per-stage patterns: ST in one stage and S+ST
    elsewhere (the paper's derived ResNet has ST in stage 3 only).
    """
    half = n_layers // 2
    out = {
        "all-S": Strategy.uniform(S, n_layers),
        "all-ST": Strategy.uniform(ST, n_layers),
        "all-S+ST": Strategy.uniform(BOTH, n_layers),
        "bottom-S/top-ST": Strategy((S,) * half + (ST,) * (n_layers - half)),
        "bottom-ST/top-S": Strategy((ST,) * half + (S,) * (n_layers - half)),
        "alternating-S/ST": Strategy(tuple(S if i % 2 == 0 else ST for i in range(n_layers))),
        "alternating-S+ST/S": Strategy(tuple(BOTH if i % 2 == 0 else S for i in range(n_layers))),
    }
    if stage_of_layer is not None:
        stages = sorted(set(stage_of_layer))
        if len(stages) > 1:
            for st in stages:
                out[f"ST-in-stage{st + 1}/S+ST-elsewhere"] = Strategy(
                    tuple(ST if s == st else BOTH for s in stage_of_layer)
                )
    return out


#: Tran et al.'s stage numbering: stage 0 is conv1 (the stem), stage ``i`` is conv{i+1}_x
LITERATURE_STAGES = 5


def literature_families(stage_of_layer: Sequence[int], three_d: bool = True) -> dict[str, Strategy]:
    """The strategies of Tran et al. (CVPR 2018) on a network whose fusion layers lie in their five stages
    (``stage_of_layer``: 0 = conv1, the stem; ``i`` = conv{i+1}_x):

    * R2D: every layer S; R3D (``three_d``) or R(2+1)D (a factorised ST unit): every layer ST;
    * MCx (x = 2..5, ``three_d`` only): ST below stage conv{x}, S from it on (MC3: conv1 and conv2_x 3D);
    * rMCx (x = 2..5, ``three_d`` only): S below conv{x}, ST from it on.
    """
    stages = list(stage_of_layer)
    if sorted(set(stages)) != list(range(LITERATURE_STAGES)):
        raise StfusionError(f"the literature strategies need fusion layers in stages 0-4, got {sorted(set(stages))}")
    out = {"R2D": Strategy.uniform(S, len(stages)),
           "R3D" if three_d else "R(2+1)D": Strategy.uniform(ST, len(stages))}
    if three_d:
        for x in range(2, LITERATURE_STAGES + 1):
            out[f"MC{x}"] = Strategy(tuple(ST if s < x - 1 else S for s in stages))
        for x in range(2, LITERATURE_STAGES + 1):
            out[f"rMC{x}"] = Strategy(tuple(S if s < x - 1 else ST for s in stages))
    return out


def enumerate_all(n_layers: int, allow_none: Iterable[bool] | None = None) -> list[Strategy]:
    """Every strategy of a (small) network; for checks against exact posterior quantities."""
    allow = list(allow_none) if allow_none is not None else [True] * n_layers
    options = [[s for s in STATE_ORDER if s != NONE or a] for a in allow]
    out = [()]
    for opts in options:
        out = [prev + (s,) for prev in out for s in opts]
    return [Strategy(t) for t in out]
