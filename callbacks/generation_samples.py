"""Show what the model writes while it is tuned: a few validation prompts generated every validation epoch.

Why: the validation loss says the model fits the targets better; only the texts say whether it writes
questions worth retrieving with. The same first few validation prompts are generated every epoch
(and once before training, in Lightning's sanity check), with the module's own decoding settings
(seeded per document, so a change between epochs is the model's, not the sampler's), and the
growing table goes to ``<run dir>/tables/`` and to W&B through :func:`callbacks.tables.log_table`.
The rows are kept in the checkpoint, so a resumed run's table still starts before training.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from callbacks.tables import log_table
from lightning_modules.generator import LABEL_PAD_ID

COLUMNS = ["when", "step", "doc_id", "task", "instruction", "target", "generated"]


def _shorten(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


class GenerationSamples(Callback):
    """Generate for the first ``num_examples`` validation rows after each validation epoch; log a table."""

    def __init__(self, num_examples: int = 4, key: str = "fit/samples", max_chars: int = 300) -> None:
        """
        Args:
            num_examples: validation prompts generated each epoch (0 turns the callback off).
            key: table name (W&B key; ``tables/<key>.md`` in the run directory).
            max_chars: instructions (passages) are cut to this many characters in the table.
        """
        if num_examples < 0:
            raise ValueError(f"generation_samples.num_examples must be >= 0, got {num_examples}")
        self.num_examples = num_examples
        self.key = key
        self.max_chars = max_chars
        self.examples: dict[str, Any] | None = None
        self.rows: list[list[Any]] = []

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        """Keep the first rows of the first validation batch (once; the same prompts every epoch)."""
        if self.examples is not None or self.num_examples == 0 or batch_idx or dataloader_idx:
            return
        if not trainer.is_global_zero:
            return
        n = min(self.num_examples, batch["input_ids"].shape[0])
        doc_ids = batch.get("doc_id") or [f"row{i}" for i in range(n)]
        tasks = batch.get("task") or ["question"] * n
        self.examples = {"input_ids": batch["input_ids"][:n].detach().cpu(),
                         "attention_mask": batch["attention_mask"][:n].detach().cpu(),
                         "labels": batch["labels"][:n].detach().cpu(),
                         "doc_id": list(doc_ids[:n]), "task": list(tasks[:n])}

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.examples is None or not trainer.is_global_zero:
            return
        if trainer.sanity_checking and self.rows:  # a resumed run: its "before training" rows are restored
            return
        examples, tokenizer = self.examples, pl_module.tokenizer
        device = pl_module.device
        prompts = pl_module.prompt_part(examples)
        texts = pl_module.generate_texts({key: value.to(device) for key, value in prompts.items()},
                                         examples["doc_id"], examples["task"])
        when = "before training" if trainer.sanity_checking else f"epoch {trainer.current_epoch}"
        for i, samples in enumerate(texts):
            ids = prompts["input_ids"][i][prompts["attention_mask"][i].bool()]
            labels = examples["labels"][i]
            self.rows.append([when, trainer.global_step, examples["doc_id"][i], examples["task"][i],
                              _shorten(tokenizer.decode(ids, skip_special_tokens=True), self.max_chars),
                              tokenizer.decode(labels[labels != LABEL_PAD_ID], skip_special_tokens=True), samples[0]])
        log_table(self.key, COLUMNS, self.rows, run_dir=trainer.default_root_dir, loggers=trainer.loggers)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [list(row) for row in self.rows]}  # strings and ints: loads with weights_only=True

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [list(row) for row in state_dict.get("rows", [])]
