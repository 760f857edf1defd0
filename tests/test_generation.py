"""The generation stage: prompts in sorted batches, each record exactly once, resume, reuse, merge, 2-process DDP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lightning.pytorch import Callback, LightningModule, Trainer

from callbacks.synthetic_writer import GenerationProgressBar, SyntheticTextWriter
from core.io import InputError
from core.record_key import RecordKey
from core.tasks import TASKS
from datamodules.beir import BeirDataset, load_beir
from datamodules.generation import GenerationDataModule, Prompts
from datamodules.prompts import PromptTemplates
from helpers import CrashAfter, make_tiny_bert2bert, make_tiny_t5, one_thread  # noqa: F401 (a fixture)
from lightning_modules.decoding import DecodingConfig
from lightning_modules.seq2seq import Seq2SeqModule
from pipeline.generate import generate_synthetic, meta_path
from retrieval.synthetic import SyntheticRecord, read_synthetic, write_synthetic

TINY_BEIR = Path(__file__).resolve().parent / "data" / "tiny_beir"
DECODING = DecodingConfig(num_samples=2, max_new_tokens=8, top_k=50, top_p=0.95, seed=3)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset() -> BeirDataset:
    return load_beir(TINY_BEIR)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"t5": make_tiny_t5(root / "t5"), "bert2bert": make_tiny_bert2bert(root / "bert2bert")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, dataset: BeirDataset, models: dict[str, Path]) -> bytes:
    """An uninterrupted single-process run of the tiny T5: the bytes every other run must reproduce."""
    output = tmp_path_factory.mktemp("reference") / "stage1.jsonl"
    generate_synthetic(dataset, str(models["t5"]), decoding=DECODING, output=output, batch_size=4, progress=False)
    return output.read_bytes()


class RecordPrompts(Callback):
    """The (doc_id, task) prompts a run generated; with ``folder``, each rank writes ``rank<r>.json``."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder, self.keys = folder, []

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: dict,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self.keys.extend(zip(batch["doc_id"], batch["task"]))

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.folder is not None:
            (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.keys))


def canonical_keys(doc_ids: list[str], samples: int) -> list[tuple[str, str, int]]:
    return [(doc_id, task, index) for doc_id in doc_ids for task in TASKS for index in range(samples)]


# ----- prompts and batches -------------------------------------------------------------------------

def test_batches_are_length_sorted_carry_ids_truncate_and_skip(dataset: BeirDataset, models: dict[str, Path]) -> None:
    module = Seq2SeqModule(str(models["t5"]))
    skip = {("d03", "question"), ("d05", "keywords")}
    datamodule = GenerationDataModule(dataset, PromptTemplates(), TASKS, batch_size=6, max_input_length=48, skip=skip)
    datamodule.connect(module)
    datamodule.setup("predict")
    batches = list(datamodule.predict_dataloader())
    seen = [key for batch in batches for key in zip(batch["doc_id"], batch["task"])]
    prompts = Prompts([(d, doc.title, doc.text) for d, doc in dataset.corpus.items()], PromptTemplates())
    assert sorted(seen) == sorted(set(prompts.keys()) - skip) and len(seen) == len(set(seen))
    rendered = dict(iter(prompts))
    lengths = [len(rendered[key]) for key in seen]
    assert lengths == sorted(lengths, reverse=True)  # longest first: little padding within a batch
    assert all(batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[1] <= 48
               and len(batch["doc_id"]) == batch["input_ids"].shape[0] for batch in batches)
    assert any(batch["input_ids"].shape[1] == 48 for batch in batches)  # long prompts are cut, not refused


