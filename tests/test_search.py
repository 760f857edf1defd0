"""Search: exact top-k equals brute force (ties, chunks, float16 memmaps), FAISS equals exact, multi-vector max, BEIR's id rule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import retrieval.search as search_module
from retrieval.search import SearchConfig, exact_search, faiss_search, multivector_search, search


def tied_unit_vectors(n: int, seed: int) -> torch.Tensor:
    """Unit vectors with entries in {0, +-0.5, +-1}: every dot product is a multiple of 0.25, exact in
    float32, so brute force and chunked search must agree bit for bit, tie order included."""
    g = torch.Generator().manual_seed(seed)
    halves = (torch.randint(0, 2, (n, 4), generator=g) * 2 - 1) * 0.5  # four +-0.5 entries: norm 1
    axes = torch.zeros(n, 4)
    axes[torch.arange(n), torch.randint(0, 4, (n,), generator=g)] = 1.0  # a +-1 on one axis: norm 1
    pick_axis = torch.rand(n, generator=g) < 0.3
    return torch.where(pick_axis.unsqueeze(1), axes, halves).float()


def random_unit_vectors(n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)


def brute_force(queries: torch.Tensor, docs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full score matrix, stable sort: score descending, ties by lower index."""
    scores, indices = (queries @ docs.T).sort(dim=1, descending=True, stable=True)
    return scores[:, :k], indices[:, :k]


def assert_true_top_k(queries: torch.Tensor, docs: torch.Tensor, scores: torch.Tensor, indices: torch.Tensor) -> None:
    """The returned documents are a correct top-k up to float rounding, scored correctly (checked in float64)."""
    exact = queries.double() @ docs.double().T
    best = exact.sort(dim=1, descending=True).values[:, : indices.shape[1]]
    assert torch.allclose(exact.gather(1, indices), best, atol=1e-5)
    assert torch.allclose(scores.double(), best, atol=1e-5)
    assert all(len(set(row)) == len(row) for row in indices.tolist()), "a document is returned twice"


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 999, 1000, 5000])
def test_exact_equals_brute_force_with_ties_across_chunk_boundaries(chunk_size: int) -> None:
    docs = tied_unit_vectors(1000, seed=0)
    queries = tied_unit_vectors(25, seed=1)
    scores, indices = exact_search(queries, docs, k=40, chunk_size=chunk_size, device="cpu")
    ref_scores, ref_indices = brute_force(queries, docs, 40)
    assert scores.dtype == torch.float32 and indices.dtype == torch.int64
    assert torch.equal(scores, ref_scores)
    assert torch.equal(indices, ref_indices), "ties must resolve to the lower index whatever the chunking"


