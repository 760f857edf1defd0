"""Per-rank part files for ``trainer.predict``: streamed, atomic, resumable, merged once.

Why this shape: gathering predictions to rank 0 does not scale and ``write_interval="epoch"``
holds a whole corpus in memory. Instead every rank writes each batch's output to its own
part file the moment it exists; a crash loses at most the batch in flight, and a rerun asks
:meth:`RankPartWriter.done_keys` what to skip. After the loop, all ranks meet at a barrier
and rank 0 merges the parts into the final file (deduplicated by key, in the caller's order).

Part files live in ``<output>.parts/<fingerprint>/`` where the fingerprint names the inputs
and model that made them, so parts from a different configuration are never resumed from.
Names carry the rank, an attempt id (unique per run, so a resumed run never overwrites an
earlier part; its microsecond start time orders attempts, oldest first) and the batch index:
``rank00001-20250101T120000123456-1a2b3c-b0000042<suffix>``.
"""

from __future__ import annotations

import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from core.interrupt import signal_point
from core.io import atomic_path

# key -> (index of the part file, row inside it); the first part that holds a key wins.
Locations = dict[str, tuple[int, int]]


class RankPartWriter(BasePredictionWriter, ABC):
    """Write each predicted batch to a rank-local part file; merge all parts after predict.

    Subclasses say how one batch's prediction is stored (:meth:`write_part`), which keys a
    part holds (:meth:`read_part_keys`) and how the final file is assembled
    (:meth:`write_merged`). The base class owns naming, atomicity, resume and the merge.
    """

    part_suffix: ClassVar[str] = ".part"

    def __init__(self, output: str | Path, order: Sequence[str] | None = None, fingerprint: str = "default",
                 keep_parts: bool = False) -> None:
        """``order``: the keys of the final file in canonical order (None: sorted keys); kept as given, not
        copied, so a lazy sequence keeps millions of keys out of memory; ``keep_parts``: leave the part files
        after the merge (for audits and tests)."""
        super().__init__(write_interval="batch")
        if not fingerprint or "/" in fingerprint or fingerprint.startswith("."):
            raise ValueError(f"fingerprint must be a plain folder name, got '{fingerprint}'")
        self.output = Path(output)
        self.order = order
        self.fingerprint = fingerprint
        self.keep_parts = keep_parts
        started = time.time_ns() // 1000
        self.attempt = f"{time.strftime('%Y%m%dT%H%M%S', time.localtime(started // 10**6))}{started % 10**6:06d}-" \
                       f"{uuid.uuid4().hex[:6]}"

    # ----- what subclasses implement -------------------------------------------------------------
    @abstractmethod
    def write_part(self, path: Path, prediction: Any) -> None:
        """Store one batch's prediction at ``path`` (a temporary file renamed into place after)."""

    @abstractmethod
    def read_part_keys(self, path: Path) -> list[str]:
        """The keys stored in one part file, in row order."""

    @abstractmethod
    def write_merged(self, path: Path, order: Sequence[str], parts: list[Path], locations: Locations) -> None:
        """Write the final file at ``path`` (a temporary file): one record per key of ``order``,
        taken from ``parts[locations[key][0]]`` at row ``locations[key][1]``."""

    # ----- where parts live ----------------------------------------------------------------------
    @property
    def parts_root(self) -> Path:
        return self.output.with_name(self.output.name + ".parts")

    @property
    def parts_dir(self) -> Path:
        return self.parts_root / self.fingerprint

    def part_files(self) -> list[Path]:
        """Finished part files, oldest attempt first (temporary files start with '.' and are skipped)."""
        if not self.parts_dir.is_dir():
            return []
        return sorted(self.parts_dir.glob(f"rank*{self.part_suffix}"), key=lambda p: (p.name.split("-", 1)[1], p.name))

    def done_keys(self) -> set[str]:
        """Keys already written by earlier (possibly interrupted) runs with the same fingerprint."""
        done: set[str] = set()
        for part in self.part_files():
            done.update(self.read_part_keys(part))
        return done

    # ----- Lightning hooks -----------------------------------------------------------------------
    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        name = f"rank{trainer.global_rank:05d}-{self.attempt}-b{batch_idx:07d}{self.part_suffix}"
        signal_point("batch", self.output.name)  # the hook points let tests interrupt here (core.interrupt.HOOK_ENV)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.parts_dir / name) as tmp:
            self.write_part(tmp, prediction)
            signal_point("part-tmp", self.output.name)
        signal_point("part", self.output.name)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Barrier, merge on global rank 0, then share its outcome so every rank fails or returns together."""
        trainer.strategy.barrier("rank_part_writer_merge")
        error: BaseException | None = None
        message = None
        if trainer.is_global_zero:
            try:
                self.merge()
            except BaseException as err:  # re-raised below, after the other ranks learn of it
                error, message = err, f"{type(err).__name__}: {err}"
        message = trainer.strategy.broadcast(message, src=0)
        if error is not None:
            raise error
        if message is not None:
            raise RuntimeError(f"merging the part files on rank 0 failed: {message}")

    # ----- the merge -----------------------------------------------------------------------------
    def merge(self) -> None:
        """Merge all parts of this fingerprint into ``output`` atomically, then delete every part.

        Raises if a key of ``order`` is in no part (the parts stay, so a rerun can resume).
        """
        parts = self.part_files()
        locations: Locations = {}
        for part_no, part in enumerate(parts):
            for row, key in enumerate(self.read_part_keys(part)):
                locations.setdefault(key, (part_no, row))
        order = self.order if self.order is not None else sorted(locations)
        missing = [key for key in order if key not in locations]
        if missing:
            raise RuntimeError(f"{len(missing)} of {len(order)} keys are in no part file under {self.parts_dir} "
                               f"(first: {missing[:5]}); rerun the same command to compute them")
        with atomic_path(self.output) as tmp:
            self.write_merged(tmp, order, parts, locations)
        rank_zero_info(f"merged {len(parts)} part files into {self.output} ({len(order)} records)")
        if not self.keep_parts:
            shutil.rmtree(self.parts_root, ignore_errors=True)
