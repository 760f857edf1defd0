"""Stream generated texts into per-rank JSONL part files; merge them into ``synthetic/stage{1,2}.jsonl``.

The base class (:class:`callbacks.part_writer.RankPartWriter`) owns part naming, atomic writes,
resume and the barrier-then-rank-0 merge; this subclass says how records look on disk. A part
holds one batch's records (``num_samples`` per prompt, all written at once, so a prompt is either
wholly in a part or not at all). Keys are encoded :class:`core.record_key.RecordKey`\ s; the merged file
has one line per key of the canonical order (corpus order, task order, sample index), the first
part holding a key winning, so prompts generated twice (resume, or padding an idle DDP rank) appear once.

The merge copies each kept line's bytes unchanged and streams: it learns every line's span in its
part, places each line at its final byte offset, then reads each part once and writes its lines
there. Memory holds the spans (a few integers per record), never the texts.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

from callbacks.part_writer import Locations, RankPartWriter
from retrieval.synthetic import SyntheticRecord, read_synthetic, write_synthetic


def line_spans(path: Path) -> tuple[array, array]:
    """``(starts, lengths)`` in bytes of the non-blank lines of ``path`` (rows as ``iter_jsonl`` counts them)."""
    starts, lengths = array("q"), array("q")
    position = 0
    with open(path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                if not raw.endswith(b"\n"):
                    raise ValueError(f"{path}: last line has no newline; was the part file cut short?")
                starts.append(position)
                lengths.append(len(raw))
            position += len(raw)
    return starts, lengths


class SyntheticTextWriter(RankPartWriter):
    """Writes ``GeneratorModule.predict_step`` records, adding ``stage``, in the synthetic JSONL format."""

    part_suffix = ".jsonl"

    def __init__(self, output: str | Path, stage: int, order: Sequence[str] | None = None,
                 fingerprint: str = "default", keep_parts: bool = False) -> None:
        """``stage``: 1 or 2, written into every record; ``order``: record keys of the final file."""
        super().__init__(output, order=order, fingerprint=fingerprint, keep_parts=keep_parts)
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.stage = stage

    def write_part(self, path: Path, prediction: list[dict[str, Any]]) -> None:
        write_synthetic(path, (SyntheticRecord(r["doc_id"], r["task"], r["text"], r["sample_idx"], self.stage,
                                               r["model"]) for r in prediction))

    def read_part_keys(self, path: Path) -> list[str]:
        return [r.key.encode() for r in read_synthetic(path)]

    def write_merged(self, path: Path, order: Sequence[str], parts: list[Path], locations: Locations) -> None:
        spans = [line_spans(part) for part in parts]
        placements: list[tuple[array, array]] = [(array("q"), array("q")) for _ in parts]  # (row, offset)
        size = 0
        for key in order:
            part_no, row = locations[key]
            placements[part_no][0].append(row)
            placements[part_no][1].append(size)
            size += spans[part_no][1][row]
        with open(path, "r+b") as merged:
            merged.truncate(size)
            for part, (starts, lengths), (rows, offsets) in zip(parts, spans, placements):
                if not rows:
                    continue
                data = part.read_bytes()
                for row, offset in zip(rows, offsets):
                    merged.seek(offset)
                    merged.write(data[starts[row]:starts[row] + lengths[row]])


class GenerationProgressBar(TQDMProgressBar):
    """Lightning's progress bar plus documents/s (prompts/s divided by tasks per document).

    Under DDP only rank 0 draws the bar; its rate is multiplied by the world size, an estimate of
    the whole job's rate (ranks get near-equal shares of the length-sorted prompts).
    """

    def __init__(self, tasks_per_document: int, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        if tasks_per_document < 1:
            raise ValueError(f"tasks_per_document must be >= 1, got {tasks_per_document}")
        self.tasks_per_document = tasks_per_document
        self._started = 0.0
        self._prompts = 0

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self._started, self._prompts = time.monotonic(), 0

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._prompts += len(batch["doc_id"]) * trainer.world_size
        elapsed = max(time.monotonic() - self._started, 1e-9)
        if self._predict_progress_bar is not None:
            self.predict_progress_bar.set_postfix({"docs/s": f"{self._prompts / self.tasks_per_document / elapsed:.2f}"},
                                                  refresh=False)
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
