"""Embedding throughput: our embed stage against sentence-transformers' ``encode``, same model, texts and batch.

    python -m benchmarks.bench_embedding                       # CPU: MiniLM (the packaged copy), 1,000 SciFact texts
    python -m benchmarks.bench_embedding --levers              # also torch.compile and int8 dynamic quantisation
    python -m benchmarks.bench_embedding --bf16 yes            # bf16 sides even where the CPU only emulates bf16
    python -m benchmarks.bench_embedding --model FOLDER --random-init   # a weight-less folder (GPU machines)

* anchor: ``sentence_transformers.SentenceTransformer(model).encode(texts, batch_size=B)`` as a user of
  all-MiniLM-L6-v2 runs it (float32; it sorts by length, pads per batch, truncates at the model's
  ``max_seq_length``, normalises through the model's Normalize module) and, beside it, the same model
  cast to bfloat16 (``.bfloat16()``, the way the issue's author measured it);
* ours: :func:`pipeline.embed.embed_texts` as the pipeline's embed stage calls it (``Trainer.predict``,
  length-sorted batches, a part file per batch, the merge into one vector file) at the precision the
  pipeline's ``auto`` resolves to on this machine (:mod:`lightning_modules.precision`), and forced to
  ``bf16-mixed`` where bf16 is measured.

bf16 sides run where the device computes bf16 natively (``--bf16 auto``), always with ``yes``, never with
``no``; where they do not run, the JSON says why. Texts: SciFact (``../shared/data/scifact``, else the
committed demo slice, cycled), ``title + " " + text`` as BEIR joins them, the first ``--texts``.
Same truncation on both sides (checked). Sides alternate for ``--repeats`` timed calls after an untimed
warm-up; the median counts; each call's wall and process CPU seconds and the load average are kept.
Agreement: the lowest cosine of each side's vectors to float32 ``encode``'s.

``ratio`` = float32 ``encode`` seconds / ours (higher is better); ``ratio_vs_bf16_encode`` = bf16 ``encode``
seconds / ours in bf16. ``--levers`` adds the other ways to cut float32 time on a CPU without native bf16,
each with its vectors' lowest cosine to ``encode``: the encoder compiled (``torch.compile``, compile time
apart) and int8 dynamic quantisation of its Linear layers (``torch.ao.quantization.quantize_dynamic``).
Writes ``benchmarks/results/embedding-<cpu|gpu>.json``.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench_search import machine
from benchmarks.record import anchor, command_line, default_data, load_average, median_summary, timed_call
from core.io import iter_jsonl, write_json_atomic
from lightning_modules.encoder import EncoderModule
from lightning_modules.precision import cpu_bf16_support, cuda_bf16_support, resolve_precision
from pipeline.embed import embed_texts

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
COSINE_LIMIT = 0.999
"""A faster setting must keep every vector at this cosine to float32 ``encode``'s (issue 16) to become a default."""


def corpus_texts(data: Path, count: int) -> list[tuple[str, str]]:
    """``count`` ``(id, text)`` pairs: the corpus's documents in file order, cycled if it is shorter (ids unique)."""
    documents = [(obj["_id"], f"{obj.get('title') or ''} {obj['text']}".strip())
                 for _, obj in iter_jsonl(data / "corpus.jsonl")]
    if count <= len(documents):
        return documents[:count]
    return [(f"{documents[i % len(documents)][0]}-{i}", documents[i % len(documents)][1]) for i in range(count)]


def model_folder(name: str) -> str:
    """A local folder for ``name`` (the packaged MiniLM for its hub name), so both sides load the same files."""
    from lightning_modules.loading import resolve_model_source

    return resolve_model_source(name)


def random_init_copy(folder: str, out_dir: Path, seed: int = 0) -> str:
    """``folder``'s configs and tokenizer with freshly drawn weights (throughput does not depend on their values)."""
    import shutil

    from transformers import AutoConfig, AutoModel

    target = out_dir / "random-init"
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.h5", "*.onnx"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        AutoModel.from_config(AutoConfig.from_pretrained(target)).save_pretrained(target)
    return str(target)


def bf16_supported(device: torch.device) -> tuple[bool, str]:
    return cuda_bf16_support() if device.type == "cuda" else cpu_bf16_support()


def lowest_cosine(vectors: torch.Tensor, reference: torch.Tensor) -> float:
    return round(float(torch.nn.functional.cosine_similarity(vectors.float(), reference.float(), dim=-1).min()), 6)


