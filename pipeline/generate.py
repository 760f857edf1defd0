"""The one way the project writes synthetic questions and keywords with a model (stage-1 ``self``, stage 2).

``generate_synthetic`` runs ``Trainer.predict(return_predictions=False)`` with
:class:`GenerationDataModule` (documents x tasks -> length-sorted prompts) and
:class:`SyntheticTextWriter` (per-rank JSONL parts, merged after a barrier), on one CPU, one GPU
or many (DDP). Per-document seeds make every text a function of its document, not of the batch,
the rank count or where a run restarted, so:

* an interrupted run (a crash, ``SIGKILL``, a pre-empted node) resumes from its part files, skips
  the finished ``(doc_id, task)`` prompts, and ends with the same file, byte for byte, as a run
  that was never interrupted;
* a finished output is reused when its inputs are the same. "Same" is a fingerprint of the model's
  weights and tokenizer, the decoding settings, the rendered prompts (ids, titles, texts,
  templates), the tasks, the input length and the stage. It names the part folder (parts made
  from other inputs are never resumed from) and is stored beside the output in
  ``<output>.meta.json`` with the output's SHA-256.

Order of writes, so that a crash at any point leaves a state the next run reads correctly: the
old ``.meta.json`` is removed before predicting, the output is merged atomically (parts kept), the
new ``.meta.json`` is written, and only then are the parts deleted.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities import rank_zero_info

from callbacks.stop_on_signal import StopOnSignal
from callbacks.synthetic_writer import GenerationProgressBar, SyntheticTextWriter
from core.fingerprint import items_hash, stable_hash
from core.io import InputError, file_sha256, write_json_atomic
from core.record_key import RecordKey
from core.tasks import TASKS
from datamodules.generation import Documents, GenerationDataModule, Prompts, check_tasks, document_triples
from datamodules.prompts import PromptTemplates
from lightning_modules.decoding import DecodingConfig
from lightning_modules.generator import GeneratorModule
from lightning_modules.precision import precision_identity
from lightning_modules.seq2seq import Seq2SeqModule

FORMAT_VERSION = 1
"""Bump when records change meaning for the same inputs, so old outputs and parts are not reused."""


def run_fingerprint(module: GeneratorModule, prompts: Prompts, stage: int, max_input_length: int,
                    precision: dict[str, str] | None = None) -> str:
    """What decides the records: weights, tokenizer, decoding, label, prompts, tasks, input length, stage and
    a precision other than float32 (``precision_identity``: float32 runs keep their keys)."""
    settings = {**(precision or {}), "format": FORMAT_VERSION, "stage": stage, **module.fingerprint(),
                "decoding": asdict(module.decoding),
                "model": module.model_label, "tasks": list(prompts.tasks), "max_input_length": max_input_length,
                "prompts": items_hash((RecordKey(doc_id, task, 0).encode(), prompt)
                                      for (doc_id, task), prompt in prompts)}
    return stable_hash(settings)


class RecordOrder(Sequence):
    """The canonical order of record keys (corpus, task, sample index), computed on demand.

    A list would hold one string per record (tens of MB for a million-document corpus) for the whole run.
    """

    def __init__(self, prompts: Prompts, samples: int) -> None:
        self.prompts, self.samples = prompts, samples

    def __len__(self) -> int:
        return len(self.prompts) * self.samples

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        prompt, sample = divmod(index, self.samples)
        tasks = self.prompts.tasks
        return RecordKey(self.prompts.documents[prompt // len(tasks)][0], tasks[prompt % len(tasks)], sample).encode()

    def __iter__(self) -> Iterator[str]:
        return (RecordKey(doc_id, task, sample).encode() for doc_id, task in self.prompts.keys()
                for sample in range(self.samples))


def meta_path(output: Path) -> Path:
    return output.with_name(output.name + ".meta.json")


def is_complete(output: Path, fingerprint: str) -> bool:
    """True if ``output`` was written by a finished run with these inputs and has not changed since."""
    meta = meta_path(output)
    if not (output.is_file() and meta.is_file()):
        return False
    try:
        recorded = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if recorded.get("fingerprint") != fingerprint:
        rank_zero_info(f"{output} was made from other inputs (model, decoding, prompts or documents); regenerating")
        return False
    if recorded.get("sha256") != file_sha256(output):
        rank_zero_info(f"{output} changed after it was written; regenerating")
        return False
    return True


def _module(module_or_path: GeneratorModule | str | os.PathLike, decoding: DecodingConfig | None) -> GeneratorModule:
    if isinstance(module_or_path, GeneratorModule):
        module = module_or_path
        if decoding is not None:
            module.set_decoding(decoding)
        return module
    return Seq2SeqModule(model_name_or_path=str(module_or_path), decoding=decoding or DecodingConfig())


def generate_synthetic(dataset: Documents, module_or_path: GeneratorModule | str | os.PathLike,
                       templates: PromptTemplates = PromptTemplates(), decoding: DecodingConfig | None = None,
                       output: str | os.PathLike = "synthetic/stage1.jsonl", stage: int = 1,
                       trainer_kwargs: dict[str, Any] | None = None, batch_size: int = 32,
                       tasks: Sequence[str] = TASKS, max_input_length: int | None = None, num_workers: int = 0,
                       progress: bool = True) -> Path:
    """Generate ``decoding.num_samples`` texts per document and task into ``output``; return its path.

    Args:
        dataset: a BEIR split or ``(doc_id, title, text)`` triples.
        module_or_path: a built :class:`GeneratorModule` (e.g. the tuned one, for stage 2) or a seq2seq folder
            or hub name (loaded as ``Seq2SeqModule(model_name_or_path=...)``).
        templates: the instruction per task.
        decoding: sampling/beam/greedy settings; None keeps a given module's own (or the defaults). A given
            module's ``decoding`` is replaced by this one.
        output: the merged JSONL file (``synthetic/stage1.jsonl`` or ``stage2.jsonl`` in the run directory).
        stage: 1 or 2, written into every record.
        trainer_kwargs: passed to ``Trainer`` (accelerator, devices, strategy, precision, callbacks...);
            defaults: one device, no logger, no checkpoints. Use ``precision: bf16-true`` on GPUs (never
            fp16 for T5).
        batch_size: prompts per batch per device.
        tasks: which tasks, in output order.
        max_input_length: prompt tokens kept; None: the module's ``max_input_length``.
        num_workers: DataLoader workers (tokenising only).
        progress: show the progress bar (with documents/s).

    Records are ``{"doc_id", "task", "text", "sample_idx", "stage", "model"}`` in corpus order, then task
    order, then sample index; each ``(doc_id, task, sample_idx)`` exactly once.
    """
    output = Path(output)
    module = _module(module_or_path, decoding)
    prompts = Prompts(document_triples(dataset), templates, check_tasks(tasks))
    if not len(prompts):
        raise InputError("no documents to generate for", field="dataset")
    input_length = max_input_length or module.max_input_length
    fingerprint = run_fingerprint(module, prompts, stage, input_length, precision_identity(trainer_kwargs))
    samples = module.decoding.num_samples
    order = RecordOrder(prompts, samples)
    writer = SyntheticTextWriter(output, stage, order=order, fingerprint=fingerprint, keep_parts=True)
    if is_complete(output, fingerprint):
        rank_zero_info(f"{output} already holds these {len(order)} records; reusing it")
        shutil.rmtree(writer.parts_root, ignore_errors=True)  # left if a crash came right after the last run
        return output
    meta_path(output).unlink(missing_ok=True)  # the output is about to change: its old meta must not vouch for it

    done = writer.done_keys()
    skip = {key for key in prompts.keys() if all(RecordKey(*key, index).encode() in done for index in range(samples))} \
        if done else set()
    datamodule = GenerationDataModule(prompts.documents, templates, prompts.tasks, batch_size=batch_size,
                                      max_input_length=max_input_length, num_workers=num_workers, skip=skip)
    settings: dict[str, Any] = {"accelerator": "auto", "devices": 1, "logger": False, "enable_checkpointing": False,
                                "enable_model_summary": False, "enable_progress_bar": progress}
    settings.update(trainer_kwargs or {})
    callbacks = [writer, *(settings.get("callbacks") or []), StopOnSignal()]  # stops after the writer wrote
    if settings["enable_progress_bar"] and not any(isinstance(callback, ProgressBar) for callback in callbacks):
        callbacks.append(GenerationProgressBar(len(prompts.tasks)))
    settings["callbacks"] = callbacks
    trainer = Trainer(**settings)
    trainer.predict(module, datamodule=datamodule, return_predictions=False)

    if trainer.is_global_zero:
        write_json_atomic(meta_path(output), {"fingerprint": fingerprint, "sha256": file_sha256(output),
                                              "records": len(order), "stage": stage, "model": module.model_label,
                                              "precision": str(trainer.precision)})
        shutil.rmtree(writer.parts_root, ignore_errors=True)
    return output
