"""What keeps the embed stage's memory flat (benchmarks/bench_scale.py measures it): the merge scatters rows from
many parts into the caller's order, ids are written in chunks, and ``return_vectors=False`` never loads the matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from callbacks.vector_writer import VectorWriter
from helpers import make_tiny_bert
from pipeline.embed import embed_texts
from retrieval.vectors import load_vectors, read_vector_ids, save_vectors


def test_ids_round_trip_across_the_blob_chunks(tmp_path: Path) -> None:
    ids = [f"dok-ü{i}" if i % 7 else f"d{i}" for i in range(70_000)]  # > one 65,536-id chunk, mixed byte lengths
    save_vectors(tmp_path / "v.safetensors", ids, np.zeros((len(ids), 2), dtype=np.float32))
    assert read_vector_ids(tmp_path / "v.safetensors") == ids


def test_merge_scatters_many_parts_into_the_callers_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    order = [f"doc-{i}" for i in rng.permutation(1000)]
    vectors = {key: rng.standard_normal(4).astype(np.float32) for key in order}
    writer = VectorWriter(tmp_path / "out.safetensors", order=order, fingerprint="fp", dtype="float16")
    writer.parts_dir.mkdir(parents=True)
    shuffled = list(rng.permutation(order))
    for part_no, start in enumerate(range(0, len(shuffled), 128)):  # 8 parts, keys in no particular order
        keys = shuffled[start:start + 128]
        save_vectors(writer.parts_dir / f"rank00000-a-b{part_no:07d}.safetensors", keys,
                     np.stack([vectors[key] for key in keys]))
    save_vectors(writer.parts_dir / "rank00000-b-b0000000.safetensors", [order[3]], np.full((1, 4), 9.0))
    writer.merge()
    ids, merged = load_vectors(tmp_path / "out.safetensors")
    assert ids == order and merged.dtype == np.float16
    expected = np.stack([vectors[key] for key in order])  # order[3]'s later duplicate (all 9.0) lost: first wins
    np.testing.assert_allclose(merged.astype(np.float32), expected, atol=2e-3)


def test_embed_texts_without_vectors_returns_ids_only_on_compute_and_reuse(tmp_path: Path) -> None:
    items = [(f"doc-{i}", " ".join(["cell protein gene"] * (1 + i % 5))) for i in range(12)]
    encoder = str(make_tiny_bert(tmp_path / "bert"))
    settings = {"batch_size": 4, "progress": False, "trainer_kwargs": {"accelerator": "cpu"}}
    ids, vectors = embed_texts(items, encoder, tmp_path / "a.safetensors", return_vectors=False, **settings)
    assert ids == [key for key, _ in items] and vectors is None
    assert embed_texts(items, encoder, tmp_path / "a.safetensors", return_vectors=False, **settings) == (ids, None)
    _, expected = embed_texts(items, encoder, tmp_path / "b.safetensors", **settings)
    written_ids, written = load_vectors(tmp_path / "a.safetensors")
    assert written_ids == ids and torch.allclose(torch.from_numpy(written), expected)
