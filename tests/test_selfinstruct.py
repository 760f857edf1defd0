"""SelfInstructDataModule: padded batches with ignored label padding, global batch split, caching, precise errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from datamodules.selfinstruct import (SelfInstructDataModule, _Tokenise, per_device_batch_size,
                                      tokenizer_fingerprint)
from helpers import TINY_T5_TOKENIZER, minilm_path
from retrieval.io import InputError

DATA = Path(__file__).resolve().parent / "data" / "selfinstruct"
TRAIN, VAL = DATA / "train.jsonl", DATA / "val.jsonl"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TINY_T5_TOKENIZER)


def _module(tmp_path: Path, tokenizer, train: Path = TRAIN, val: Path = VAL, model_max: int = 512,
            **kwargs) -> SelfInstructDataModule:
    data = SelfInstructDataModule(str(train), str(val), cache_dir=str(tmp_path / "cache"), **kwargs)
    data.connect(tokenizer, model_max)
    return data


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_batches_are_padded_with_label_padding_ignored_and_ids_carried(tmp_path: Path, tokenizer) -> None:
    data = _module(tmp_path, tokenizer, batch_size=4, max_input_length=24, max_target_length=8)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    records = _records(VAL)[:4]
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


def test_dynamic_padding_pads_to_the_longest_row_only(tmp_path: Path, tokenizer) -> None:
    data = _module(tmp_path, tokenizer, batch_size=2, max_target_length=64)
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


def test_missing_empty_and_bad_splits_name_the_file_line_and_field(tmp_path: Path, tokenizer) -> None:
    with pytest.raises(InputError, match="missing.jsonl.*file not found"):
        _module(tmp_path, tokenizer, val=tmp_path / "missing.jsonl").setup("fit")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="empty.jsonl.*split is empty"):
        _module(tmp_path, tokenizer, val=empty).setup("fit")
    records = _records(VAL)[:3]
    records[1]["target"] = "  "
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(InputError, match=r"bad.jsonl, line 2, field 'target': empty"):
        _module(tmp_path, tokenizer, train=bad).setup("fit")
    records[1]["target"], records[2]["sample_idx"] = "fine", "0"
    bad.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(InputError, match=r"line 3, field 'sample_idx': expected int"):
        _module(tmp_path, tokenizer, train=bad).setup("fit")


def test_tokenised_split_is_read_back_from_the_cache(tmp_path: Path, tokenizer, monkeypatch) -> None:
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    shutil.copy(TRAIN, train)
    shutil.copy(VAL, val)
    first = _module(tmp_path, tokenizer, train=train, val=val)
    first.prepare_data()  # what one process per node runs before the others' setup
    expected = first._load_split(str(val))["input_ids"]

    def no_tokenising(self, batch):
        raise AssertionError("tokenised again although the cache holds this split")

    monkeypatch.setattr(_Tokenise, "__call__", no_tokenising)
    second = _module(tmp_path, tokenizer, train=train, val=val)
    second.setup("fit")
    assert second.datasets["val"]["input_ids"] == expected
    val.write_text(val.read_text(encoding="utf-8").replace("known", "said"), encoding="utf-8")  # a new file
    with pytest.raises(AssertionError, match="tokenised again"):
        _module(tmp_path, tokenizer, train=train, val=val).setup("fit")


def test_tokenizer_fingerprint_ignores_truncation_state(tokenizer) -> None:
    before = tokenizer_fingerprint(tokenizer)
    tokenizer(["a b c d e f g"], truncation=True, max_length=3, padding="max_length")
    assert tokenizer_fingerprint(tokenizer) == before
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(minilm_path())) != before


def test_input_limit_cannot_exceed_the_models_and_a_tokenizer_is_required(tmp_path: Path, tokenizer) -> None:
    with pytest.raises(ValueError, match="exceeds the model's max_input_length=16"):
        _module(tmp_path, tokenizer, model_max=16, max_input_length=32)
    unconnected = SelfInstructDataModule(str(TRAIN), str(VAL))
    with pytest.raises(RuntimeError, match="no tokenizer"):
        unconnected.setup("fit")
    with pytest.raises(ValueError, match="not 'predict'"):
        _module(tmp_path, tokenizer).setup("predict")
