"""Exposure (docs/method.md §5): how much of the supernet's gated training a strategy's configuration received,
read from the drop-rate history the training records. A score through shared weights measures a configuration
only as far as those weights were trained in it; a score of a configuration the gates almost never drew is an
extrapolation.

In a gated step every clip draws each gate's relaxed-Bernoulli mask; the mask falls below 1/2 (the path is
dropped) with probability exactly its drop rate ``p`` (the logistic noise of the binary-concrete sample is
symmetric), whatever ``gate.keep_prob`` says about reading the posterior. So under drop rates ``(p_S, p_ST)`` a
clip runs a layer in state S with probability ``(1 - p_S) p_ST``, ST with ``p_S (1 - p_ST)``, S+ST with
``(1 - p_S)(1 - p_ST)`` and none with ``p_S p_ST`` (training draws none even where a strategy may not use it). A
share ``u`` of the steps (``supernet.uniform_share``) draws one hard state per clip uniformly from a layer's ``n``
allowed states instead, so the probability of state ``s`` in layer ``l`` in gated epoch ``e`` is

    q_e,l(s) = (1 - u) P(s | p_e,l) + u [s allowed] / n_l

with ``p_e,l`` the drop rates recorded at the end of epoch ``e``. For a strategy ``(s_1 .. s_L)``:

* ``exposure_l = mean over the gated epochs of q_e,l(s_l)``: the share of gated training clips that ran layer
  ``l`` in the state the strategy uses;
* ``exposure = min_l exposure_l`` (and ``exposure_layer``, the argmin): the least-trained layer of the
  configuration; a score is an *extrapolation* when this is below ``scoring.min_exposure``;
* ``exposure_joint = mean_e [(1 - u) prod_l P(s_l | p_e,l) + u prod_l [s_l allowed] / n_l]``: the share of gated
  training clips that ran exactly this configuration (a whole step is either gated or uniform).

The gate-free warm-up runs every layer as S+ST and is not counted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stfusion.core.strategies import NONE, Posterior
from stfusion.errors import StfusionError

#: the columns :func:`exposure_table` adds to a table of strategies
COLUMNS = ("exposure", "exposure_layer", "exposure_joint")


def rate_history(rates: pd.DataFrame, warmup_epochs: int, n_layers: int) -> np.ndarray:
    """The drop rates at the end of every gated epoch, ``(E, L, 2)`` (p_S, p_ST), from the training's table
    (one row per epoch and layer: ``epoch`` (1-based), ``layer``, ``p_S``, ``p_ST``); epochs up to
    ``warmup_epochs`` are the gate-free warm-up and are left out."""
    gated = rates[rates["epoch"] > warmup_epochs]
    epochs = sorted(gated["epoch"].unique())
    if not epochs:
        raise StfusionError("the drop-rate history holds no gated epoch: exposure is undefined")
    wide = gated.pivot(index="epoch", columns="layer", values=["p_S", "p_ST"])
    if wide.isna().any().any() or sorted(gated["layer"].unique()) != list(range(n_layers)):
        raise StfusionError(f"the drop-rate history does not hold layers 0..{n_layers - 1} in every gated epoch")
    return np.stack([wide["p_S"].to_numpy(float), wide["p_ST"].to_numpy(float)], axis=-1)


def state_draw_probs(rates: np.ndarray, allow_none) -> tuple[np.ndarray, np.ndarray]:
    """The probability of every state in a training clip, columns indexed by state (none, S, ST, S+ST): in a
    gated step under drop rates ``rates`` ``(E, L, 2)``, ``(E, L, 4)``; in a uniform step, ``(L, 4)``."""
    allow_none = np.asarray(allow_none, bool)
    gated = np.stack([Posterior(1.0 - r, allow_none, "plain").gate_state_probs() for r in np.asarray(rates, float)])
    allowed = np.ones(gated.shape[1:], bool)
    allowed[~allow_none, NONE] = False
    return gated, allowed / allowed.sum(axis=1, keepdims=True)


def exposure_table(rates: np.ndarray, states: np.ndarray, allow_none, uniform_share: float) -> pd.DataFrame:
    """:data:`COLUMNS` for strategies ``states`` ``(K, L)`` (state ints) under the gated epochs' drop rates
    ``rates`` ``(E, L, 2)`` and a share ``uniform_share`` of uniform steps (see the module docstring): one row a
    strategy, in the given order."""
    states = np.asarray(states, int)
    rates = np.asarray(rates, float)
    if states.ndim != 2 or rates.ndim != 3 or states.shape[1] != rates.shape[1]:
        raise StfusionError(f"strategies of shape {states.shape} do not match drop rates of shape {rates.shape}")
    gated, uniform = state_draw_probs(rates, allow_none)
    layers = np.arange(states.shape[1])[None, :]
    g, un = gated[:, layers, states], uniform[layers, states]  # (E, K, L), (K, L)
    per_layer = (1.0 - uniform_share) * g.mean(axis=0) + uniform_share * un
    joint = (1.0 - uniform_share) * g.prod(axis=2).mean(axis=0) + uniform_share * un.prod(axis=1)
    return pd.DataFrame({"exposure": per_layer.min(axis=1), "exposure_layer": per_layer.argmin(axis=1),
                         "exposure_joint": joint})