def test_bad_documents_tasks_and_lengths_are_clear_errors(dataset: BeirDataset, models: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="document 1 is .*expected \\(doc_id, title, text\\) strings"):
        GenerationDataModule([("a", "T", "x"), ("b", None, "")])
    GenerationDataModule([("a", "T", "x"), ("b", " ", "")])  # an empty document: an empty prompt text, as BEIR keeps it
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        GenerationDataModule([("a", "T", "x"), ("a", "U", "y")])
    with pytest.raises(ValueError, match="tasks must be distinct names"):
        GenerationDataModule(dataset, tasks=("question", "summary"))
    with pytest.raises(InputError, match="no documents"):
        GenerationDataModule([])
    with pytest.raises(RuntimeError, match="no generator"):
        GenerationDataModule(dataset).setup("predict")
    with pytest.raises(TypeError, match="GeneratorModule"):
        GenerationDataModule(dataset).connect(object())
    datamodule = GenerationDataModule(dataset, max_input_length=1024)
    with pytest.raises(ValueError, match="exceeds the model's max_input_length=512"):
        datamodule.connect(Seq2SeqModule(str(models["t5"])))


# ----- the stage -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["t5", "bert2bert"])
def test_every_document_task_and_sample_is_written_exactly_once(tmp_path: Path, dataset: BeirDataset,
                                                                models: dict[str, Path], name: str) -> None:
    output = tmp_path / "synthetic" / "stage2.jsonl"
    doc_ids = dataset.doc_ids[:12] if name == "bert2bert" else dataset.doc_ids  # its 30k-token vocabulary is slow
    documents = [(doc_id, dataset.corpus[doc_id].title, dataset.corpus[doc_id].text) for doc_id in doc_ids]
    bar = GenerationProgressBar(tasks_per_document=2)
    generate_synthetic(documents, str(models[name]), decoding=DECODING, output=output, stage=2, batch_size=3,
                       trainer_kwargs={"callbacks": [bar]})
    assert float(bar.predict_progress_bar.postfix.split("docs/s=")[1]) > 0  # the bar shows documents/s
    records = read_synthetic(output, corpus_ids=set(doc_ids))  # refuses a repeated (doc, task, sample)
    assert [(r.doc_id, r.task, r.sample_idx) for r in records] == canonical_keys(doc_ids, 2)  # canonical order
    assert {r.stage for r in records} == {2} and {r.model for r in records} == {str(models[name])}
    assert len({r.text for r in records}) > len(records) // 2  # sampled, not one text repeated
    first = json.loads(output.read_text(encoding="utf-8").splitlines()[0])
    assert list(first) == ["doc_id", "task", "text", "sample_idx", "stage", "model"]
    assert json.loads(meta_path(output).read_text())["records"] == len(records)
    assert sorted(p.name for p in output.parent.iterdir()) == ["stage2.jsonl", "stage2.jsonl.meta.json"]


def test_resume_after_interruption_is_byte_identical_and_generates_nothing_twice(
        tmp_path: Path, dataset: BeirDataset, models: dict[str, Path], reference: bytes) -> None:
    output = tmp_path / "stage1.jsonl"
    module = Seq2SeqModule(str(models["t5"]))
    first = RecordPrompts()
    with pytest.raises(RuntimeError, match="simulated interruption"):
        generate_synthetic(dataset, module, decoding=DECODING, output=output, batch_size=4, progress=False,
                           trainer_kwargs={"callbacks": [first, CrashAfter(3)]})
    assert not output.exists() and len(first.keys) == 12
    second = RecordPrompts()  # another batch size: other batch compositions, the same texts
    generate_synthetic(dataset, module, decoding=DECODING, output=output, batch_size=5, progress=False,
                       trainer_kwargs={"callbacks": [second]})
    assert sorted(first.keys + second.keys) == sorted((d, t) for d in dataset.doc_ids for t in TASKS)
    assert output.read_bytes() == reference
    assert not Path(f"{output}.parts").exists()


