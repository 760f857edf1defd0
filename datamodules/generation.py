"""Generation inputs: documents x tasks -> prompts, in length-sorted batches that carry their ids.

Sorting under DDP (the embedding DataModule's approach, and its code: ``plan_order`` and
``SortedTexts`` from :mod:`datamodules.embedding`): the prompts are sorted by length in characters,
longest first, *before* the dataset is built, and the DataLoader is a plain sequential one.
Lightning's ``UnrepeatedDistributedSampler`` for predict hands rank ``r`` the positions
``r, r + W, r + 2W, ...`` of that sorted list, so every prompt goes to exactly one rank, each rank's
stream stays sorted (its batches are length-homogeneous: little padding), and ranks get near-equal
work. Longest first puts an out-of-memory batch at the start of a run, not hours in. Characters
stand in for tokens: tokenising every prompt up front would cost a pass over the corpus for a
little less padding.

Prompts are rendered lazily from ``(doc_id, title, text)`` triples (:class:`Prompts`), so a corpus
of millions of documents is held once, not once per task.

Resume: ``skip`` holds the ``(doc_id, task)`` prompts an earlier run finished; they are left out.
When fewer than ``world_size`` prompts remain, ``plan_order`` adds finished ones back so that no
rank is idle (an idle rank would skip the writer's merge barrier); the merge deduplicates them.

Where tokenising and padding come from (one way, as :class:`datamodules.selfinstruct.SelfInstructDataModule`):
the generator owns them (:meth:`GeneratorModule.prompt_encoder`). Under a Trainer the DataModule calls
:meth:`GenerationDataModule.connect` with ``trainer.lightning_module``; without one, call it yourself.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Any, Union

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from core.io import InputError
from core.tasks import TASKS
from datamodules.beir import BeirDataset
from datamodules.embedding import SortedTexts, plan_order
from datamodules.prompts import PromptTemplates
from lightning_modules.generator import GeneratorModule, PromptEncoder
from retrieval.vectors import check_ids

DocumentTriple = tuple[str, str, str]
"""``(doc_id, title, text)``."""
PromptKey = tuple[str, str]
"""``(doc_id, task)``: one prompt, the unit of work and of resume."""
Documents = Union[BeirDataset, Sequence[DocumentTriple]]


def document_triples(documents: Documents) -> list[DocumentTriple]:
    """``(doc_id, title, text)`` in corpus order, checked: unique string ids. A document with neither title nor
    text is generated for with an empty prompt text, as BEIR keeps it (``data.empty_documents``)."""
    if isinstance(documents, BeirDataset):
        return [(doc_id, doc.title, doc.text) for doc_id, doc in documents.corpus.items()]
    triples = [tuple(item) for item in documents]
    for position, item in enumerate(triples):
        if len(item) != 3 or not all(isinstance(part, str) for part in item):
            raise InputError(f"document {position} is {item!r:.80}; expected (doc_id, title, text) strings",
                             field="documents")
    check_ids([item[0] for item in triples], what="document ids")
    return triples  # type: ignore[return-value]


def check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """Known, distinct tasks in the given order (which is the order of the output file)."""
    tasks = tuple(tasks)
    unknown = [task for task in tasks if task not in TASKS]
    if not tasks or unknown or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must be distinct names from {', '.join(TASKS)}, got {list(tasks)}")
    return tasks


class Prompts(Sequence):
    """Item ``i`` is ``((doc_id, task), prompt)`` for document ``i // len(tasks)`` and task ``i % len(tasks)``.

    So the natural order is the canonical one: corpus order, then task order.
    """

    def __init__(self, documents: Sequence[DocumentTriple], templates: PromptTemplates,
                 tasks: Sequence[str] = TASKS) -> None:
        self.documents = documents
        self.templates = templates
        self.tasks = check_tasks(tasks)

    def __len__(self) -> int:
        return len(self.documents) * len(self.tasks)

    def __getitem__(self, index: int) -> tuple[PromptKey, str]:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        doc_id, title, text = self.documents[index // len(self.tasks)]
        task = self.tasks[index % len(self.tasks)]
        return (doc_id, task), self.templates.render(task, title, text)

    def keys(self) -> Iterator[PromptKey]:
        """``(doc_id, task)`` of every prompt in canonical order, lazily (a corpus may hold millions)."""
        return ((doc_id, task) for doc_id, _, _ in self.documents for task in self.tasks)


class PromptCollator:
    """Tokenise ``((doc_id, task), prompt)`` rows into a generator's predict batch; picklable for workers."""

    def __init__(self, encode: PromptEncoder) -> None:
        self.encode = encode

    def __call__(self, rows: list[tuple[PromptKey, str]]) -> dict[str, Any]:
        batch = self.encode([prompt for _, prompt in rows])
        return {**batch, "doc_id": [key[0] for key, _ in rows], "task": [key[1] for key, _ in rows]}


