"""Paired significance of the difference between two systems' per-query scores.

Why: on a few hundred queries a difference under one nDCG@10 point is often noise; a reader needs
the paired test trec_eval and ranx users expect next to every such difference. Both tests pair the
systems query by query (same queries, same judgements):

- **Paired t-test** (two-sided): t = mean(d) / (sd(d) / sqrt(n)) over the differences d, Student's t
  with n - 1 degrees of freedom (``scipy.stats.ttest_rel``'s p). When every difference is equal the
  t statistic is undefined; we report p = 1 when they are all 0 (identical systems) and p = 0 otherwise.
- **Paired randomisation test** (two-sided, Fisher's sign-flip permutation test, as ranx's
  ``"fisher"`` and Smucker et al. 2007): under the null hypothesis each query's two scores are
  exchangeable, so each d_i keeps or flips its sign with probability 1/2; p = share of sign
  assignments whose |mean| is at least the observed |mean|. Queries with d_i = 0 do not change the
  statistic, so with m non-zero differences and 2^m <= ``draws`` every assignment is enumerated
  (the exact p); otherwise ``draws`` random assignments from a seeded generator give
  p = (1 + count) / (1 + draws), which counts the observed assignment and is never 0.

No correction for multiple comparisons is applied: each p-value is one comparison's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_DRAWS = 10_000
DEFAULT_SEED = 0
#: rows compared against each corpus-only baseline (``vs``), and those baselines
COMPARED_PREFIXES = ("rb-", "expansion-")
BASELINES = ("dense", "dense-sentence", "dense-multi")
BASE_SUFFIX = "-base"
"""A corpus-only row embedded with the base model's encoder (before tuning) is named baseline + this suffix."""
#: the markdown table's markers use the randomisation test's p at this level
ALPHA = 0.05
_CHUNK_ENTRIES = 1 << 22  # sign matrix entries per block: bounds memory whatever the number of queries


@dataclass(frozen=True)
class PairedComparison:
    """``delta`` = mean(a) - mean(b) over ``queries`` paired queries; two-sided p-values of both tests.

    ``draws`` is the number of sign assignments the randomisation test used (2^m when ``exact``).
    """

    metric: str
    delta: float
    p_t: float
    p_rand: float
    queries: int
    draws: int
    exact: bool

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def paired_t_p(differences: np.ndarray) -> float:
    """Two-sided p of the paired t-test on the differences (equal to ``scipy.stats.ttest_rel``'s)."""
    from scipy import stats

    d = np.asarray(differences, dtype=np.float64)
    if d.size < 2:
        raise ValueError(f"a paired t-test needs at least 2 queries, got {d.size}")
    spread = float(np.std(d, ddof=1))
    mean = float(np.mean(d))
    if spread == 0.0 or spread <= 1e-15 * max(abs(mean), 1e-300):
        return 1.0 if mean == 0.0 else 0.0
    t = mean / (spread / math.sqrt(d.size))
    return float(min(1.0, 2.0 * stats.t.sf(abs(t), d.size - 1)))


