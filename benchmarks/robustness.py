"""Robustness study (issue 15): the default rows on three differently shaped SciFact corpora.

    nice -n 19 python -m benchmarks.robustness --work runs/robustness --output benchmarks/results/robustness

Corpora (each a 700-document slice of the SciFact covered subset, ``covered-doc-ids.txt``, the documents with
teacher outputs; a slice because the 1,183 covered documents' sentences and windows do not embed within the study's
CPU budget on a shared 2-core machine: all 283 documents judged by the test split, those judged by 150 seeded train
queries, and seeded others; its 300 test queries and the train queries whose judged documents are all in it):

* ``original``: as it is; stage-1 outputs are the Qwen2.5-Coder-0.5B-Instruct questions and keywords.
* ``lower``: corpus, queries and outputs lower-cased, full stops spaced off their words (the shape of issue 15's
  collection A, where the sentence splitter returned one unit per document).
* ``partial``: the original corpus with the Qwen outputs of a seeded random 10 % of the documents only (the
  shape of a filter that keeps outputs for some documents).
* ``partial-stage2``: the original corpus with *stage-2* outputs for a seeded random 10 % of the documents only:
  the kept (filtered) outputs of the tuned model of a finished covered-subset pipeline run (``--stage2-from``,
  ``configs/profiles/scifact-covered.yaml``), drawn among the slice's documents that have kept outputs there.
  Its rows are the pipeline's ``rb-*-stage2`` rows: issue 15's failing case.

Nothing is generated or tuned here: stage 1 is the teacher's file (unfiltered), stage 2 comes from that run; the
encoder is the offline
all-MiniLM-L6-v2 (what the offline profiles embed with, their encoder being frozen). Per corpus it writes the
pipeline's table rows (``bm25``, ``dense``, ``dense-sentence``, ``dense-multi``, ``rb-manual-*-stage1`` at the
offline profile's settings) with per-query randomisation tests against the corpus-only rows; the coverage
rows (no fallback, extractive fallback, count prior) with the covered documents' top-10 share; and the
label-free selection (pseudo-queries) against the selection on labelled train queries, each chosen setting's
test nDCG@10 and their paired test. Vectors are cached in ``--work``; a rerun reuses them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.io import write_json_atomic, write_jsonl_atomic, write_text_atomic
from datamodules.downsample import DataConfig, DownsampleConfig, seeded_choice
from pipeline import layout
from pipeline.config import EmbedConfig, EvaluateConfig, FitConfig, GenerationConfig, LoggerConfig, Stage1Config
from pipeline.context import PipelineContext
from pipeline.coverage import coverage_of, top10_diagnostic, with_fallback
from lightning_modules.encoder import EncoderModule
from pipeline.embed import embed_texts
from pipeline.evaluation import Evaluator, _scored_row, table_rows
from pipeline.selection import candidate_settings, select_label_free, units_for
from pipeline.stages import sentence_items
from retrieval.extractive import ExtractiveConfig, extractive_records
from retrieval.filter import FilterConfig
from retrieval.rao_blackwell import RaoBlackwellConfig
from retrieval.sentences import UnitConfig
from retrieval.results import ResultRow
from retrieval.significance import compare_to_baselines, paired_compare
from retrieval.synthetic import read_synthetic, write_synthetic
from retrieval.vectors import load_vectors, read_vector_metadata, save_vectors

log = logging.getLogger("robustness")

DATA = Path("../shared/data/scifact")
COVERED = DATA / "synthetic" / "covered-doc-ids.txt"
TEACHER = DATA / "synthetic" / "qwen2.5-coder-0.5b-instruct.jsonl"
ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
SLICE_DOCS = 700
SLICE_TRAIN_QUERIES = 150
PARTIAL_SHARE = 0.10
STAGE2_FROM = Path("runs/scifact-covered")  # the covered-subset pipeline run whose stage-2 outputs partial-stage2 uses
DEFAULTS = RaoBlackwellConfig(method="manual", doc_weight=0.6)  # configs/profiles/offline.yaml
MULTI_MIX = 0.6


def spaced_lower_case(text: str) -> str:
    """Lower case, full stops spaced off their words: 'It rose. We saw' -> 'it rose . we saw'."""
    return re.sub(r"\.(\s|$)", r" .\1", text.lower())


def _judged(split: str) -> dict[str, set[str]]:
    judged: dict[str, set[str]] = {}
    for line in (DATA / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]:
        query, doc, _ = line.split("\t")
        judged.setdefault(query, set()).add(doc)
    return judged


def slice_ids(path: Path) -> Path:
    """The study's documents (see the module docstring), one id a line, written once."""
    if path.is_file():
        return path
    covered = COVERED.read_text().split()
    keep = set(covered)
    docs = set().union(*_judged("test").values()) & keep
    train = {q: d for q, d in _judged("train").items() if d <= keep}
    for query in sorted(seeded_choice(sorted(train), SLICE_TRAIN_QUERIES, seed=0, stream="train-queries")):
        docs |= train[query]
    others = [doc for doc in covered if doc not in docs]
    docs |= seeded_choice(others, SLICE_DOCS - len(docs), seed=0, stream="documents")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{doc}\n" for doc in covered if doc in docs))
    return path


