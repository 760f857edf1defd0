"""Where each stage writes inside a run directory (relative paths): the contract between stages."""

from __future__ import annotations

import re

from datamodules.downsample import KEPT_DOCS_FILE, KEPT_QUERIES_FILE
from retrieval.results import RESULTS_JSON, RESULTS_MD  # noqa: F401  (re-exported: the table files)

PIPELINE_CONFIG = "pipeline-config.json"
KEPT_DOCS = str(KEPT_DOCS_FILE)
KEPT_QUERIES = str(KEPT_QUERIES_FILE)
STAGE1 = "synthetic/stage1.jsonl"
STAGE1_KEPT = "synthetic/stage1.kept.jsonl"
STAGE2 = "synthetic/stage2.jsonl"
STAGE2_KEPT = "synthetic/stage2.kept.jsonl"
EXTRACTIVE = "synthetic/extractive.jsonl"  # coverage fallback: each document's own title question and keyphrases
STAGE2_FILTER_REPORT = "synthetic/stage2.filter_report.json"
SELFINSTRUCT_DIR = "selfinstruct"
TRAIN = "selfinstruct/train.jsonl"  # written by the tune stage's DataModule, for inspection
VAL = "selfinstruct/val.jsonl"
FILTER_REPORT = "filter_report.json"
FIT_DIR = "fit"
TUNED_MODEL = "fit/model"
VECTORS_DIR = "vectors"
DOCUMENTS = "vectors/documents.safetensors"
SENTENCES = "vectors/sentences.safetensors"
QUERIES = "vectors/queries.safetensors"
INDEX_DIR = "index"  # the product: retrieval.index_files describes its files
INDEX_MANIFEST = "index/manifest.json"  # written last: its presence means the index is complete
SENTENCE_UNITS = "vectors/sentence_units.json"  # the splitter chosen for the corpus and units per document
SWEEP_JSON = "sweep.json"
SWEEP_PLOT = "plots/weight_sweep.png"
RUNS_DIR = "runs"  # one TREC run per results row: run_file(system)
TIMINGS = "timings.json"


def synthetic_vectors(stage: str) -> str:
    """Embeddings of the synthetic texts of ``stage1``/``stage2`` (ids: encoded ``core.record_key.RecordKey``)."""
    return f"vectors/synthetic-{stage}.safetensors"


def expansion_vectors(stage: str) -> str:
    """Embeddings of documents with their synthetic questions appended (docTTTTTquery-style)."""
    return f"vectors/expansion-{stage}.safetensors"


def run_file(system: str) -> str:
    """A results row's TREC run (``pipeline.run_export``); the system name must be safe as a file name."""
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", system):
        raise ValueError(f"system name {system!r} cannot name a run file: letters, digits, '.', '_', '-' only")
    return f"{RUNS_DIR}/{system}.trec"


BASE_VECTORS_DIR = "vectors/base"


def base_vectors(path: str) -> str:
    """The base model's copy of a vector file (``vectors/x`` -> ``vectors/base/x``): written only when tuning
    changed the encoder, for the before-tuning rows (``*-base`` and every stage-1 row)."""
    return path.replace(f"{VECTORS_DIR}/", f"{BASE_VECTORS_DIR}/", 1)


def vector_outputs(sentences: bool) -> list[str]:
    outputs = [DOCUMENTS, QUERIES, synthetic_vectors("stage1"), synthetic_vectors("stage2"),
               expansion_vectors("stage1"), expansion_vectors("stage2")]
    return outputs + ([SENTENCES] if sentences else [])


