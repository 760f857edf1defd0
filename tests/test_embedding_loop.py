"""The embedding loop: vector files, length-sorted batches with ids, resume, reuse, and 2-process DDP."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from callbacks.vector_writer import VectorWriter
from core.io import InputError
from datamodules.embedding import TextsDataModule, plan_order
from helpers import CrashAfter, make_tiny_bert, one_thread  # noqa: F401 (a fixture)
from lightning_modules.encoder import EncoderModule
from pipeline.embed import embed_texts
from retrieval.vectors import load_vectors, read_vector_ids, save_vectors

WORDS = "cell protein gene tumour dose patient cohort risk mouse assay receptor signal".split()


def make_items(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(f"doc-{i}", " ".join(rng.choices(WORDS, k=rng.randint(1, 60)))) for i in range(n)]


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tiny_bert(tmp_path_factory.mktemp("models") / "bert"))


class RecordIds(Callback):
    """Records the ids each rank embeds; with ``folder``, writes them to ``rank<r>.json`` (for spawned ranks)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder, self.ids = folder, []

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: dict,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self.ids.extend(batch["ids"])

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.folder is not None:
            (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.ids))


# ----- vector files --------------------------------------------------------------------------------

def test_vector_file_round_trip_float32_float16_and_mmap(tmp_path: Path) -> None:
    ids = ["a", "β-ünïcode", "c#0"]
    vectors = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    save_vectors(tmp_path / "v32", ids, torch.from_numpy(vectors), metadata={"fingerprint": "x"})
    loaded_ids, loaded = load_vectors(tmp_path / "v32")
    assert loaded_ids == ids and loaded.dtype == np.float32 and np.array_equal(loaded, vectors)
    save_vectors(tmp_path / "v16", ids, vectors, dtype="float16")
    mapped_ids, mapped = load_vectors(tmp_path / "v16", mmap=True)
    assert isinstance(mapped, np.memmap) and mapped.dtype == np.float16 and mapped_ids == ids
    assert np.allclose(mapped, vectors, atol=1e-2)
    from safetensors.numpy import load_file  # any safetensors reader opens the file

    assert np.array_equal(load_file(tmp_path / "v32")["vectors"], vectors)


def test_truncated_or_corrupt_vector_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "v"
    save_vectors(path, ["a", "b"], np.ones((2, 4), dtype=np.float32))
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    with pytest.raises(InputError, match=r"v: .*truncated"):
        load_vectors(path)
    path.write_bytes(struct.pack("<Q", 20) + b"{not json at all....")
    with pytest.raises(InputError, match="not valid JSON"):
        load_vectors(path)
    path.write_bytes(b"abc")
    with pytest.raises(InputError, match="too short"):
        load_vectors(path)


def test_vector_file_refuses_duplicate_ids_and_nan(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        save_vectors(tmp_path / "v", ["a", "a"], np.ones((2, 3)))
    bad = np.ones((2, 3), dtype=np.float32)
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="id 'b' holds NaN"):
        save_vectors(tmp_path / "v", ["a", "b"], bad)
    assert not (tmp_path / "v").exists() and not list(tmp_path.iterdir())  # no temporary left behind


# ----- batches -------------------------------------------------------------------------------------

def test_batches_are_length_sorted_carry_ids_and_skip_done(tiny_encoder: str) -> None:
    items = make_items(30)
    skip = {"doc-3", "doc-7"}
    datamodule = TextsDataModule(items, tiny_encoder, batch_size=8, max_length=16, skip_ids=skip)
    datamodule.setup("predict")
    batches = list(datamodule.predict_dataloader())
    seen = [key for batch in batches for key in batch["ids"]]
    assert sorted(seen) == sorted(key for key, _ in items if key not in skip)
    texts = dict(items)
    lengths = [len(texts[key]) for key in seen]
    assert lengths == sorted(lengths, reverse=True)
    assert all(batch["input_ids"].shape[1] <= 16 and len(batch["ids"]) == batch["input_ids"].shape[0]
               for batch in batches)


def test_plan_order_gives_every_rank_work_even_when_almost_done() -> None:
    items = [("a", "x"), ("b", "xx"), ("c", "xxx")]
    assert plan_order(items, {"a", "b"}, world_size=2) == [2, 0]  # one left, one done item added back
    assert sorted(plan_order(items, set(), world_size=5)) == [0, 0, 1, 1, 2]
    with pytest.raises(InputError, match="id 'a'.* has a NoneType text"):
        TextsDataModule([("a", None)], "unused")  # type: ignore[list-item]