def randomisation_p(differences: np.ndarray, draws: int = DEFAULT_DRAWS, seed: int = DEFAULT_SEED
                    ) -> tuple[float, int, bool]:
    """Two-sided sign-flip randomisation p of mean(d); returns ``(p, assignments used, exact)``."""
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    d = np.asarray(differences, dtype=np.float64)
    nonzero = d[d != 0.0]
    m = nonzero.size
    if m == 0:
        return 1.0, 1, True
    observed = abs(nonzero.sum())
    # sums of the same numbers in another order differ in the last bits: count near-equal ones as ties
    tolerance = 1e-9 * float(np.abs(nonzero).sum())
    if m < 63 and 2 ** m <= draws:
        count = 0
        block = max(1, _CHUNK_ENTRIES // m)
        for start in range(0, 2 ** m, block):
            codes = np.arange(start, min(start + block, 2 ** m), dtype=np.int64)
            signs = 1.0 - 2.0 * ((codes[:, None] >> np.arange(m, dtype=np.int64)) & 1)
            count += int((np.abs(signs @ nonzero) >= observed - tolerance).sum())
        return count / 2 ** m, 2 ** m, True
    rng = np.random.default_rng(seed)
    count, block = 0, max(1, _CHUNK_ENTRIES // m)
    for start in range(0, draws, block):
        signs = 1.0 - 2.0 * rng.integers(0, 2, size=(min(block, draws - start), m), dtype=np.int8)
        count += int((np.abs(signs @ nonzero) >= observed - tolerance).sum())
    return (1 + count) / (1 + draws), draws, False


def paired_compare(a: Mapping[str, float], b: Mapping[str, float], metric: str = "ndcg@10",
                   draws: int = DEFAULT_DRAWS, seed: int = DEFAULT_SEED) -> PairedComparison:
    """Compare system ``a`` with system ``b`` on their per-query values ``{query id: value}``.

    Both must hold the same queries: a query scored by one system only cannot be paired.
    """
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ValueError(f"paired comparison of {metric} needs the same queries on both sides: "
                         f"{len(only_a)} only in the first (e.g. {only_a[:3]}), "
                         f"{len(only_b)} only in the second (e.g. {only_b[:3]})")
    queries = sorted(a)
    differences = np.array([a[q] - b[q] for q in queries], dtype=np.float64)
    p_rand, used, exact = randomisation_p(differences, draws, seed)
    return PairedComparison(metric=metric, delta=float(differences.mean()), p_t=paired_t_p(differences),
                            p_rand=p_rand, queries=len(queries), draws=used, exact=exact)


def compare_to_baselines(per_query: Mapping[str, Mapping[str, Mapping[str, float]]], metric: str = "ndcg@10",
                         systems: Iterable[str] | None = None, baselines: Sequence[str] = BASELINES,
                         draws: int = DEFAULT_DRAWS, seed: int = DEFAULT_SEED
                         ) -> dict[str, dict[str, PairedComparison]]:
    """``{system: {baseline: comparison}}`` for each compared system against each baseline present.

    ``per_query`` is ``{system: {query id: {metric: value}}}`` (what ``evaluate_run(per_query=True)``
    gives per system); ``systems`` defaults to every system named ``rb-*`` or ``expansion-*``.
    """
    chosen = [s for s in per_query if s.startswith(COMPARED_PREFIXES)] if systems is None else list(systems)
    values = {name: {q: row[metric] for q, row in table.items()} for name, table in per_query.items()}
    present = [name for name in baselines if name in values]
    return {system: {base: paired_compare(values[system], values[base], metric, draws, seed) for base in present}
            for system in chosen if system not in present}


def significance_marker(vs: Mapping[str, Mapping[str, object]]) -> str:
    """One symbol per baseline of :data:`BASELINES` for a row's ``vs``: ▲ higher with p_rand < ALPHA,
    ▼ lower with p_rand < ALPHA, · not significant, – no such baseline in the table. A row compared with the
    base encoder's rows only (before tuning) shows those."""
    symbols = []
    for base in BASELINES:
        entry = vs.get(base, vs.get(base + BASE_SUFFIX))
        if entry is None:
            symbols.append("–")
        elif float(entry["p_rand"]) < ALPHA:
            symbols.append("▲" if float(entry["delta"]) > 0 else "▼")
        else:
            symbols.append("·")
    return " ".join(symbols)


def significance_note(comparisons: Sequence[Mapping[str, Mapping[str, object]]]) -> str:
    """The explanation printed under a table whose rows carry ``vs`` (empty when none does)."""
    entries = [entry for vs in comparisons for entry in vs.values()]
    if not entries:
        return ""
    metrics = ", ".join(dict.fromkeys(str(entry["metric"]) for entry in entries))
    draws = max(int(entry["draws"]) for entry in entries if not entry["exact"]) if not all(
        entry["exact"] for entry in entries) else None
    how = (f"{draws:,} seeded random sign assignments, or all of them when there are fewer" if draws
           else "every sign assignment enumerated")
    return (f"**vs {' / '.join(BASELINES)}**: the row's {metrics} against each corpus-only row, query by query "
            f"(two-sided paired randomisation test, {how}): ▲ higher and p < {ALPHA}, ▼ lower and p < {ALPHA}, "
            f"· not significant, – that row is absent. `results.json` holds each difference (`delta`) with the "
            f"randomisation p (`p_rand`) and the paired t-test p (`p_t`); `per_query.json` the per-query values. "
            f"No correction for multiple comparisons.")