def lower_folder(target: Path) -> Path:
    """SciFact, every document and query lower-cased with spaced full stops, as a BEIR folder (the whole corpus,
    so that the slice's queries and judgements are the original's)."""
    if (target / "corpus.jsonl").is_file():
        return target
    docs = [json.loads(line) for line in (DATA / "corpus.jsonl").read_text().splitlines() if line.strip()]
    write_jsonl_atomic(target / "corpus.jsonl", ({**d, "title": spaced_lower_case(d.get("title", "")),
                                                  "text": spaced_lower_case(d["text"])} for d in docs))
    queries = [json.loads(line) for line in (DATA / "queries.jsonl").read_text().splitlines() if line.strip()]
    write_jsonl_atomic(target / "queries.jsonl", ({**q, "text": spaced_lower_case(q["text"])} for q in queries))
    shutil.copytree(DATA / "qrels", target / "qrels", dirs_exist_ok=True)
    return target


def stage_of(variant: str) -> str:
    """Whose outputs a variant's Rao-Blackwell rows use."""
    return "stage2" if variant == "partial-stage2" else "stage1"


def context(run_dir: Path, data_path: Path, split: str, fallback: list[str], ids: Path,
            units: UnitConfig = UnitConfig(), stage: str = "stage1") -> PipelineContext:
    """A pipeline context for the evaluator: only data, embed, evaluate and rao_blackwell are read."""
    return PipelineContext(
        run_dir=run_dir, data=DataConfig(path=data_path, split=split, downsample=DownsampleConfig(restrict_to=ids)),
        model=None, prompts=None, stage1=Stage1Config(source="file", file=TEACHER), generation=GenerationConfig(),
        filter=FilterConfig(), fit=FitConfig(skip=True), embed=EmbedConfig(encoder=ENCODER, units=units),
        rao_blackwell=DEFAULTS, trainer={"accelerator": "cpu", "devices": 1},
        evaluate=EvaluateConfig(methods=["manual"], multi_sentence_weight=MULTI_MIX, stages=[stage],
                                baselines=["bm25", "dense", "dense-sentence", "dense-multi"], sweep_doc_weights=[],
                                coverage_fallback=fallback),
        logger=LoggerConfig(wandb=False))


def partial_share(pool: list[str], corpus_size: int, stream: str) -> set[str]:
    """A seeded ``PARTIAL_SHARE`` of a corpus of ``corpus_size`` documents, drawn from ``pool``."""
    return seeded_choice(pool, round(PARTIAL_SHARE * corpus_size), seed=0, stream=stream)


def stage2_records(stage2_from: Path, doc_ids: list[str]) -> list[Any]:
    """The kept stage-2 outputs of ``stage2_from`` for a seeded 10 % of ``doc_ids``, drawn among those it kept any for."""
    source = stage2_from / layout.STAGE2_KEPT
    if not source.is_file():
        raise SystemExit(f"error: {source} not found: the partial-stage2 variant needs a finished covered-subset "
                         f"pipeline run (python train.py pipeline -c configs/profiles/scifact-covered.yaml "
                         f"--run_dir {stage2_from}); --stage2-from names it")
    wanted = set(doc_ids)
    records = [r for r in read_synthetic(source) if r.doc_id in wanted]
    with_outputs = sorted({r.doc_id for r in records})
    count = round(PARTIAL_SHARE * len(doc_ids))
    if len(with_outputs) < count:
        raise SystemExit(f"error: {source} has kept outputs for {len(with_outputs)} of the slice's documents; "
                         f"the variant needs {count}")
    chosen = partial_share(with_outputs, len(doc_ids), "partial-stage2")
    return [r for r in records if r.doc_id in chosen]


