"""Strategies and exact posterior quantities of the factorised probability space."""

import itertools
import math

import numpy as np
import pytest

from stfusion.errors import StfusionError
from stfusion.core.strategies import BOTH, NONE, S, ST, Posterior, Strategy, enumerate_all, families, keep_probability


@pytest.fixture
def posterior():
    rng = np.random.default_rng(3)
    return Posterior.from_drop_rates(rng.uniform(0.05, 0.9, (3, 2)))


def test_probabilities_sum_to_one_with_none(posterior):
    total = sum(posterior.prob(s) for s in enumerate_all(3))
    assert len(enumerate_all(3)) == 64
    assert total == pytest.approx(1.0, abs=1e-12)


def test_probabilities_sum_to_one_without_none():
    rng = np.random.default_rng(4)
    post = Posterior.from_drop_rates(rng.uniform(0.05, 0.9, (3, 2)), allow_none=[False, True, False])
    strategies = enumerate_all(3, [False, True, False])
    assert len(strategies) == 3 * 4 * 3
    assert sum(post.prob(s) for s in strategies) == pytest.approx(1.0, abs=1e-12)
    assert post.prob(Strategy((NONE, S, S))) == 0.0


def test_product_structure_of_marginals(posterior):
    a, b = posterior.keep[:, 0], posterior.keep[:, 1]
    probs = posterior.layer_probs()
    np.testing.assert_allclose(probs[:, S], a * (1 - b))
    np.testing.assert_allclose(probs[:, ST], (1 - a) * b)
    np.testing.assert_allclose(probs[:, BOTH], a * b)
    np.testing.assert_allclose(probs[:, NONE], (1 - a) * (1 - b))
    # marginal of a state at a layer = sum of the probabilities of all strategies with that state there
    for layer, state in itertools.product(range(3), range(4)):
        total = sum(posterior.prob(s) for s in enumerate_all(3) if s.states[layer] == state)
        assert total == pytest.approx(probs[layer, state], abs=1e-12)


def test_keep_probability_rules():
    p = np.array([0.04, 0.25])
    np.testing.assert_allclose(keep_probability(p, "paper"), [0.8, 0.5])
    np.testing.assert_allclose(keep_probability(p, "plain"), [0.96, 0.75])
    with pytest.raises(StfusionError):
        keep_probability(p, "sqrt")


def test_top_k_agrees_with_brute_force(posterior):
    brute = sorted(((posterior.log_prob(s), s.id) for s in enumerate_all(3)), reverse=True)
    top = posterior.top_k(12)
    assert [s.id for s, _ in top] == [i for _, i in brute[:12]]
    for (s, lp), (blp, _) in zip(top, brute):
        assert lp == pytest.approx(blp)
    assert posterior.most_probable().id == brute[0][1]


def test_entropy_equals_sum_over_strategies(posterior):
    exact = -sum(posterior.prob(s) * posterior.log_prob(s) for s in enumerate_all(3))
    assert posterior.entropy() == pytest.approx(exact, rel=1e-10)


def test_sampling_is_seeded_and_matches_marginals(posterior):
    a = posterior.sample(50, seed=7)
    assert a == posterior.sample(50, seed=7)
    assert a != posterior.sample(50, seed=8)
    states = np.array([s.states for s in posterior.sample(40000, seed=1)])
    freq = np.stack([(states == k).mean(0) for k in range(4)], axis=1)
    np.testing.assert_allclose(freq, posterior.layer_probs(), atol=0.012)


def test_text_and_id_round_trip():
    s = Strategy((S, ST, BOTH, NONE))
    assert s.text == "S|ST|S+ST|none"
    assert s.id == "stbn"
    assert Strategy.parse(s.text) == s
    assert Strategy.parse(s.id) == s
    assert s.counts() == {"S": 1, "ST": 1, "S+ST": 1, "none": 1}


@pytest.mark.parametrize("bad", ["S|XT|ST", "S||ST", "", "qq"])
def test_unknown_strategy_text_is_rejected(bad):
    with pytest.raises(StfusionError):
        Strategy.parse(bad)


def test_wrong_number_of_layers_is_rejected():
    with pytest.raises(StfusionError, match="has 2 layers but the network has 3"):
        Strategy.parse("S|ST", n_layers=3)


@pytest.mark.parametrize("n", [1, 5, 6, 61])
def test_families_for_any_depth(n):
    fam = families(n, stage_of_layer=[i * 3 // n for i in range(n)])
    assert all(len(s) == n for s in fam.values())
    assert set(fam["all-S"].states) == {S}
    assert set(fam["all-ST"].states) == {ST}
    assert set(fam["all-S+ST"].states) == {BOTH}
    half = n // 2
    assert fam["bottom-S/top-ST"].states == (S,) * half + (ST,) * (n - half)
    assert fam["alternating-S/ST"].states[:2] == ((S, ST) if n > 1 else (S,))


def test_log_prob_is_log_of_product(posterior):
    s = Strategy((S, BOTH, ST))
    probs = posterior.layer_probs()
    assert posterior.log_prob(s) == pytest.approx(math.log(probs[0, S] * probs[1, BOTH] * probs[2, ST]))
