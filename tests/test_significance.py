"""Paired significance: the t-test equals scipy's ``ttest_rel``, the randomisation test equals a brute-force
enumeration of every sign assignment, identical systems give delta 0 and p 1."""

from __future__ import annotations

import itertools
import random
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from retrieval.significance import compare_to_baselines, paired_compare, paired_t_p, randomisation_p


def brute_force_p(differences: list[float]) -> float:
    """Every one of the 2^n sign assignments, in exact rational arithmetic: share with |sum| >= observed."""
    exact = [Fraction(d) for d in differences]
    observed = abs(sum(exact))
    hits = sum(abs(sum(s * d for s, d in zip(signs, exact))) >= observed
               for signs in itertools.product((1, -1), repeat=len(exact)))
    return hits / 2 ** len(exact)


def test_t_test_p_equals_scipy_ttest_rel() -> None:
    rng = np.random.default_rng(1)
    for n in (2, 3, 10, 300):
        a, b = rng.random(n), rng.random(n) * 0.9
        expected = stats.ttest_rel(a, b).pvalue
        assert paired_t_p(a - b) == pytest.approx(expected, rel=1e-9, abs=1e-15)
        comparison = paired_compare(dict(enumerate(map(float, a))), dict(enumerate(map(float, b))))
        assert comparison.p_t == pytest.approx(expected, rel=1e-9, abs=1e-15)
        assert comparison.delta == pytest.approx(float(np.mean(a) - np.mean(b)), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_exact_randomisation_equals_brute_force_enumeration(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(20):
        n = rng.randint(1, 9)
        # dyadic values (exact in binary) give many exact ties; zeros must not change the answer
        differences = [rng.choice([-0.5, -0.25, 0.0, 0.125, 0.25, 0.75]) for _ in range(n)]
        if rng.random() < 0.5:
            differences = [rng.uniform(-1, 1) for _ in range(n)]
        p, used, exact = randomisation_p(np.array(differences), draws=10_000)
        assert exact and used == 2 ** sum(d != 0 for d in differences)
        assert p == pytest.approx(brute_force_p(differences), abs=1e-12), differences


def test_sampled_randomisation_is_seeded_and_close_to_the_exact_p() -> None:
    rng = np.random.default_rng(3)
    differences = rng.normal(0.02, 0.1, size=14)  # 2^14 = 16,384 assignments: exact above 16,384 draws
    exact_p, used, exact = randomisation_p(differences, draws=20_000)
    assert exact and used == 2 ** 14
    sampled_p, used, exact = randomisation_p(differences, draws=4_000, seed=7)
    assert not exact and used == 4_000
    assert sampled_p == randomisation_p(differences, draws=4_000, seed=7)[0]  # same seed, same answer
    # binomial standard error at 4,000 draws is under 0.008: five of them
    assert abs(sampled_p - exact_p) < 0.04
    assert 0 < sampled_p <= 1


def test_identical_systems_give_delta_zero_and_p_one() -> None:
    scores = {f"q{i}": v for i, v in enumerate([0.3, 0.5, 1.0, 0.0, 0.25])}
    comparison = paired_compare(scores, dict(scores))
    assert (comparison.delta, comparison.p_t, comparison.p_rand) == (0.0, 1.0, 1.0)
    constant = paired_compare({q: v + 0.5 for q, v in scores.items()}, scores)  # every query +0.5
    assert constant.delta == pytest.approx(0.5) and constant.p_t == 0.0
    assert constant.p_rand == pytest.approx(2 / 2 ** 5)  # only all-plus and all-minus reach |mean| 0.5


def test_a_clear_difference_is_significant_and_noise_is_not() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(300)
    better = np.clip(base + 0.05 + rng.normal(0, 0.05, 300), 0, 1)
    noise = np.clip(base + rng.normal(0, 0.05, 300), 0, 1)
    as_dict = lambda values: {f"q{i}": float(v) for i, v in enumerate(values)}  # noqa: E731
    clear = paired_compare(as_dict(better), as_dict(base))
    assert clear.p_t < 1e-6 and clear.p_rand == pytest.approx(1 / 10_001)  # no draw reaches the observed mean
    unclear = paired_compare(as_dict(noise), as_dict(base))
    assert unclear.p_t > 0.05 and unclear.p_rand > 0.05


def test_queries_must_match() -> None:
    with pytest.raises(ValueError, match="same queries.*1 only in the first"):
        paired_compare({"q1": 1.0, "q2": 0.0, "q3": 0.5}, {"q1": 1.0, "q2": 0.5})


def test_compare_to_baselines_takes_rb_and_expansion_rows_against_those_present() -> None:
    def table(values: list[float]) -> dict[str, dict[str, float]]:
        return {f"q{i}": {"ndcg@10": v, "mrr@100": v / 2} for i, v in enumerate(values)}

    per_query = {"bm25": table([0.1, 0.2, 0.3]), "dense": table([0.2, 0.2, 0.2]),
                 "dense-multi": table([0.3, 0.3, 0.4]), "rb-manual-doc-stage1": table([0.4, 0.2, 0.5]),
                 "expansion-dense": table([0.2, 0.2, 0.3])}
    result = compare_to_baselines(per_query)
    assert set(result) == {"rb-manual-doc-stage1", "expansion-dense"}
    assert set(result["rb-manual-doc-stage1"]) == {"dense", "dense-multi"}  # no dense-sentence row
    vs_dense = result["rb-manual-doc-stage1"]["dense"]
    assert vs_dense.delta == pytest.approx(0.5 / 3) and vs_dense.metric == "ndcg@10" and vs_dense.queries == 3
    assert compare_to_baselines(per_query, metric="mrr@100")["expansion-dense"]["dense"].delta == pytest.approx(
        1 / 60)
    assert set(vs_dense.to_json()) == {"metric", "delta", "p_t", "p_rand", "queries", "draws", "exact"}
