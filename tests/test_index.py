"""The index loop (IndexModule + IndexInputsDataModule + IndexWriter under ``Trainer.predict``) and the index
folder's reader: the vectors equal the evaluator's weighting over the whole corpus, the files describe each
other, a crash resumes to the same bytes, FAISS flat equals exact search, and damaged folders are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, Trainer

from core.io import InputError
from core.record_key import RecordKey
from datamodules.index_inputs import IndexInputsDataModule
from helpers import CrashAfter, one_thread  # noqa: F401 (a fixture)
from lightning_modules.index_module import IndexModule
from callbacks.index_writer import IndexWriter
from retrieval.index_files import MANIFEST, OFFSETS, VECTORS, document_key, load_index, search_index, unit_keys
from retrieval.rao_blackwell import RaoBlackwellConfig, rao_blackwell_level
from retrieval.search import SearchConfig
from retrieval.vectors import load_vectors, save_vectors

pytestmark = pytest.mark.usefixtures("one_thread")
DIM = 8
DOCS = [f"d{i}" for i in range(7)]
SENTENCES = {"d0": 3, "d1": 1, "d2": 0, "d3": 2, "d4": 4, "d5": 1, "d6": 2}  # d2: no sentence unit
OUTPUTS = {"d0": ["question", "keywords", "question"], "d1": [], "d3": ["keywords"], "d4": ["question"],
           "d6": ["question", "keywords"]}  # d1, d2, d5: no kept output


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embed stage's three files for a 7-document corpus; synthetic rows deliberately not grouped by document."""
    root = tmp_path_factory.mktemp("vectors")
    rng = np.random.default_rng(0)
    save_vectors(root / "documents.safetensors", DOCS, _unit(rng, len(DOCS)), metadata={"fingerprint": "docs"})
    keys = [RecordKey(d, "sentence", i).encode() for d in DOCS for i in range(SENTENCES[d])]
    save_vectors(root / "sentences.safetensors", keys, _unit(rng, len(keys)), metadata={"fingerprint": "sents"})
    outputs = [RecordKey(d, task, i).encode() for d, tasks in OUTPUTS.items() for i, task in enumerate(tasks)]
    outputs = outputs[::-1]
    save_vectors(root / "synthetic.safetensors", outputs, _unit(rng, len(outputs)), metadata={"fingerprint": "syn"})
    return root


CONFIG = RaoBlackwellConfig(method="softmax", doc_weight=0.6, task_weights={"question": 0.7, "keywords": 0.3})


def build(inputs: Path, index_dir: Path, level: str, *, batch_size: int = 2, dtype: str = "float32",
          faiss: str | None = None, callbacks: list | None = None, keep_parts: bool = False,
          **trainer: object) -> IndexWriter:
    sentences = inputs / "sentences.safetensors" if level != "doc" else None
    data = IndexInputsDataModule(inputs / "documents.safetensors", inputs / "synthetic.safetensors", sentences,
                                 batch_size=batch_size)
    order = unit_keys(level, data.doc_ids, data.sentence_keys())
    writer = IndexWriter(index_dir, order, data.doc_ids, level, {"system": f"rb-softmax-{level}-stage1",
                                                                 "encoder": "tiny"},
                         fingerprint=f"test-{level}", dtype=dtype, faiss=faiss, keep_parts=keep_parts)
    data.skip_docs = frozenset(RecordKey.decode(key).doc_id for key in writer.done_keys())
    settings = {"accelerator": "cpu", "devices": 1, **trainer}
    runner = Trainer(**settings, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[writer, *(callbacks or [])])
    runner.predict(IndexModule(level, CONFIG, sentence_weight=0.6), datamodule=data, return_predictions=False)
    return writer


