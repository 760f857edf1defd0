"""SelfInstructDataModule: the document split of the kept records, padded batches with ignored label padding,
the global batch split, caching, precise errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from core.io import InputError
from datamodules.beir import load_beir
from datamodules.downsample import DataConfig
from datamodules.prompts import PromptTemplates
from datamodules.selfinstruct import SelfInstructDataModule, per_device_batch_size, split_documents, write_split
from helpers import TINY_T5_TOKENIZER, make_tiny_t5, minilm_path, one_thread  # noqa: F401 (a fixture)
from lightning_modules.loading import tokenizer_fingerprint
from lightning_modules.seq2seq import ExampleEncoder, Seq2SeqModule
from retrieval.synthetic import SyntheticRecord, read_synthetic, write_synthetic

ROOT = Path(__file__).resolve().parent
KEPT = ROOT / "data" / "selfinstruct" / "kept.jsonl"
TINY_BEIR = ROOT / "data" / "tiny_beir"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Seq2SeqModule:
    return Seq2SeqModule(str(make_tiny_t5(tmp_path_factory.mktemp("model") / "t5")))


def _module(tmp_path: Path, generator: Seq2SeqModule, kept: Path = KEPT, **kwargs) -> SelfInstructDataModule:
    kwargs = {"val_fraction": 0.3, "split_dir": str(tmp_path / "split"), "cache_dir": str(tmp_path / "cache"),
              **kwargs}
    data = SelfInstructDataModule(str(kept), DataConfig(path=TINY_BEIR), **kwargs)
    data.connect(generator)
    return data


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_split_is_by_document_seeded_and_rendered_from_the_kept_records(tmp_path: Path) -> None:
    corpus = load_beir(TINY_BEIR).corpus
    summary = write_split(KEPT, corpus, PromptTemplates(), tmp_path, 0.25, seed=3)
    rows = {name: _records(tmp_path / f"{name}.jsonl") for name in ("train", "val")}
    train_docs, val_docs = ({r["doc_id"] for r in rows[n]} for n in ("train", "val"))
    assert not train_docs & val_docs and len(val_docs) == 5 and len(train_docs) == 15
    assert summary["val"] == {"records": 10, "documents": 5, "per_task": {"question": 5, "keywords": 5}}
    assert json.loads((tmp_path / "split.json").read_text()) == json.loads(json.dumps(summary))
    first = rows["train"][0]
    kept = {(r.doc_id, r.task): r.text for r in read_synthetic(KEPT)}
    doc = corpus[first["doc_id"]]
    assert set(first) == {"doc_id", "task", "sample_idx", "instruction", "target"}
    assert first["instruction"] == PromptTemplates().render(first["task"], doc.title, doc.text)
    assert first["target"] == kept[(first["doc_id"], first["task"])]
    assert split_documents(list(corpus), 0.25, seed=3) == (train_docs, val_docs)
    assert split_documents(list(reversed(corpus)), 0.25, seed=3) == (train_docs, val_docs)
    assert split_documents(list(corpus), 0.25, seed=4) != (train_docs, val_docs)
    # an unchanged split is not rewritten (its arrow cache stays valid); a changed one is
    before = (tmp_path / "val.jsonl").stat().st_mtime_ns
    write_split(KEPT, corpus, PromptTemplates(), tmp_path, 0.25, seed=3)
    assert (tmp_path / "val.jsonl").stat().st_mtime_ns == before
    write_split(KEPT, corpus, PromptTemplates(), tmp_path, 0.25, seed=4)
    assert {r["doc_id"] for r in _records(tmp_path / "val.jsonl")} != val_docs


def test_batches_are_padded_with_label_padding_ignored_and_ids_carried(tmp_path: Path, generator) -> None:
    data = _module(tmp_path, generator, batch_size=4, max_input_length=24, max_target_length=8)
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    records = _records(tmp_path / "split" / "val.jsonl")[:4]
    tokenizer = generator.tokenizer
    assert batch["doc_id"] == [r["doc_id"] for r in records] and batch["task"] == [r["task"] for r in records]
    assert batch["input_ids"].shape == (4, 24)  # every instruction is longer than 24 tokens: cut to the limit
    lengths = batch["attention_mask"].sum(dim=1)
    for row, record in enumerate(records):
        labels = batch["labels"][row]
        kept = labels[labels != -100]
        assert kept[-1].item() == tokenizer.eos_token_id and len(kept) <= 8
        assert (labels[len(kept):] == -100).all()  # padding after the target, never inside it
        expected = tokenizer(record["target"], add_special_tokens=False)["input_ids"][:7]
        assert kept[:-1].tolist() == expected
        assert (batch["input_ids"][row, lengths[row]:] == tokenizer.pad_token_id).all()


def test_dynamic_padding_pads_to_the_longest_row_only(tmp_path: Path, generator) -> None:
    data = _module(tmp_path, generator, batch_size=2, max_target_length=64)
    data.prepare_data()
    data.setup("fit")
    widths = {batch["input_ids"].shape[1] for batch in data.val_dataloader()}
    assert len(widths) > 1  # batches differ in width: no padding to a fixed length
    for batch in data.val_dataloader():
        assert batch["attention_mask"][:, -1].any()  # the last column holds a real token for some row


def test_global_batch_is_split_over_devices_and_accumulation() -> None:
    assert per_device_batch_size(16, 1, 1) == 16
    assert per_device_batch_size(16, 2, 1) == 8
    assert per_device_batch_size(16, 4, 2) == 2
    with pytest.raises(ValueError, match="multiple of 3"):
        per_device_batch_size(16, 3, 1)


def test_missing_bad_and_too_small_kept_files_name_the_file(tmp_path: Path, generator) -> None:
    with pytest.raises(InputError, match="missing.jsonl.*file not found"):
        _module(tmp_path, generator, kept=tmp_path / "missing.jsonl").prepare_data()
    records = read_synthetic(KEPT)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(KEPT.read_text().replace('"task": "keywords"', '"task": "summary"', 1))
    with pytest.raises(InputError, match=r"bad.jsonl, line 2, field 'task': unknown task 'summary'"):
        _module(tmp_path, generator, kept=bad).prepare_data()
    write_synthetic(bad, [*records[:3], SyntheticRecord("d03", "keywords", " ")])
    with pytest.raises(InputError, match=r"bad.jsonl, field 'text': document 'd03', task 'keywords'.*empty"):
        _module(tmp_path, generator, kept=bad).prepare_data()
    write_synthetic(bad, records[:2])
    with pytest.raises(InputError, match=r"bad.jsonl: only 1 document\(s\).*needs at least 2.*filter_report.json"):
        _module(tmp_path, generator, kept=bad).prepare_data()
    with pytest.raises(ValueError, match="val_fraction"):
        SelfInstructDataModule(str(KEPT), DataConfig(path=TINY_BEIR), val_fraction=1.0)


def test_tokenised_split_is_read_back_from_the_cache(tmp_path: Path, generator, monkeypatch) -> None:
    kept = tmp_path / "kept.jsonl"
    kept.write_bytes(KEPT.read_bytes())
    first = _module(tmp_path, generator, kept=kept)
    first.prepare_data()  # what one process per node runs before the others' setup
    expected = first._load_split("val")["input_ids"]

    def no_tokenising(self, batch):
        raise AssertionError("tokenised again although the cache holds this split")

    monkeypatch.setattr(ExampleEncoder, "__call__", no_tokenising)
    second = _module(tmp_path, generator, kept=kept)
    second.prepare_data()  # the same split: files unchanged, caches hit
    second.setup("fit")
    assert second.datasets["val"]["input_ids"] == expected
    kept.write_text(kept.read_text(encoding="utf-8").replace("known", "said"), encoding="utf-8")  # new targets
    with pytest.raises(AssertionError, match="tokenised again"):
        _module(tmp_path, generator, kept=kept).prepare_data()


def test_tokenizer_fingerprint_ignores_truncation_state() -> None:
    tokenizer = AutoTokenizer.from_pretrained(TINY_T5_TOKENIZER)
    before = tokenizer_fingerprint(tokenizer)
    tokenizer(["a b c d e f g"], truncation=True, max_length=3, padding="max_length")
    assert tokenizer_fingerprint(tokenizer) == before
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(minilm_path())) != before


def test_input_limit_cannot_exceed_the_models_and_a_generator_is_required(tmp_path: Path, generator) -> None:
    with pytest.raises(ValueError, match="exceeds the model's max_input_length=512"):
        _module(tmp_path, generator, max_input_length=1024)
    unconnected = SelfInstructDataModule(str(KEPT), DataConfig(path=TINY_BEIR), split_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="no generator"):
        unconnected.setup("fit")
    with pytest.raises(TypeError, match="GeneratorModule"):
        unconnected.connect(object())
    with pytest.raises(ValueError, match="not 'predict'"):
        _module(tmp_path, generator).setup("predict")