def test_finished_output_is_reused_and_a_changed_input_regenerates(tmp_path: Path, dataset: BeirDataset,
                                                                   models: dict[str, Path], reference: bytes) -> None:
    output = tmp_path / "stage1.jsonl"
    module = Seq2SeqModule(str(models["t5"]))
    generate_synthetic(dataset, module, decoding=DECODING, output=output, batch_size=8, progress=False)
    assert output.read_bytes() == reference
    again = RecordPrompts()  # the same inputs: nothing is generated
    generate_synthetic(dataset, module, decoding=DECODING, output=output, batch_size=8, progress=False,
                       trainer_kwargs={"callbacks": [again, CrashAfter(1)]})
    assert again.keys == [] and output.read_bytes() == reference

    reseeded = RecordPrompts()  # another seed: every prompt is generated again, the output replaced
    generate_synthetic(dataset, module, decoding=DecodingConfig(**{**DECODING.__dict__, "seed": 4}), output=output,
                       batch_size=8, progress=False, trainer_kwargs={"callbacks": [reseeded]})
    assert len(reseeded.keys) == 2 * len(dataset.doc_ids) and output.read_bytes() != reference

    with pytest.raises(RuntimeError, match="simulated interruption"):  # an output edited by hand is not trusted
        output.write_text(output.read_text(encoding="utf-8")[:-200], encoding="utf-8")
        generate_synthetic(dataset, module, decoding=DECODING, output=output, batch_size=8, progress=False,
                           trainer_kwargs={"callbacks": [CrashAfter(1)]})
    assert not meta_path(output).exists()  # a crash now cannot make the edited file look finished


def test_merge_keeps_the_first_copy_in_canonical_order_and_refuses_a_gap(tmp_path: Path) -> None:
    order = [RecordKey(d, "question", 0).encode() for d in ("a", "b", "c")]
    writer = SyntheticTextWriter(tmp_path / "out.jsonl", stage=1, order=order, fingerprint="fp")
    writer.parts_dir.mkdir(parents=True)

    def part(name: str, *rows: tuple[str, str]) -> None:
        write_synthetic(writer.parts_dir / name, [SyntheticRecord(d, "question", text, 0, 1, "m") for d, text in rows])

    part("rank00000-1-b0000000.jsonl", ("c", "first c"), ("a", "ä \"quoted\"\nline"))
    part("rank00001-1-b0000000.jsonl", ("c", "second c"))
    assert writer.done_keys() == {order[0], order[2]}
    with pytest.raises(RuntimeError, match=r"1 of 3 keys"):
        writer.merge()
    assert not (tmp_path / "out.jsonl").exists() and len(writer.part_files()) == 2  # parts kept for a rerun
    part("rank00000-2-b0000001.jsonl", ("b", "bee"))
    writer.merge()
    records = read_synthetic(tmp_path / "out.jsonl")
    assert [(r.doc_id, r.text) for r in records] == [("a", "ä \"quoted\"\nline"), ("b", "bee"), ("c", "first c")]
    assert not writer.parts_root.exists()


@pytest.mark.ddp
def test_two_process_ddp_gives_the_same_bytes_as_one_process(tmp_path: Path, dataset: BeirDataset,
                                                             models: dict[str, Path], reference: bytes) -> None:
    """Real DDP (gloo, Lightning's predict sampler, the writer's barrier and merge) in two forked processes."""
    ranks = tmp_path / "ranks"
    ranks.mkdir()
    output = tmp_path / "stage1.jsonl"
    generate_synthetic(dataset, str(models["t5"]), decoding=DECODING, output=output, batch_size=4, progress=False,
                       trainer_kwargs={"accelerator": "cpu", "devices": 2, "strategy": "ddp_fork",
                                       "callbacks": [RecordPrompts(ranks)]})
    per_rank = [[tuple(key) for key in json.loads((ranks / f"rank{rank}.json").read_text())] for rank in (0, 1)]
    assert all(per_rank) and abs(len(per_rank[0]) - len(per_rank[1])) <= 1
    assert sorted(per_rank[0] + per_rank[1]) == sorted((d, t) for d in dataset.doc_ids for t in TASKS)
    assert output.read_bytes() == reference
    assert json.loads(meta_path(output).read_text())["records"] == 4 * len(dataset.doc_ids)