def whole_corpus(inputs: Path, level: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What the evaluator computes: the weighting over the whole corpus at once."""
    _, docs = load_vectors(inputs / "documents.safetensors")
    keys, syn = load_vectors(inputs / "synthetic.safetensors")
    sent_keys, sents = load_vectors(inputs / "sentences.safetensors")
    syn_keys = [RecordKey.decode(k) for k in keys]
    return rao_blackwell_level(
        level, torch.from_numpy(docs), torch.from_numpy(syn), torch.tensor([DOCS.index(k.doc_id) for k in syn_keys]),
        [k.task for k in syn_keys], CONFIG, sentence_vectors=torch.from_numpy(sents),
        sentence_doc=torch.tensor([DOCS.index(RecordKey.decode(k).doc_id) for k in sent_keys]), sentence_weight=0.6)


@pytest.mark.parametrize("level", ["doc", "sentence", "multi"])
def test_index_equals_the_whole_corpus_weighting(inputs: Path, tmp_path: Path, level: str) -> None:
    build(inputs, tmp_path / "index", level)
    index = load_index(tmp_path / "index")
    expected, owner = whole_corpus(inputs, level)
    if owner is None:
        owner = torch.arange(len(DOCS))
    grouped = torch.argsort(owner, stable=True)  # the index groups each document's units
    np.testing.assert_allclose(np.asarray(index.vectors), expected[grouped].numpy(), atol=1e-6)
    assert index.doc_ids == DOCS
    manifest = index.manifest
    assert (manifest["level"], manifest["documents"], manifest["units"], manifest["dim"]) == \
        (level, len(DOCS), len(expected), DIM)
    keys, _ = load_vectors(tmp_path / "index" / VECTORS)
    if level == "doc":
        assert index.unit_to_doc is None and not (tmp_path / "index" / OFFSETS).exists()
        assert keys == [document_key(d) for d in DOCS]
    else:
        units = [SENTENCES[d] + (level == "multi") for d in DOCS]
        assert np.load(tmp_path / "index" / OFFSETS).tolist() == np.concatenate([[0], np.cumsum(units)]).tolist()
        assert index.unit_to_doc.tolist() == [i for i, n in enumerate(units) for _ in range(n)]
        assert [RecordKey.decode(k).doc_id for k in keys] == [DOCS[i] for i in index.unit_to_doc]


def test_crash_then_rerun_gives_the_same_bytes(inputs: Path, tmp_path: Path) -> None:
    build(inputs, tmp_path / "reference", "multi")
    with pytest.raises(RuntimeError, match="simulated interruption"):
        build(inputs, tmp_path / "index", "multi", callbacks=[CrashAfter(2)])
    assert not (tmp_path / "index" / MANIFEST).exists()  # no manifest: the index is not complete
    writer = build(inputs, tmp_path / "index", "multi")
    assert not writer.parts_root.exists()
    for name in (VECTORS, OFFSETS, "ids.json"):
        assert (tmp_path / "index" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name


def test_float16_index_and_faiss_flat_search_equal_exact(inputs: Path, tmp_path: Path) -> None:
    pytest.importorskip("faiss", reason="faiss-cpu is an optional extra")
    build(inputs, tmp_path / "index", "multi", dtype="float16", faiss="flat")
    index = load_index(tmp_path / "index")
    assert index.vectors.dtype == np.float16 and index.manifest["faiss"] == "flat"
    queries = torch.from_numpy(_unit(np.random.default_rng(5), 4))
    ids = [f"q{i}" for i in range(4)]
    config = SearchConfig(k=5)
    exact = search_index(index, ids, queries, config)
    approximate = search_index(index, ids, queries, config, use_faiss=True)
    assert [list(exact[q]) for q in ids] == [list(approximate[q]) for q in ids]
    for q in ids:
        np.testing.assert_allclose(list(exact[q].values()), list(approximate[q].values()), atol=1e-5)


class RecordDocs(Callback):
    """Appends the documents each rank predicted to ``<folder>/rank<r>.txt`` (forked ranks write their own file)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_predict_batch_end(self, trainer: Trainer, pl_module: object, outputs: object, batch: dict,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        with open(self.folder / f"rank{trainer.global_rank}.txt", "a", encoding="utf-8") as handle:
            handle.write("".join(f"{doc_id}\n" for doc_id in batch["doc_ids"]))


@pytest.mark.ddp
def test_two_process_ddp_indexes_every_document_once(inputs: Path, tmp_path: Path) -> None:
    """Real DDP (gloo, Lightning's predict sampler, the writer's barrier and merge), launched by fork."""
    build(inputs, tmp_path / "single", "multi")
    (tmp_path / "ranks").mkdir()
    build(inputs, tmp_path / "ddp", "multi", callbacks=[RecordDocs(tmp_path / "ranks")], devices=2,
          strategy="ddp_fork")
    per_rank = [(tmp_path / "ranks" / f"rank{rank}.txt").read_text().split() for rank in (0, 1)]
    assert all(per_rank) and sorted(per_rank[0] + per_rank[1]) == sorted(DOCS)
    for name in (VECTORS, OFFSETS, "ids.json"):
        assert (tmp_path / "ddp" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name
    assert load_index(tmp_path / "ddp").manifest["units"] == load_index(tmp_path / "single").manifest["units"]


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_faiss_indexes_return_ranked_documents(inputs: Path, tmp_path: Path, kind: str) -> None:
    pytest.importorskip("faiss", reason="faiss-cpu is an optional extra")
    build(inputs, tmp_path / "index", "doc", faiss=kind)
    index = load_index(tmp_path / "index")
    queries = torch.from_numpy(_unit(np.random.default_rng(6), 3))
    run = search_index(index, ["a", "b", "c"], queries, SearchConfig(k=3, nprobe=64), use_faiss=True)
    assert all(len(hits) == 3 and set(hits) <= set(DOCS) for hits in run.values())
    exact = search_index(index, ["a", "b", "c"], queries, SearchConfig(k=3))
    assert {q: list(hits) for q, hits in run.items()} == {q: list(hits) for q, hits in exact.items()}  # 7 points: exact


@pytest.fixture
def built(inputs: Path, tmp_path: Path) -> Path:
    build(inputs, tmp_path / "index", "multi")
    return tmp_path / "index"


def test_truncated_vectors_are_refused(built: Path) -> None:
    data = (built / VECTORS).read_bytes()
    (built / VECTORS).write_bytes(data[:-16])
    with pytest.raises(InputError, match=r"vectors\.safetensors.*truncated"):
        load_index(built)


def test_changed_file_and_mismatched_manifest_are_refused(built: Path) -> None:
    ids = (built / "ids.json").read_text()
    (built / "ids.json").write_text(ids.replace("d6", "d9"))
    with pytest.raises(InputError, match=r"ids\.json.*SHA-256 differs"):
        load_index(built)
    (built / "ids.json").write_text(ids)
    manifest = json.loads((built / MANIFEST).read_text())
    (built / MANIFEST).write_text(json.dumps({**manifest, "units": manifest["units"] + 1}))
    with pytest.raises(InputError, match=r"manifest says"):
        load_index(built)
    (built / MANIFEST).unlink()
    with pytest.raises(InputError, match="no manifest.json"):
        load_index(built)


def test_queries_of_another_dimension_are_refused(built: Path) -> None:
    with pytest.raises(ValueError, match="dimension 4 but the index"):
        search_index(load_index(built), ["q"], torch.nn.functional.normalize(torch.ones(1, 4), dim=-1))