class Ours:
    """The embed stage on one built :class:`EncoderModule` at one Lightning precision."""

    def __init__(self, module: EncoderModule, precision: str, device: torch.device, work: Path) -> None:
        self.module, self.precision, self.device, self.work = module, precision, device, work

    def __call__(self, items: list[tuple[str, str]], batch_size: int) -> torch.Tensor:
        output = Path(tempfile.mkdtemp(dir=self.work)) / "vectors.safetensors"  # fresh: no reuse of an earlier call
        _, vectors = embed_texts(items, self.module, output, batch_size=batch_size, progress=False,
                                 trainer_kwargs={"accelerator": self.device.type, "devices": 1,
                                                 "precision": self.precision})
        return vectors


class Encode:
    """``SentenceTransformer.encode`` as users call it (numpy out), optionally on the model cast to bfloat16."""

    def __init__(self, folder: str, device: torch.device, bf16: bool) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(folder, device=str(device))
        if bf16:
            self.model = self.model.bfloat16()

    def __call__(self, items: list[tuple[str, str]], batch_size: int) -> torch.Tensor:
        embeddings = self.model.encode([text for _, text in items], batch_size=batch_size, show_progress_bar=False)
        return torch.from_numpy(np.asarray(embeddings, dtype=np.float32))


def lever_modules(folder: str, device: torch.device, warm: list[tuple[str, str]], batch_size: int,
                  work: Path) -> dict[str, tuple[Ours, dict[str, Any]]]:
    """float32 alternatives for a CPU without native bf16: the encoder compiled, and int8 dynamic quantisation."""
    levers: dict[str, tuple[Ours, dict[str, Any]]] = {}
    compiled = EncoderModule(folder)
    compiled.encoder = torch.compile(compiled.encoder, dynamic=True)
    side = Ours(compiled, "32-true", device, work)
    start = time.perf_counter()
    side(warm, batch_size)  # compiles (dynamic shapes: one graph for every batch length)
    levers["ours_compiled"] = (side, {"what": "torch.compile(encoder, dynamic=True), float32",
                                      "compile_and_first_call_seconds": round(time.perf_counter() - start, 1)})
    if device.type == "cpu":
        quantised = EncoderModule(folder)
        quantised.encoder = torch.ao.quantization.quantize_dynamic(copy.deepcopy(quantised.encoder),
                                                                   {torch.nn.Linear}, dtype=torch.qint8)
        levers["ours_int8_dynamic"] = (Ours(quantised, "32-true", device, work),
                                       {"what": "torch.ao.quantization.quantize_dynamic(encoder, {Linear}, qint8): "
                                                "int8 weights, activations quantised per batch (VNNI on this CPU)"})
    return levers


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a sentence-transformers folder or name")
    parser.add_argument("--random-init", action="store_true",
                        help="the model's configs and tokenizer with random weights (a folder without weights works)")
    parser.add_argument("--data", type=Path, default=None, help="a BEIR folder (default: SciFact, else the demo slice)")
    parser.add_argument("--texts", type=int, default=None, help="texts embedded (default: CPU 1,000, GPU 20,000)")
    parser.add_argument("--batch-size", type=int, default=None, help="both sides (default: CPU 64, GPU 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each side, interleaved; median counts")
    parser.add_argument("--bf16", choices=("auto", "yes", "no"), default="auto",
                        help="measure the bf16 sides: where native (auto), always, never")
    parser.add_argument("--levers", action="store_true", help="also torch.compile and int8 dynamic quantisation")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the GPU when there is one)")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: benchmarks/results/embedding-<cpu|gpu>.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    count, batch_size = args.texts or (20_000 if gpu else 1_000), args.batch_size or (256 if gpu else 64)
    output = args.output or REPO / "benchmarks" / "results" / f"embedding-{'gpu' if gpu else 'cpu'}.json"
    data = args.data or default_data()
    items = corpus_texts(data, count)
    native, evidence = bf16_supported(device)
    run_bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and native)
    default_precision = resolve_precision("auto", device.type)

    with tempfile.TemporaryDirectory(prefix="bench-embedding-") as tmp:
        work = Path(tmp)
        folder = model_folder(args.model)
        if args.random_init:
            folder = random_init_copy(folder, work)
        module = EncoderModule(folder)
        sides: dict[str, Callable[[list[tuple[str, str]], int], torch.Tensor]] = {
            "encode": Encode(folder, device, bf16=False),
            "ours": Ours(module, default_precision.lightning, device, work)}
        truncation = sides["encode"].model.max_seq_length
        if truncation != module.max_length:
            raise RuntimeError(f"truncation differs: encode {truncation}, ours {module.max_length} tokens")
        if run_bf16:
            sides["encode_bf16"] = Encode(folder, device, bf16=True)
            if default_precision.dtype != "bfloat16":
                sides["ours_bf16"] = Ours(module, "bf16-mixed", device, work)
        warm = items[: 4 * batch_size]
        lever_notes: dict[str, dict[str, Any]] = {}
        if args.levers:
            for name, (side, note) in lever_modules(folder, device, warm, batch_size, work).items():
                sides[name], lever_notes[name] = side, note
        sync = (lambda: torch.cuda.synchronize(device)) if gpu else (lambda: None)
        for side in sides.values():  # untimed: CUDA context, kernels, allocator, first-call costs on every side
            side(warm, batch_size)
        calls: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
        vectors: dict[str, torch.Tensor] = {}
        for _ in range(args.repeats):  # interleaved, so a busy neighbour slows every side alike
            for name, side in sides.items():
                vectors[name], timing = timed_call(lambda side=side: side(items, batch_size), sync)
                calls[name].append(timing)
                print(f"{name:18s} {timing['seconds']:8.2f} s wall {timing['cpu_seconds']:8.2f} s CPU "
                      f"(load {timing['load_before']})", flush=True)

    runs = {name: {**median_summary(values), "texts_per_s": round(count / median_summary(values)["seconds"], 2),
                   "lowest_cosine_to_encode": lowest_cosine(vectors[name], vectors["encode"]),
                   **lever_notes.get(name, {})} for name, values in calls.items()}
    ours_bf16 = "ours_bf16" if "ours_bf16" in runs else "ours"
    result: dict[str, Any] = {
        "name": "embedding",
        "command": command_line("benchmarks.bench_embedding", argv),
        "machine": machine(device),
        "device": device.type,
        "anchor": anchor("sentence-transformers", f"SentenceTransformer({args.model!r}).encode(texts, batch_size="
                         f"{batch_size}) in float32 (numpy out)"
                         + ("; beside it the same model .bfloat16()" if run_bf16 else "")),
        "what": (f"{count} texts of {data.name} (title + text), {args.model}"
                 f"{' (random weights)' if args.random_init else ''}, truncation {truncation} tokens, batch "
                 f"{batch_size}; ours = pipeline.embed.embed_texts (Trainer.predict, sorted batches, part files, "
                 f"merge) at precision {default_precision.lightning} (the pipeline's 'auto' here: "
                 f"{default_precision.reason})"),
        "ratio": round(runs["encode"]["seconds"] / runs["ours"]["seconds"], 3),
        "ratio_cpu_seconds": round(runs["encode"]["cpu_seconds"] / runs["ours"]["cpu_seconds"], 3),
        "precision": default_precision.record(),
        "bf16": {"native": native, "evidence": evidence, "measured": run_bf16},
        "lowest_cosine_ours_vs_encode": runs["ours"]["lowest_cosine_to_encode"],
        "load_average_1m": {"start": min(c["load_before"] for c in calls["encode"]), "end": load_average()},
        "runs": runs,
    }
    if run_bf16:
        result["ratio_vs_bf16_encode"] = round(runs["encode_bf16"]["seconds"] / runs[ours_bf16]["seconds"], 3)
        if not native:
            result["bf16"]["note"] = ("measured on request (--bf16 yes): this device emulates bfloat16, so bf16 is "
                                      "slower")
    else:
        result["bf16"]["note"] = f"bf16 sides not run: {evidence}; --bf16 yes measures them anyway"
    if args.levers:
        result["levers"] = {name: {"speedup_vs_ours": round(runs["ours"]["seconds"] / runs[name]["seconds"], 3),
                                   "cpu_speedup_vs_ours": round(runs["ours"]["cpu_seconds"] / runs[name]["cpu_seconds"],
                                                                3),
                                   "lowest_cosine_to_encode": runs[name]["lowest_cosine_to_encode"],
                                   "keeps_vectors": runs[name]["lowest_cosine_to_encode"] >= COSINE_LIMIT}
                            for name in lever_notes}
    write_json_atomic(output, result)
    print(f"ours {runs['ours']['texts_per_s']} texts/s, encode {runs['encode']['texts_per_s']} texts/s: ratio "
          f"{result['ratio']} (CPU time {result['ratio_cpu_seconds']}); lowest cosine "
          f"{result['lowest_cosine_ours_vs_encode']}; written: {output}")
    return result


if __name__ == "__main__":
    main()
