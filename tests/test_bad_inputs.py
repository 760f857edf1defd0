"""Bad input at the stage level: ``train.main([...])`` on a finished run directory.

Each case feeds one kind of bad input to the stage that reads it (or a simulated failing disk to
the stage that writes) and asserts two things: the run stops with a clear message naming the file,
line or field and what to do, and the run directory is as it was: every earlier file byte for byte
the same, no temporary or half-written file left (:func:`assert_untouched`). The only change a
failed stage may leave is its own completion marker removed, which correctly marks it "not done".

The base run (module fixture, ~15 s) is the whole pipeline on the tiny BEIR fixture plus two hard
documents: one of 100,000 characters (inputs are truncated, not a crash, through generation and
embedding) and one with a title but an empty text (allowed by BEIR). Each case works on a copy.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

import train
from core import io as core_io
from core.record_key import RecordKey
from helpers import (command_fails, make_tiny_bert2bert, make_tiny_t5, one_thread,  # noqa: F401  (fixture)
                     tiny_pipeline_profile)
from pipeline import layout
from retrieval.vectors import read_vector_ids

FIXTURE = Path(__file__).parent / "data" / "tiny_beir"
KEPT = Path(__file__).parent / "data" / "selfinstruct" / "kept.jsonl"
LONG_CHARS = 100_000
pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Base:
    root: Path
    data: Path
    model: Path
    profile: Path
    run: Path


def _long_text(chars: int) -> str:
    rng = random.Random(0)
    words = "cell protein gene tumour dose patient cohort risk mouse assay receptor signal".split()
    text = ""
    while len(text) < chars:
        text += " ".join(rng.choices(words, k=12)).capitalize() + ". "
    return text[:chars]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    root = tmp_path_factory.mktemp("bad_inputs")
    data = root / "data"
    shutil.copytree(FIXTURE, data)
    with open(data / "corpus.jsonl", "a", encoding="utf-8") as handle:
        long_document = {"_id": "long", "title": "A very long document", "text": _long_text(LONG_CHARS)}
        handle.write(json.dumps(long_document) + "\n")
        handle.write(json.dumps({"_id": "titleonly", "title": "Only a title", "text": ""}) + "\n")
    model = make_tiny_bert2bert(root / "models" / "bert2bert")
    config = tiny_pipeline_profile(data, model, generation={"batch_size": 8, "decoding": {
        "num_samples": 1, "max_new_tokens": 4, "top_k": 20, "top_p": None}}, evaluate={
        "sweep_doc_weights": [1.0], "k_values": [1, 10, 100], "methods": ["manual"], "levels": ["doc", "sentence"]})
    profile = root / "profile.yaml"
    profile.write_text(yaml.safe_dump(config))
    run = root / "run"
    outcomes = train.main(["pipeline", "-c", str(profile), "--run_dir", str(run)])
    assert all(o.status == "ran" for o in outcomes)
    return Base(root, data, model, profile, run)


# ----------------------------------------------------------------------------------- helpers
def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) -> SHA-256 of its bytes; the run lock's holder record is left
    out: each command that takes the lock rewrites it with its own PID and start time."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and path.name != ".lock"}


def assert_untouched(before: dict[str, str], root: Path, rerun: tuple[str, ...] = ()) -> None:
    """Earlier files unchanged, nothing new; only the markers of the ``rerun`` stages may be gone."""
    after = snapshot(root)
    may_go = {f".stages/{name}.json" for name in rerun}
    changed = sorted(name for name in before if name in after and after[name] != before[name])
    missing = sorted(set(before) - set(after) - may_go)
    new = sorted(set(after) - set(before))
    assert not changed and not missing and not new, f"changed {changed}, missing {missing}, new {new}"


@pytest.fixture
def run_dir(base: Base, tmp_path: Path) -> Path:
    """A private copy of the finished base run."""
    return Path(shutil.copytree(base.run, tmp_path / "run"))


fails = command_fails  # train.py argv exits 2 with a message; the message on one line


def pipeline_fails(capsys: pytest.CaptureFixture[str], base: Base, run_dir: Path, *extra: str,
                   rerun: tuple[str, ...] = ()) -> str:
    """The pipeline on ``run_dir`` with ``extra`` arguments fails cleanly and leaves ``run_dir`` as it was."""
    before = snapshot(run_dir)
    message = fails(capsys, "pipeline", "-c", str(base.profile), "--run_dir", str(run_dir), *extra)
    assert_untouched(before, run_dir, rerun)
    return message


def edited_data(base: Base, tmp_path: Path, name: str, edit: Callable[[bytes], bytes]) -> Path:
    """A copy of the base BEIR folder whose file ``name`` went through ``edit``."""
    data = Path(shutil.copytree(base.data, tmp_path / "data"))
    path = data / name
    path.write_bytes(edit(path.read_bytes()))
    return data


def corpus_lines(raw: bytes) -> list[bytes]:
    return raw.splitlines(keepends=True)


# ----------------------------------------------------------------------------------- the hard documents
def test_a_100000_character_document_is_truncated_through_generation_and_embedding(base: Base) -> None:
    from datamodules.embedding import TextBatchCollator
    from lightning_modules.encoder import EncoderModule
    from lightning_modules.loading import load_tokenizer

    stage2 = [json.loads(line) for line in (base.run / layout.STAGE2).read_text().splitlines()]
    assert {r["task"] for r in stage2 if r["doc_id"] == "long"} == {"question", "keywords"}
    assert {r["doc_id"] for r in stage2} >= {"long", "titleonly"}
    assert read_vector_ids(base.run / layout.DOCUMENTS).count("long") == 1
    sentence_ids = read_vector_ids(base.run / layout.SENTENCES)
    assert sum(1 for key in sentence_ids if RecordKey.decode(key).doc_id == "long") > 1000  # one unit per sentence
    encoder = EncoderModule(str(base.run / layout.TUNED_MODEL))
    collator = TextBatchCollator(load_tokenizer(encoder.tokenizer_path), encoder.max_length)
    batch = collator([("long", _long_text(LONG_CHARS))])
    assert batch["input_ids"].shape[1] == encoder.max_length  # cut to the encoder's limit, not 25,000 tokens


# ----------------------------------------------------------------------------------- data stage
def test_truncated_jsonl_line_in_the_corpus(capsys, base: Base, run_dir: Path, tmp_path: Path) -> None:
    data = edited_data(base, tmp_path, "corpus.jsonl", lambda raw: raw.rstrip(b"\n")[:-40])
    message = pipeline_fails(capsys, base, run_dir, "--data.path", str(data), rerun=("data",))
    assert "corpus.jsonl, line 22: malformed JSON" in message and "interrupted write" in message


def test_wrong_encoding_bytes_in_the_corpus(capsys, base: Base, run_dir: Path, tmp_path: Path) -> None:
    data = edited_data(base, tmp_path, "corpus.jsonl",
                       lambda raw: raw.replace("fracture risk".encode(), "fracture risk caf\xe9".encode("latin-1"), 1))
    message = pipeline_fails(capsys, base, run_dir, "--data.path", str(data), rerun=("data",))
    assert "corpus.jsonl, line 1: not valid UTF-8" in message and "re-encode the file as UTF-8" in message


def test_empty_document_text(capsys, base: Base, run_dir: Path, tmp_path: Path) -> None:
    empty = json.dumps({"_id": "blank", "title": " ", "text": ""}).encode() + b"\n"
    data = edited_data(base, tmp_path, "corpus.jsonl", lambda raw: raw + empty)
    message = pipeline_fails(capsys, base, run_dir, "--data.path", str(data), "--data.empty_documents", "error",
                             rerun=("data",))  # kept by default, as BEIR does (tests/test_empty_documents.py)
    assert "corpus.jsonl, line 23, field 'text': empty document" in message and "remove it" in message


def test_duplicate_document_ids(capsys, base: Base, run_dir: Path, tmp_path: Path) -> None:
    data = edited_data(base, tmp_path, "corpus.jsonl", lambda raw: raw + corpus_lines(raw)[2])
    message = pipeline_fails(capsys, base, run_dir, "--data.path", str(data), rerun=("data",))
    assert "corpus.jsonl, line 23, field '_id': duplicate id 'd03' (first on line 3" in message
    assert "ids must be unique" in message


def test_qrels_naming_unknown_ids(capsys, base: Base, run_dir: Path, tmp_path: Path) -> None:
    data = edited_data(base, tmp_path, "qrels/test.tsv", lambda raw: raw + b"q1\tno-such-doc\t1\n")
    message = pipeline_fails(capsys, base, run_dir, "--data.path", str(data), "--data.unknown_ids", "fail",
                             rerun=("data",))
    assert "test.tsv: 1 judgement names unknown documents (e.g. 'no-such-doc' on line 10)" in message
    assert "set data.unknown_ids to 'warn'" in message


def test_qrels_with_a_non_integer_score(capsys, base: Base, run_dir: Path, tmp_path: Path) -> None:
    data = edited_data(base, tmp_path, "qrels/test.tsv", lambda raw: raw + b"q1\td01\thigh\n")
    message = pipeline_fails(capsys, base, run_dir, "--data.path", str(data), rerun=("data",))
    assert "test.tsv, line 10, field 'score': 'high' is not an integer" in message


def test_missing_queries_file(capsys, base: Base, run_dir: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(base.data, tmp_path / "data"))
    (data / "queries.jsonl").unlink()
    message = pipeline_fails(capsys, base, run_dir, "--data.path", str(data), rerun=("data",))
    assert "queries.jsonl: file not found" in message and "a BEIR folder holds" in message


# ----------------------------------------------------------------------------------- stage 1 from a file
def _synthetic_file(tmp_path: Path, records: list[dict]) -> Path:
    path = tmp_path / "synthetic.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


GOOD_RECORD = {"doc_id": "d01", "task": "question", "text": "Does vitamin D prevent fractures?"}


def test_synthetic_file_whose_doc_ids_are_not_in_the_corpus(capsys, base: Base, run_dir: Path, tmp_path: Path) -> None:
    path = _synthetic_file(tmp_path, [GOOD_RECORD, {**GOOD_RECORD, "doc_id": "elsewhere-7"}])
    message = pipeline_fails(capsys, base, run_dir, "--stage1.source", "file", "--stage1.file", str(path),
                             rerun=("stage1",))
    assert f"{path}, field 'doc_id': 1 of 2 records name documents that are not in the corpus (e.g. elsewhere-7)" \
        in message and "on_unknown_doc='warn'" in message


def test_synthetic_file_with_an_unknown_task_and_a_truncated_line(capsys, base: Base, run_dir: Path,
                                                                   tmp_path: Path) -> None:
    path = _synthetic_file(tmp_path, [GOOD_RECORD, {**GOOD_RECORD, "task": "summary"}])
    message = pipeline_fails(capsys, base, run_dir, "--stage1.source", "file", "--stage1.file", str(path),
                             rerun=("stage1",))
    assert f"{path}, line 2, field 'task': unknown task 'summary'" in message and "question, keywords" in message
    path.write_text(json.dumps(GOOD_RECORD) + "\n" + json.dumps(GOOD_RECORD)[:25])
    message = pipeline_fails(capsys, base, run_dir, "--stage1.source", "file", "--stage1.file", str(path),
                             rerun=("stage1",))
    assert f"{path}, line 2: malformed JSON" in message


def test_synthetic_file_repeating_a_record(capsys, base: Base, run_dir: Path, tmp_path: Path) -> None:
    path = _synthetic_file(tmp_path, [{**GOOD_RECORD, "sample_idx": 0}, {**GOOD_RECORD, "sample_idx": 0}])
    message = pipeline_fails(capsys, base, run_dir, "--stage1.source", "file", "--stage1.file", str(path),
                             rerun=("stage1",))
    assert f"{path}, line 2, field 'sample_idx'" in message and "already appeared on line 1" in message


# ----------------------------------------------------------------------------------- self-instruct / fit
def _fit_args(model: Path, fit_dir: Path, kept: Path, data: Path) -> list[str]:
    config = {"model": {"init_args": {"model_name_or_path": str(model), "max_input_length": 64}},
              "data": {"init_args": {"kept_file": str(kept), "dataset": {"path": str(data)}, "batch_size": 4}},
              "trainer": {"max_epochs": 1, "logger": False, "enable_progress_bar": False, "default_root_dir":
                          str(fit_dir), "accelerator": "cpu"}}
    return ["fit", "-c", "configs/fit/selfinstruct.yaml", "-c", json.dumps(config)]


def test_kept_records_with_an_empty_target(capsys, base: Base, run_dir: Path, tmp_path: Path) -> None:
    records = [json.loads(line) for line in KEPT.read_text().splitlines()]
    records[3]["text"] = "  "
    kept = tmp_path / "kept.jsonl"
    kept.write_text("".join(json.dumps(r) + "\n" for r in records))
    before = snapshot(run_dir)
    message = fails(capsys, *_fit_args(base.model, run_dir / layout.FIT_DIR, kept, base.data))
    assert f"{kept}, field 'text': document '{records[3]['doc_id']}', task 'keywords', sample 0: empty" in message
    assert_untouched(before, run_dir)


def test_too_few_kept_documents_for_a_split(capsys, base: Base, run_dir: Path, tmp_path: Path) -> None:
    kept = tmp_path / "kept.jsonl"
    kept.write_text("".join(KEPT.read_text().splitlines(keepends=True)[:2]))  # one document's records
    before = snapshot(run_dir)
    message = fails(capsys, *_fit_args(base.model, run_dir / layout.FIT_DIR, kept, base.data))
    assert f"{kept}: only 1 document(s) have kept records" in message and "loosen the filter" in message
    assert_untouched(before, run_dir)


def test_checkpoint_of_a_different_model(capsys, base: Base, run_dir: Path, tmp_path: Path) -> None:
    """``fit --ckpt_path`` naming a BERT2BERT checkpoint, by file or as the run's ``last``, while the model is a T5.

    Given a file, LightningCLI would silently swap in the checkpoint's model; given ``last``, the fit's
    resolved config would be rewritten before Lightning's strict load listed hundreds of keys.
    """
    t5 = make_tiny_t5(tmp_path / "t5")
    other = run_dir / layout.FIT_DIR / "checkpoints" / "last.ckpt"
    data = (KEPT, base.data)
    before = snapshot(run_dir)
    message = fails(capsys, *_fit_args(t5, tmp_path / "fit", *data), f"--ckpt_path={other}")
    assert f"{other}, field 'ckpt_path': checkpoint of a different model: model_name_or_path is '{base.model}' " \
           f"there but '{t5}' in the configuration" in message and "drop --ckpt_path" in message
    message = fails(capsys, *_fit_args(t5, run_dir / layout.FIT_DIR, *data), "--ckpt_path=last")
    assert f"{other}, field 'ckpt_path': checkpoint of a different model" in message
    assert_untouched(before, run_dir)


# ----------------------------------------------------------------------------------- configuration
def test_config_with_an_unknown_key(capsys, base: Base, run_dir: Path, tmp_path: Path) -> None:
    fragment = tmp_path / "typo.yaml"
    fragment.write_text("embed:\n  batchsize: 8\n")
    message = pipeline_fails(capsys, base, run_dir, "-c", str(fragment))
    assert "batchsize" in message and "embed" in message


def test_config_with_a_wrong_type(capsys, base: Base, run_dir: Path) -> None:
    message = pipeline_fails(capsys, base, run_dir, "--embed.batch_size", "many")
    assert "embed.batch_size" in message and "many" in message


def test_prompt_template_without_text(capsys, base: Base, run_dir: Path) -> None:
    message = pipeline_fails(capsys, base, run_dir, "--prompts.question", "Ask about {title}.")
    assert "prompt template 'question' has no {text} placeholder" in message and "add {text}" in message
    message = pipeline_fails(capsys, base, run_dir, "--prompts.keywords", "Keywords of {txt}")
    assert "prompt template 'keywords' has unknown placeholder '{txt}'" in message


# ----------------------------------------------------------------------------------- models
def test_model_path_that_does_not_exist(capsys, base: Base, run_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    message = pipeline_fails(capsys, base, run_dir, "--model.init_args.model_name_or_path", str(missing))
    assert f"model path '{missing}' does not exist" in message


def test_pickled_weights_are_refused_unless_allowed(capsys, base: Base, run_dir: Path, tmp_path: Path) -> None:
    from lightning_modules.seq2seq import Seq2SeqModule

    pickled = Path(shutil.copytree(base.model, tmp_path / "pickled"))
    model = Seq2SeqModule(model_name_or_path=str(base.model)).model
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    message = pipeline_fails(capsys, base, run_dir, "--model.init_args.model_name_or_path", str(pickled))
    assert "holds weights only in pickle form (pytorch_model.bin)" in message and "allow_pickle_weights" in message
    loaded = Seq2SeqModule(model_name_or_path=str(pickled), allow_pickle_weights=True)  # the user opted in
    assert torch.equal(loaded.model.encoder.embeddings.word_embeddings.weight,
                       model.encoder.embeddings.word_embeddings.weight)


def test_model_folder_whose_weights_belong_to_another_model(capsys, base: Base, run_dir: Path,
                                                             tmp_path: Path) -> None:
    """A T5 config beside BERT2BERT weights: refused, never silently initialised at random."""
    mismatched = make_tiny_t5(tmp_path / "mismatched")
    shutil.copy(base.model / "model.safetensors", mismatched / "model.safetensors")
    message = pipeline_fails(capsys, base, run_dir, "--embed.encoder", str(mismatched), rerun=("embed",))
    assert str(mismatched) in message and "another model" in message


# ----------------------------------------------------------------------------------- run directory
def test_run_directory_that_is_a_file(capsys, base: Base, tmp_path: Path) -> None:
    target = tmp_path / "run.txt"
    target.write_text("not a folder")
    message = fails(capsys, "pipeline", "-c", str(base.profile), "--run_dir", str(target))
    assert f"run_dir '{target}' is a file" in message and target.read_text() == "not a folder"


def test_run_directory_and_dataset_folder_overlap(capsys, base: Base, tmp_path: Path) -> None:
    data = Path(shutil.copytree(base.data, tmp_path / "data"))
    before = snapshot(data)
    message = fails(capsys, "pipeline", "-c", str(base.profile), "--data.path", str(data), "--run_dir",
                    str(data / "run"))
    assert f"run_dir '{data / 'run'}' and the data folder '{data}' overlap" in message
    assert "keep the run directory outside the dataset" in message
    assert_untouched(before, data)


@pytest.fixture
def failing_writes(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path, int], None]:
    """Make every atomic rename into ``root`` fail with ``code`` (EROFS: read-only, ENOSPC: disk full).

    Tests run as root, where a read-only ``chmod`` does not block writes, so the failure is simulated
    where the file system would report it: at the rename (read-only) or when the data is flushed (full).
    """
    def install(root: Path, code: int) -> None:
        replace, fsync = os.replace, core_io._fsync

        def failing_replace(src, dst, *args, **kwargs):
            if Path(dst).resolve().is_relative_to(root.resolve()):
                raise OSError(code, os.strerror(code), str(dst))
            return replace(src, dst, *args, **kwargs)

        def failing_fsync(path: Path) -> None:
            if Path(path).resolve().is_relative_to(root.resolve()):
                raise OSError(code, os.strerror(code), str(path))
            fsync(path)

        monkeypatch.setattr(os, "replace", failing_replace)
        monkeypatch.setattr(core_io, "_fsync", failing_fsync)

    return install


@pytest.mark.parametrize("code, words", [(errno.EROFS, "read-only"), (errno.ENOSPC, "no space left")])
def test_run_directory_read_only_or_full(capsys, base: Base, run_dir: Path, failing_writes, code: int,
                                         words: str) -> None:
    failing_writes(run_dir, code)
    message = pipeline_fails(capsys, base, run_dir, "--force", "[evaluate]", rerun=("evaluate",))
    assert "cannot write" in message and str(run_dir) in message and words in message.lower()
    assert "free space" in message or "writable" in message


def test_run_directory_full_while_embedding(capsys, base: Base, run_dir: Path, failing_writes) -> None:
    """The disk fills while the embed stage streams part files: earlier vectors stay, no part is half-written."""
    queries = run_dir / layout.QUERIES
    queries.unlink()
    failing_writes(run_dir, errno.ENOSPC)
    message = pipeline_fails(capsys, base, run_dir, rerun=("embed",))
    assert "cannot write" in message and "No space left" in message


def test_truncated_vector_file(capsys, base: Base, run_dir: Path) -> None:
    vectors = run_dir / layout.DOCUMENTS
    vectors.write_bytes(vectors.read_bytes()[:-100])
    message = pipeline_fails(capsys, base, run_dir, "--force", "[evaluate]", rerun=("evaluate",))
    assert f"{vectors}: file is" in message and "truncated" in message and "rerun the embed stage" in message