# ----- the loop ------------------------------------------------------------------------------------

def test_resume_after_interruption_equals_uninterrupted_run(tmp_path: Path, tiny_encoder: str) -> None:
    items = make_items(40)
    module = EncoderModule(tiny_encoder)
    ids, reference = embed_texts(items, module, tmp_path / "full", batch_size=4, progress=False)
    assert ids == [key for key, _ in items]

    first = RecordIds()
    with pytest.raises(RuntimeError, match="simulated interruption"):
        embed_texts(items, module, tmp_path / "resumed", batch_size=4, progress=False,
                    trainer_kwargs={"callbacks": [first, CrashAfter(3)]})
    assert not (tmp_path / "resumed").exists() and len(first.ids) == 12
    second = RecordIds()
    resumed_ids, resumed = embed_texts(items, module, tmp_path / "resumed", batch_size=4, progress=False,
                                       trainer_kwargs={"callbacks": [second]})
    assert sorted(first.ids + second.ids) == sorted(ids)  # nothing embedded twice, nothing missed
    assert resumed_ids == ids and read_vector_ids(tmp_path / "resumed") == ids
    assert torch.allclose(resumed, reference, atol=1e-5)
    assert not (tmp_path / "resumed.parts").exists()

    # a complete output for the same inputs is loaded, not recomputed; a changed text is recomputed
    again = embed_texts(items, module, tmp_path / "resumed", progress=False,
                        trainer_kwargs={"callbacks": [CrashAfter(1)]})[1]
    assert torch.equal(again, resumed)
    changed = [(key, text + " kinase") if key == "doc-5" else (key, text) for key, text in items]
    recomputed = embed_texts(changed, module, tmp_path / "resumed", progress=False)[1]
    assert not torch.allclose(recomputed[5], resumed[5]) and torch.allclose(recomputed[6], resumed[6], atol=1e-5)


def test_merge_fails_loudly_and_keeps_parts_when_a_key_is_missing(tmp_path: Path) -> None:
    writer = VectorWriter(tmp_path / "out", order=["a", "b", "c"], fingerprint="fp", keep_parts=False)
    writer.parts_dir.mkdir(parents=True)
    save_vectors(writer.parts_dir / "rank00000-x-b0000000.safetensors", ["a", "c"], np.ones((2, 3)))
    save_vectors(writer.parts_dir / "rank00001-x-b0000000.safetensors", ["c"], np.zeros((1, 3)))
    assert writer.done_keys() == {"a", "c"}
    with pytest.raises(RuntimeError, match=r"1 of 3 keys .*\(first: \['b'\]\)"):
        writer.merge()
    assert not (tmp_path / "out").exists() and len(writer.part_files()) == 2
    save_vectors(writer.parts_dir / "rank00001-y-b0000001.safetensors", ["b"], np.full((1, 3), 2.0))
    writer.merge()
    ids, vectors = load_vectors(tmp_path / "out")
    assert ids == ["a", "b", "c"] and vectors[:, 0].tolist() == [1.0, 2.0, 1.0]  # duplicate 'c': first part wins
    assert not writer.parts_root.exists()


@pytest.mark.ddp
@pytest.mark.usefixtures("one_thread")  # a forked child must not inherit a busy OpenMP pool: it can hang
def test_two_process_ddp_embeds_every_id_exactly_once(tmp_path: Path, tiny_encoder: str) -> None:
    """Real DDP (gloo, Lightning's predict sampler, the writer's barrier and merge) in two processes.

    Launched by fork: ``ddp_spawn`` runs the same strategy but re-imports torch, transformers
    and Lightning in each child, which takes over a minute on a busy 2-core machine.
    """
    items = make_items(37, seed=1)
    module = EncoderModule(tiny_encoder)
    _, single = embed_texts(items, module, tmp_path / "single", batch_size=4, progress=False)
    record = tmp_path / "ranks"
    record.mkdir()
    ids, ddp = embed_texts(items, module, tmp_path / "ddp", batch_size=4, progress=False,
                           trainer_kwargs={"accelerator": "cpu", "devices": 2, "strategy": "ddp_fork",
                                           "callbacks": [RecordIds(record)]})
    per_rank = [json.loads((record / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert all(per_rank) and sorted(per_rank[0] + per_rank[1]) == sorted(key for key, _ in items)
    assert ids == [key for key, _ in items]
    assert torch.allclose(ddp, single, atol=1e-5)