def prepare(variant: str, work: Path, units: UnitConfig = UnitConfig(),
            stage2_from: Path = STAGE2_FROM) -> tuple[PipelineContext, PipelineContext]:
    """Write the variant's synthetic files and vectors into ``work/variant`` (cached); return test and train contexts."""
    data_path = lower_folder(work / "lower-beir") if variant == "lower" else DATA
    run_dir = work / (variant + run_suffix(units))
    ids = slice_ids(work / "slice-doc-ids.txt")
    stage = stage_of(variant)
    test, train = (context(run_dir, data_path, split, [], ids, units, stage) for split in ("test", "train"))
    dataset = test.dataset
    if stage == "stage2":
        records = stage2_records(stage2_from, list(dataset.doc_ids))
    else:
        records = read_synthetic(TEACHER, dataset.corpus, on_unknown_doc="warn")
    if variant == "lower":
        records = [dataclasses.replace(r, text=spaced_lower_case(r.text)) for r in records]
    if variant == "partial":
        chosen = partial_share(list(dataset.doc_ids), len(dataset.doc_ids), "partial")
        records = [r for r in records if r.doc_id in chosen]
    write_synthetic(run_dir / (layout.STAGE2_KEPT if stage == "stage2" else layout.STAGE1_KEPT), records)
    extractive = extractive_records(dataset, ExtractiveConfig(), progress=False)
    write_synthetic(run_dir / layout.EXTRACTIVE, extractive)
    queries = {**train.dataset.queries, **dataset.queries}
    # The original's vectors serve where the encoder sees the same token ids: the partial variant's corpus is the
    # original's, and MiniLM's tokenizer is uncased and splits off punctuation, so lower case and spaced full stops
    # give the same word pieces (checked text by text; a text that differs is embedded anew).
    shared = [layout.DOCUMENTS, layout.QUERIES, layout.SENTENCES, layout.synthetic_vectors("extractive")]
    reuse = {"partial": shared, "partial-stage2": shared,
             "lower": [layout.DOCUMENTS, layout.QUERIES, layout.synthetic_vectors("stage1"),
                       layout.synthetic_vectors("extractive")]}.get(variant, [])
    jobs = [(layout.DOCUMENTS, test.documents()), (layout.QUERIES, list(queries.items())),
            (layout.SENTENCES, sentence_items(test)),
            (layout.synthetic_vectors(stage), [(r.key.encode(), r.text) for r in records]),
            (layout.synthetic_vectors("extractive"), [(r.key.encode(), r.text) for r in extractive])]
    jobs.sort(key=lambda job: job[0] in reuse)  # reused last: another process may still be writing the original's
    for path, items in jobs:
        if path in reuse and reuse_vectors(work / "original" / path, run_dir / path, items):
            continue
        log.info("%s: embedding %d texts into %s", variant, len(items), path)
        embed_texts(items, ENCODER, run_dir / path, batch_size=64, progress=True, return_vectors=False,
                    trainer_kwargs={"accelerator": "cpu", "devices": 1})
        write_json_atomic(run_dir / f"{path}.texts.json", items)  # what another variant compares its texts with
    return test, train


def reuse_vectors(source: Path, target: Path, items: list[tuple[str, str]]) -> bool:
    """Copy ``source``'s rows to ``target`` when its ids are ``items``' and every text has the same token ids as
    the text ``source`` was embedded from; True when ``target`` holds such a copy (now or from an earlier run)."""
    if target.is_file():
        return read_vector_metadata(target).get("reused_from") == str(source)
    texts_file = source.parent / f"{source.name}.texts.json"
    if not source.is_file() or not texts_file.is_file():
        return False
    ids, vectors = load_vectors(source)
    source_texts = dict(json.loads(texts_file.read_text()))
    if ids != [key for key, _ in items]:
        return False
    tokenizer = EncoderModule(ENCODER).tokenizer
    if any(tokenizer(text)["input_ids"] != tokenizer(source_texts[key])["input_ids"] for key, text in items):
        return False
    save_vectors(target, ids, np.asarray(vectors), metadata={"reused_from": str(source)})
    log.info("%s: the same token ids as %s, its vectors reused", target, source)
    return True