class GenerationDataModule(LightningDataModule):
    """Predict batches (the generator's prompt encoding, plus ``doc_id`` and ``task``) for a :class:`GeneratorModule`."""

    def __init__(self, documents: Documents, templates: PromptTemplates = PromptTemplates(),
                 tasks: Sequence[str] = TASKS, batch_size: int = 32, max_input_length: int | None = None,
                 num_workers: int = 0, skip: Collection[PromptKey] = ()) -> None:
        """
        Args:
            documents: a BEIR split or ``(doc_id, title, text)`` triples.
            templates: one instruction per task.
            tasks: which tasks to prompt for, in output order.
            batch_size: prompts per batch on each device (each yields ``decoding.num_samples`` outputs).
            max_input_length: prompt tokens kept (the passage's end is cut); null: the model's limit.
            num_workers: DataLoader worker processes (they only tokenise).
            skip: ``(doc_id, task)`` prompts already generated by an earlier run.
        """
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_input_length is not None and max_input_length < 1:
            raise ValueError(f"max_input_length must be >= 1 or null, got {max_input_length}")
        self.prompts = Prompts(document_triples(documents), templates, tasks)
        if not len(self.prompts):
            raise InputError("no documents to generate for", field="documents")
        self.batch_size = batch_size
        self.max_input_length = max_input_length
        self.num_workers = num_workers
        self.skip = frozenset(skip)
        self.collator: PromptCollator | None = None
        self.dataset: SortedTexts | None = None

    def connect(self, generator: GeneratorModule) -> None:
        """Encode as ``generator`` does; prompts are cut to ``max_input_length`` or, when unset, the model's limit."""
        if not isinstance(generator, GeneratorModule):
            raise TypeError(f"GenerationDataModule encodes prompts with a GeneratorModule, got "
                            f"{type(generator).__name__}")
        if self.max_input_length is not None and self.max_input_length > generator.max_input_length:
            raise ValueError(f"max_input_length={self.max_input_length} exceeds the model's max_input_length="
                             f"{generator.max_input_length}; lower the first or raise the second")
        self.collator = PromptCollator(generator.prompt_encoder(self.max_input_length or generator.max_input_length))

    def setup(self, stage: str) -> None:
        if stage != "predict":
            raise ValueError(f"GenerationDataModule serves predict, not '{stage}'")
        if self.trainer is not None:
            self.connect(self.trainer.lightning_module)
        elif self.collator is None:
            raise RuntimeError("GenerationDataModule has no generator: run it under a Trainer with a "
                               "GeneratorModule, or call connect(module) first")
        world_size = self.trainer.world_size if self.trainer is not None else 1
        order = plan_order(self.prompts, self.skip, world_size)
        done = sum(1 for key in self.prompts.keys() if key in self.skip)
        if done:
            rank_zero_info(f"resuming: {done} of {len(self.prompts)} prompts already generated, {len(order)} to go")
        self.dataset = SortedTexts(self.prompts, order)

    def predict_dataloader(self) -> DataLoader:
        if self.dataset is None:
            self.setup("predict")
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, collate_fn=self.collator,
                          num_workers=self.num_workers, persistent_workers=False)