def test_exact_on_continuous_vectors_and_small_score_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny block budget forces several query blocks and column blocks per chunk through one reused buffer."""
    monkeypatch.setitem(search_module._BLOCK_ELEMENTS, "cpu", 2048)
    docs, queries = random_unit_vectors(3000, 32, 2), random_unit_vectors(9, 32, 3)
    scores, indices = exact_search(queries, docs, k=20, chunk_size=2500, device="cpu")
    assert_true_top_k(queries, docs, scores, indices)
    monkeypatch.undo()
    again = exact_search(queries, docs, k=20, device="cpu")
    assert torch.equal(indices, again[1])
    tied_docs, tied_queries = tied_unit_vectors(3000, 4), tied_unit_vectors(9, 5)
    monkeypatch.setitem(search_module._BLOCK_ELEMENTS, "cpu", 2048)
    assert torch.equal(exact_search(tied_queries, tied_docs, 50, chunk_size=2500, device="cpu")[1],
                       brute_force(tied_queries, tied_docs, 50)[1])


def test_k_larger_than_corpus_returns_every_document_ranked() -> None:
    docs, queries = tied_unit_vectors(12, 6), tied_unit_vectors(3, 7)
    scores, indices = exact_search(queries, docs, k=50, chunk_size=5, device="cpu")
    assert scores.shape == indices.shape == (3, 12)
    assert torch.equal(indices, brute_force(queries, docs, 12)[1])
    assert faiss_search(queries, docs, k=50)[1].shape == (3, 12)


def test_float16_memmap_documents(tmp_path) -> None:
    docs = random_unit_vectors(2000, 16, 8)
    stored = np.lib.format.open_memmap(tmp_path / "docs.npy", mode="w+", dtype=np.float16, shape=tuple(docs.shape))
    stored[:] = docs.numpy().astype(np.float16)
    stored.flush()
    memmap = np.load(tmp_path / "docs.npy", mmap_mode="r")
    queries = random_unit_vectors(5, 16, 9)
    scores, indices = exact_search(queries, memmap, k=10, chunk_size=300, device="cpu")
    as_float32 = torch.from_numpy(np.asarray(memmap, dtype=np.float32))
    ref_scores, ref_indices = exact_search(queries, as_float32, k=10, device="cpu")
    assert torch.equal(indices, ref_indices) and torch.allclose(scores, ref_scores)
    assert torch.equal(faiss_search(queries, memmap, k=10, chunk_size=300)[1], ref_indices)


def test_faiss_flat_equals_exact() -> None:
    docs, queries = random_unit_vectors(2000, 32, 10), random_unit_vectors(20, 32, 11)
    scores, indices = faiss_search(queries, docs, k=15, index="flat")
    ref_scores, ref_indices = exact_search(queries, docs, k=15, device="cpu")
    assert torch.equal(indices, ref_indices)
    assert torch.allclose(scores, ref_scores, atol=1e-5)
    tied_docs, tied_queries = tied_unit_vectors(500, 12), tied_unit_vectors(10, 13)
    tied_scores, _ = faiss_search(tied_queries, tied_docs, k=30)
    assert torch.equal(tied_scores, brute_force(tied_queries, tied_docs, 30)[0])


def test_ivf_probing_every_list_equals_exact() -> None:
    docs, queries = random_unit_vectors(2000, 32, 14), random_unit_vectors(20, 32, 15)
    scores, indices = faiss_search(queries, docs, k=15, index="ivf", nlist=16, nprobe=16)
    ref_scores, ref_indices = exact_search(queries, docs, k=15, device="cpu")
    assert torch.equal(indices, ref_indices)
    assert torch.allclose(scores, ref_scores, atol=1e-5)
    with pytest.raises(ValueError, match="nlist must be between 1 and the number of documents"):
        faiss_search(queries, docs, k=5, index="ivf", nlist=5000)


@pytest.mark.parametrize("backend", ["exact", "faiss"])
def test_unnormalised_input_is_refused_with_a_clear_message(backend: str) -> None:
    docs, queries = random_unit_vectors(50, 8, 16), random_unit_vectors(3, 8, 17)
    run = (lambda q, d: exact_search(q, d, 5, device="cpu")) if backend == "exact" else (lambda q, d: faiss_search(q, d, 5))
    bad_docs = docs.clone()
    bad_docs[37] *= 3.0
    with pytest.raises(ValueError, match=r"docs row 37 has L2 norm 3.*L2-normalised.*normalize"):
        run(queries, bad_docs)
    bad_queries = queries.clone()
    bad_queries[1] = float("nan")
    with pytest.raises(ValueError, match=r"queries row 1 has L2 norm nan"):
        run(bad_queries, docs)
    with pytest.raises(ValueError, match="queries have dimension 4 but documents have 8"):
        run(queries[:, :4], docs)


def test_multivector_equals_brute_force_max_over_units() -> None:
    units, queries = tied_unit_vectors(700, 18), tied_unit_vectors(11, 19)
    n_docs = 150  # some documents get no unit: they cannot be scored and are never returned
    unit_to_doc = torch.randint(0, 140, (700,), generator=torch.Generator().manual_seed(20))
    doc_scores = torch.full((11, n_docs), float("-inf")).scatter_reduce(
        1, unit_to_doc.expand(11, -1), queries @ units.T, reduce="amax")
    ref_scores, ref_indices = doc_scores.sort(dim=1, descending=True, stable=True)
    n_scored = len(unit_to_doc.unique())
    for chunk_size in (1, 50, 700):
        scores, indices = multivector_search(queries, units, unit_to_doc, n_docs, k=1000, chunk_size=chunk_size,
                                             device="cpu")
        assert indices.shape == (11, n_scored)
        assert torch.equal(indices, ref_indices[:, :n_scored]) and torch.equal(scores, ref_scores[:, :n_scored])
    grouped = unit_to_doc.argsort(stable=True)
    scores, indices = multivector_search(queries, units[grouped].numpy(), unit_to_doc[grouped].numpy(), n_docs, k=25,
                                         chunk_size=64, device="cpu")
    assert torch.equal(indices, ref_indices[:, :25])
    with pytest.raises(ValueError, match=r"outside \[0, 100\)"):
        multivector_search(queries, units, unit_to_doc, 100, k=5)


def test_search_drops_the_query_itself_and_still_returns_k() -> None:
    docs = random_unit_vectors(30, 8, 21)
    doc_ids = [f"d{i}" for i in range(30)]
    doc_ids[4] = "q-self"
    queries = docs[[4, 9]]  # each query's best match is the document equal to it
    run = search(["q-self", "other"], queries, doc_ids, docs, SearchConfig(k=5, device="cpu"))
    assert "q-self" not in run["q-self"] and len(run["q-self"]) == 5
    assert next(iter(run["other"])) == "d9" and len(run["other"]) == 5
    scores = list(run["q-self"].values())
    assert scores == sorted(scores, reverse=True)
    kept = search(["q-self"], queries[:1], doc_ids, docs, SearchConfig(k=5, ignore_identical_ids=False, device="cpu"))
    assert next(iter(kept["q-self"])) == "q-self"
    for backend in ("faiss-flat", "faiss-ivf"):
        config = SearchConfig(backend=backend, k=5, nlist=2, nprobe=2)
        faiss_run = search(["q-self", "other"], queries, doc_ids, docs, config)
        for qid, hits in run.items():
            assert list(faiss_run[qid]) == list(hits)
            assert list(faiss_run[qid].values()) == pytest.approx(list(hits.values()), abs=1e-5)


def test_search_multivector_run_and_input_errors() -> None:
    units = tied_unit_vectors(40, 22)
    unit_to_doc = np.repeat(np.arange(10), 4)
    run = search(["q"], units[:1], [f"d{i}" for i in range(10)], units, SearchConfig(k=3, device="cpu"),
                 unit_to_doc=unit_to_doc)
    assert next(iter(run["q"])) == "d0" and run["q"]["d0"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="multi-vector scoring needs backend='exact'"):
        search(["q"], units[:1], [f"d{i}" for i in range(10)], units, SearchConfig(backend="faiss-flat"),
               unit_to_doc=unit_to_doc)
    with pytest.raises(ValueError, match="2 query ids but 1 query vectors"):
        search(["q", "r"], units[:1], [f"d{i}" for i in range(40)], units)
    with pytest.raises(ValueError, match="duplicate document id 'd1'"):
        search(["q"], units[:1], ["d0", "d1", "d1"] + [f"x{i}" for i in range(37)], units)
    with pytest.raises(ValueError, match="k must be >= 1"):
        exact_search(units, units, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_equals_cpu() -> None:
    docs, queries = tied_unit_vectors(5000, 23), tied_unit_vectors(40, 24)
    for device_docs in (docs, docs.numpy().astype(np.float16)):
        gpu = exact_search(queries, device_docs, 100, chunk_size=1200, device="cuda")
        assert torch.equal(gpu[1], brute_force(queries, docs, 100)[1])
    units = list(itertools.islice(itertools.cycle(range(1000)), 5000))
    assert torch.equal(multivector_search(queries, docs, units, 1000, 10, device="cuda")[1],
                       multivector_search(queries, docs, units, 1000, 10, device="cpu")[1])


def test_search_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="search.backend must be 'exact', 'faiss-flat' or 'faiss-ivf'"):
        SearchConfig(backend="annoy")
    with pytest.raises(ValueError, match="search.k must be >= 1, got 0"):
        SearchConfig(k=0)