def rb_row(evaluator: Evaluator, system: str, setting_units: Any, stage: str, extra: dict[str, Any]) -> ResultRow:
    row = _scored_row(evaluator, system, lambda: evaluator.run_units(setting_units()), extra)
    row.extra.update(top10_diagnostic(evaluator, stage, evaluator.last_run))
    return row


def run_suffix(units: UnitConfig) -> str:
    """'' for the default units, else e.g. '-w48s24' (another window is another run directory and JSON file)."""
    default = UnitConfig()
    return "" if (units.window, units.stride) == (default.window, default.stride) else f"-w{units.window}s{units.stride}"


def study(variant: str, work: Path, units: UnitConfig = UnitConfig(), stage2_from: Path = STAGE2_FROM) -> dict[str, Any]:
    start = time.perf_counter()
    stage = stage_of(variant)
    test_ctx, train_ctx = prepare(variant, work, units, stage2_from)
    evaluator, train_eval = Evaluator(test_ctx), Evaluator(train_ctx)
    rows = table_rows(test_ctx, evaluator, with_index=False)  # the study builds no index
    multi = dict(sentence_weight=MULTI_MIX)
    for name, fallback, config in [("extractive fallback", ["extractive"], DEFAULTS),
                                   ("count prior 2", [], dataclasses.replace(DEFAULTS, count_prior=2.0)),
                                   ("extractive fallback + count prior 2", ["extractive"],
                                    dataclasses.replace(DEFAULTS, count_prior=2.0))]:
        for level in ("doc", "multi"):
            rows.append(rb_row(evaluator, f"rb-manual-{level}-{stage} ({name})",
                               lambda lv=level, f=fallback, c=config: evaluator.rao_blackwell(
                                   lv, with_fallback(evaluator, stage, f), c, **(multi if lv == "multi" else {})),
                               stage, {"coverage_fallback": fallback, "count_prior": config.count_prior}))

    # settings chosen without labels (pseudo-queries) and on labelled train queries, for each fallback choice
    selections = {}
    for fallback in ([], ["extractive"]):
        settings = candidate_settings([stage])
        label_free = select_label_free(evaluator, settings, DEFAULTS, fallbacks=fallback, source=stage)
        train_scores = [train_eval.score_units(units_for(train_eval, s, DEFAULTS, fallback))["ndcg@10"] for s in settings]
        best_train = max(range(len(settings)), key=lambda i: (train_scores[i], -i))
        key = "+".join(fallback) or "none"
        chosen = {"label-free": settings[[dataclasses.asdict(s) for s in settings].index(label_free["chosen"])],
                  "train-labels": settings[best_train]}
        per_query = {}
        for how, setting in chosen.items():
            row = rb_row(evaluator, f"selected {how} (fallback {key}): {setting.label}",
                         lambda s=setting: units_for(evaluator, s, DEFAULTS, fallback), stage,
                         {"chosen_by": how, "setting": dataclasses.asdict(setting), "coverage_fallback": fallback})
            rows.append(row)
            per_query[how] = {q: v["ndcg@10"] for q, v in row.per_query.items()}
        comparison = paired_compare(per_query["label-free"], per_query["train-labels"])
        selections[key] = {"label_free": label_free, "train": {
            "chosen": dataclasses.asdict(settings[best_train]), "label": settings[best_train].label,
            "scores": [{**dataclasses.asdict(s), "ndcg@10": round(v, 5)} for s, v in zip(settings, train_scores)]},
            "label_free_vs_train_on_test": comparison.to_json()}
    vs = compare_to_baselines({row.system: row.per_query for row in rows if row.per_query})
    by_name = {row.system: row for row in rows}
    for row in rows:
        if row.system in vs:
            row.extra["vs"] = {base: c.to_json() for base, c in vs[row.system].items()}
        default = by_name.get(row.system.split(" (")[0])  # a coverage mechanism's row against its level's default
        if default is not None and default is not row:
            row.extra["vs_default"] = paired_compare(*({q: v["ndcg@10"] for q, v in r.per_query.items()}
                                                       for r in (row, default))).to_json()
    units = json.loads((test_ctx.run_dir / layout.SENTENCE_UNITS).read_text())
    return {"variant": variant, "documents": len(evaluator.doc_ids), "test_queries": len(test_ctx.dataset.qrels),
            "train_queries": len(train_ctx.dataset.qrels), "sentence_units": units,
            "coverage": {stage: coverage_of(evaluator, stage)}, "selection": selections,
            "rows": [row.to_json() for row in rows], "seconds": round(time.perf_counter() - start, 1)}


