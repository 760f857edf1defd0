"""Embedding throughput: our embed stage against a plain PyTorch loop, same encoder, texts, batch and dtype.

    python -m benchmarks.bench_embedding                                  # CPU: MiniLM (the packaged copy)
    python -m benchmarks.bench_embedding --model FOLDER --texts 20000     # any encoder; on a GPU in bf16

* ours: :func:`pipeline.embed.embed_texts` (``Trainer.predict``, length-sorted batches, a part file per
  batch, the merge into one vector file), precision ``bf16-true`` on a GPU, ``32-true`` on a CPU;
* anchor: the loop one writes by hand: texts in corpus order, ``tokenizer(batch, padding, truncation)``,
  the encoder, mean pooling, L2 normalisation, the vectors kept in memory; same encoder module
  (:func:`lightning_modules.encoder.load_text_encoder`), same dtype, same truncation.

Texts: the committed SciFact demo slice's documents (``title + " " + text``, read with ``iter_jsonl``,
no ``datasets`` needed) cycled to ``--texts``. Measured after an untimed warm-up: wall time (median of
``--repeats``), texts/s and non-padding tokens/s; the agreement of the two sides' vectors (lowest
cosine). ``ratio`` = our texts/s / the anchor's. Writes ``benchmarks/results/embedding-<cpu|gpu>.json``.
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

from benchmarks.bench_search import ENV_RECORDED, machine
from core.io import iter_jsonl, write_json_atomic
from lightning_modules.encoder import EncoderModule, mean_pool
from lightning_modules.loading import load_tokenizer
from pipeline.embed import embed_texts

REPO = Path(__file__).resolve().parents[1]
DEMO_CORPUS = REPO / "data" / "scifact-demo" / "corpus.jsonl"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def demo_texts(count: int) -> list[tuple[str, str]]:
    """``count`` ``(id, text)`` pairs: the demo slice's documents, cycled (ids made unique)."""
    documents = [(obj["_id"], f"{obj.get('title') or ''} {obj['text']}".strip()) for _, obj in iter_jsonl(DEMO_CORPUS)]
    return [(f"{documents[i % len(documents)][0]}-{i}", documents[i % len(documents)][1]) for i in range(count)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ours(items: list[tuple[str, str]], module: EncoderModule, batch_size: int, device: torch.device,
             work: Path) -> tuple[float, torch.Tensor]:
    precision = "bf16-true" if device.type == "cuda" else "32-true"
    output = Path(tempfile.mkdtemp(dir=work)) / "vectors.safetensors"  # a fresh file: no reuse of an earlier run
    _sync(device)
    start = time.perf_counter()
    _, vectors = embed_texts(items, module, output, batch_size=batch_size, progress=False,
                             trainer_kwargs={"accelerator": device.type, "devices": 1, "precision": precision})
    _sync(device)
    return time.perf_counter() - start, vectors


def run_anchor(items: list[tuple[str, str]], module: EncoderModule, tokenizer: Any, batch_size: int,
               device: torch.device) -> tuple[float, torch.Tensor]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    encoder = module.encoder.to(device=device, dtype=dtype)
    texts = [text for _, text in items]
    _sync(device)
    start = time.perf_counter()
    out = []
    with torch.inference_mode():
        for begin in range(0, len(texts), batch_size):
            batch = tokenizer(texts[begin:begin + batch_size], padding=True, truncation=True,
                              max_length=module.max_length, return_tensors="pt", return_token_type_ids=False).to(device)
            hidden = encoder(**batch).last_hidden_state
            out.append(torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1).cpu())
    _sync(device)
    encoder.to(dtype=torch.float32)  # ours converts by its own precision setting
    return time.perf_counter() - start, torch.cat(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="encoder, sentence-transformers or seq2seq folder/name")
    parser.add_argument("--texts", type=int, default=None, help="texts embedded (default: CPU 2,000, GPU 20,000)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: CPU 64, GPU 256")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each side, interleaved; median counts")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the GPU when there is one)")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: benchmarks/results/embedding-<cpu|gpu>.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    count, batch_size = args.texts or (20_000 if gpu else 2_000), args.batch_size or (256 if gpu else 64)
    output = args.output or REPO / "benchmarks" / "results" / f"embedding-{'gpu' if gpu else 'cpu'}.json"
    items = demo_texts(count)
    module = EncoderModule(args.model)
    tokenizer = load_tokenizer(module.source.model_path)
    tokens = sum(len(ids) for ids in tokenizer([text for _, text in items], truncation=True,
                                               max_length=module.max_length)["input_ids"])
    with tempfile.TemporaryDirectory(prefix="bench-embedding-") as tmp:
        work = Path(tmp)
        warm = items[: 4 * batch_size]
        run_ours(warm, module, batch_size, device, work)  # CUDA context, kernels, allocator; both sides
        run_anchor(warm, module, tokenizer, batch_size, device)
        times: dict[str, list[float]] = {"ours": [], "anchor": []}
        for _ in range(args.repeats):  # interleaved, so a busy neighbour slows both alike
            seconds, ours = run_ours(items, module, batch_size, device, work)
            times["ours"].append(seconds)
            seconds, anchor = run_anchor(items, module, tokenizer, batch_size, device)
            times["anchor"].append(seconds)
            print(f"ours {times['ours'][-1]:.2f} s, anchor {times['anchor'][-1]:.2f} s", flush=True)
    cosine = torch.nn.functional.cosine_similarity(ours.float(), anchor.float(), dim=-1)
    median = {side: statistics.median(values) for side, values in times.items()}
    result = {
        "name": "embedding",
        "command": " ".join([*(f"{name}={os.environ[name]}" for name in ENV_RECORDED if name in os.environ),
                             "python -m benchmarks.bench_embedding",
                             shlex.join(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(device),
        "device": device.type,
        "dtype": "bfloat16" if gpu else "float32",
        "what": (f"{count} texts (SciFact demo documents, cycled), encoder of {args.model}, mean pooling, batch "
                 f"{batch_size}, max {module.max_length} tokens; ours = pipeline.embed.embed_texts, anchor = plain "
                 "loop in corpus order"),
        "tokens": tokens,
        "ours": {"seconds": round(median["ours"], 3), "texts_per_s": round(count / median["ours"], 1),
                 "tokens_per_s": round(tokens / median["ours"], 1)},
        "anchor": {"seconds": round(median["anchor"], 3), "texts_per_s": round(count / median["anchor"], 1),
                   "tokens_per_s": round(tokens / median["anchor"], 1)},
        "ratio": round(median["anchor"] / median["ours"], 3),
        "lowest_cosine_ours_vs_anchor": round(float(cosine.min()), 5),
        "runs": {side: [round(t, 3) for t in values] for side, values in times.items()},
    }
    write_json_atomic(output, result)
    print(f"ours {result['ours']['texts_per_s']} texts/s, anchor {result['anchor']['texts_per_s']} texts/s, ratio "
          f"{result['ratio']}; lowest cosine {result['lowest_cosine_ours_vs_anchor']}; written: {output}")
    return result


if __name__ == "__main__":
    main()