def _vs(row: dict[str, Any], base: str) -> str:
    entry = row.get("vs_default") if base == "default" else row.get("vs", {}).get(base)
    return "" if entry is None else f"{100 * entry['delta']:+.2f} (p {entry['p_rand']:.3f})"


def summarise(output: Path, variants: list[str]) -> str:
    """``summary.md``: per corpus the rows with nDCG@10, the paired tests against ``dense`` and ``dense-multi``,
    and the covered documents' top-10 share; then the two selections."""
    lines = []
    for variant in variants:
        path = output / f"{variant}.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        units = result["sentence_units"]
        stage, coverage = next(iter(result["coverage"].items()))
        stage = stage.replace("stage", "stage-")
        lines += [f"## {variant} ({result['documents']} documents, {result['test_queries']} test queries; units: "
                  f"{units['splitter']}, documents with 1 / 2-5 / >5 units: {units['units_per_document']['1']} / "
                  f"{units['units_per_document']['2-5']} / {units['units_per_document']['>5']}; {stage} coverage "
                  f"{coverage['documents']} documents)", "",
                  "| system | nDCG@10 | vs dense (Δ×100, p) | vs dense-multi (Δ×100, p) | vs its level's default row "
                  "(Δ×100, p) | covered top-10 share / corpus share |",
                  "|---|---:|---|---|---|---|"]
        for row in result["rows"]:
            share = (f"{row['covered_top10_share']:.3f} / {row['covered_corpus_share']:.3f}"
                     if "covered_top10_share" in row else "")
            lines.append(f"| {row['system']} | {row['ndcg@10']:.4f} | {_vs(row, 'dense')} | {_vs(row, 'dense-multi')} "
                         f"| {_vs(row, 'default')} | {share} |")
        lines.append("")
        for fallback, selection in result["selection"].items():
            c = selection["label_free_vs_train_on_test"]
            lines.append(f"Selection with fallback `{fallback}`: label-free chose *{selection['label_free']['label']}*, "
                         f"train labels chose *{selection['train']['label']}*; test nDCG@10 label-free minus train "
                         f"{100 * c['delta']:+.2f} points (randomisation p {c['p_rand']:.3f}, {c['queries']} queries).")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/robustness"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/robustness"))
    parser.add_argument("--window", type=int, default=UnitConfig().window, help="embed.units.window")
    parser.add_argument("--stride", type=int, default=UnitConfig().stride, help="embed.units.stride")
    parser.add_argument("--variants", nargs="*", default=["original", "lower", "partial"],
                        choices=["original", "lower", "partial", "partial-stage2"],
                        help="corpora to study; none: only rewrite summary.md from the JSON files")
    parser.add_argument("--stage2-from", type=Path, default=STAGE2_FROM,
                        help="a finished covered-subset pipeline run, whose kept stage-2 outputs partial-stage2 uses")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "pipeline.embed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for variant in args.variants:
        units = UnitConfig(window=args.window, stride=args.stride)
        result = study(variant, args.work, units, args.stage2_from)
        result["command"] = "python -m benchmarks.robustness " + " ".join(sys.argv[1:] if argv is None else argv)
        write_json_atomic(args.output / f"{variant}{run_suffix(units)}.json", result)
        log.info("%s done in %.0f s", variant, result["seconds"])
    named = ["original", "lower", "partial", "partial-stage2"]
    others = sorted(path.stem for path in args.output.glob("*.json") if path.stem not in named)
    write_text_atomic(args.output / "summary.md", summarise(args.output, named + others) + "\n")


if __name__ == "__main__":
    main()
