"""The pipeline's configuration sections (the ``stage1:``, ``generation:``, ``fit:``, ``embed:`` and
``evaluate:`` keys of a profile); the other sections are the modules' own configs
(``data: DataConfig``, ``filter: FilterConfig``, ``rao_blackwell: RaoBlackwellConfig``...).

Why dataclasses: jsonargparse turns them into typed, documented options, so a profile with an
unknown key or a wrong type fails before any work starts, naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from datamodules.synthetic_files import FileFormat
from lightning_modules.decoding import DecodingConfig
from pipeline.sources import STAGE1_SOURCES
from retrieval.bm25 import BM25Config
from retrieval.extractive import ExtractiveConfig
from retrieval.metrics import DEFAULT_K
from retrieval.rao_blackwell import WEIGHTING_METHODS
from retrieval.search import SearchConfig
from retrieval.sentences import UnitConfig
from retrieval.synthetic import UnknownDocPolicy

STAGES = ("data", "stage1", "filter", "tune", "stage2", "filter2", "embed", "index", "evaluate")
"""Stage names, in order; each is also a command: ``python train.py <stage> -c profile.yaml``."""


@dataclass
class Stage1Config:
    """Where stage 1's synthetic questions and keywords come from.

    Attributes:
        source: a registered stage-1 source (``pipeline.sources.STAGE1_SOURCES``): ``self`` (the model
            itself, as the paper does), ``extractive`` (a bootstrap teacher for a model that cannot follow
            instructions untrained: titles/leading sentences and TF-IDF keyphrases), or ``file`` (synthetic
            queries made elsewhere).
        file: the synthetic file for ``source: file`` (our JSONL, or BEIR GenQ's ``gen-queries.jsonl``).
        file_format: ``jsonl`` (our records) or ``beir-genq``.
        on_unknown_doc: a file record whose document is not in the (downsampled) corpus: ``fail``, or
            ``warn`` and drop it (a file made for a larger corpus).
        extractive: settings of the extractive teacher.
        decoding: decoding for ``source: self``; null uses ``generation.decoding``.
    """

    source: str = "self"
    file: Path | None = None
    file_format: FileFormat = "jsonl"
    on_unknown_doc: UnknownDocPolicy = "fail"
    extractive: ExtractiveConfig = field(default_factory=ExtractiveConfig)
    decoding: DecodingConfig | None = None

    def __post_init__(self) -> None:
        STAGE1_SOURCES.check(self.source, "stage1.source")


@dataclass
class GenerationConfig:
    """Generation of synthetic texts by the model (stage 2, and stage 1 when ``stage1.source`` is ``self``).

    Attributes:
        decoding: sampling/beam settings and samples per task per document.
        batch_size: prompts per batch per device (does not change outputs: seeds are per document).
        max_input_length: prompt tokens kept; null uses the model's ``max_input_length``.
        filter_stage2: apply the filter's rules to stage-2 outputs before they augment vectors.
    """

    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    batch_size: int = 32
    max_input_length: int | None = None
    filter_stage2: bool = True


@dataclass
class FitConfig:
    """Instruction tuning (the paper's settings, ``core.paper.PAPER_TUNING``, are the fit CLI's defaults).

    Attributes:
        configs: LightningCLI fit fragments (``configs/fit/*.yaml``) composed first; the pipeline then sets
            the model, the data files and the run directory.
        trainer: extra Trainer settings for tuning only (e.g. ``max_epochs``), over the pipeline's ``trainer``.
        data: extra SelfInstructDataModule settings (e.g. ``batch_size``, ``val_fraction``).
        overrides: further ``--key=value`` arguments, as on the ``fit`` command line.
        skip: do not tune; stage 2 then generates with the untuned model (an ablation).
    """

    configs: list[str] = field(default_factory=lambda: ["configs/fit/selfinstruct.yaml"])
    trainer: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    skip: bool = False


@dataclass
class EmbedConfig:
    """What embeds documents, sentences, queries and synthetic texts.

    Attributes:
        encoder: ``tuned`` (the tuned model's encoder, the paper's choice), ``base`` (the untuned model's
            encoder), or a model folder / hub name of a separate encoder (the paper's future work).
        batch_size: texts per batch per device.
        dtype: precision of the vector files on disk (search always computes in float32).
        sentences: also embed sentence units (title + sentence) for sentence-level vectors.
        units: how documents are cut into those units (sentences, or word windows where the corpus's text
            defeats the sentence splitter; ``auto`` chooses per corpus and reports it).
    """

    encoder: str = "tuned"
    batch_size: int = 64
    dtype: Literal["float32", "float16"] = "float32"
    sentences: bool = True
    units: UnitConfig = field(default_factory=UnitConfig)


@dataclass
class IndexConfig:
    """The index: the product of a run, Rao-Blackwellised vectors in ``<run_dir>/index/`` (``retrieval.index_files``).

    The weighting is ``rao_blackwell`` and, at the multi level, the sentence mix ``evaluate.multi_sentence_weight``;
    the results row ``rb-<method>-<level>-<stage>`` is scored by searching these files.

    Attributes:
        level: ``doc``, ``sentence`` or ``multi`` (the sentences plus the document's vector; needs ``embed.sentences``).
        stage: whose kept synthetic texts augment the vectors; null: the last of ``evaluate.stages``.
        dtype: of ``vectors.safetensors`` (search computes in float32).
        faiss: also write ``index.faiss``: ``flat`` (exact), ``ivf`` or ``hnsw`` (approximate); null: none.
        faiss_nlist: IVF lists; null: about 4 * sqrt(units).
        batch_size: documents per batch per device of the index loop.
    """

    level: Literal["doc", "sentence", "multi"] = "multi"
    stage: Literal["stage1", "stage2"] | None = None
    dtype: Literal["float32", "float16"] = "float32"
    faiss: Literal["flat", "ivf", "hnsw"] | None = None
    faiss_nlist: int | None = None
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"index.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class EvaluateConfig:
    """The results table and the weight sweep.

    Attributes:
        methods: registered Rao-Blackwell weighting methods to report (rows ``rb-<method>-<level>-<stage>``);
            each uses ``rao_blackwell`` with its ``method`` replaced.
        levels: ``doc`` (one vector per document), ``sentence`` (each sentence augmented; max over sentences)
            and/or ``multi`` (max over the sentences and the document's Rao-Blackwellised vector as one more
            unit: the sentences keep their precision, the averaged vector adds the synthetic evidence).
        multi_sentence_weight: at the ``multi`` level, each sentence unit is normalise(a·sentence + (1 − a)·document)
            with this a; 1 keeps plain sentences.
        stages: which synthetic outputs augment vectors: ``stage1`` (before tuning), ``stage2`` (after).
        use_filtered: augment with the outputs the filter kept (else every output).
        baselines: ``bm25``, ``dense``, ``dense-sentence``, ``dense-multi`` (the multi level's units without
            synthetic outputs), ``expansion`` (docTTTTTquery-style: questions
            appended to the text, then embedded and BM25-indexed).
        sweep_doc_weights: document weights of the sweep plot (nDCG@10 against w for each method).
        sweep_level: level of the sweep.
        sweep_stage: whose synthetic outputs the sweep uses; null: the last stage available (stage 2 after
            tuning). ``stage1`` when the tuned model is too weak for its outputs to pass the filter.
        coverage_fallback: a document without kept outputs in a row's stage takes those of the first of these
            that has some: ``stage1`` (the earlier stage), ``extractive`` (its own title question and TF-IDF
            keyphrases, embedded by the embed stage), so covered and uncovered documents compete on equal
            terms (``pipeline.coverage``); empty: none.
        select: ``label-free`` adds the row ``rb-selected-label-free``: the level, stage, document weight and
            sentence mix chosen by held-out synthetic questions (``pipeline.selection``), no labels needed;
            ``none``: no such row.
        k_values: cut-offs of the metrics.
        search: how vectors are searched.
        bm25: BM25 settings.
        columns: metric columns of the markdown table.
        run_depth: documents per query in each row's TREC run (``runs/<system>.trec``, for trec_eval, ranx,
            pyserini); at most ``search.k`` and ``bm25.k`` (what was retrieved); null writes no runs.
    """

    methods: list[str] = field(default_factory=WEIGHTING_METHODS.names)
    levels: list[Literal["doc", "sentence", "multi"]] = field(default_factory=lambda: ["doc", "sentence", "multi"])
    multi_sentence_weight: float = 1.0
    stages: list[Literal["stage1", "stage2"]] = field(default_factory=lambda: ["stage1", "stage2"])
    use_filtered: bool = True
    baselines: list[Literal["bm25", "dense", "dense-sentence", "dense-multi", "expansion"]] = field(
        default_factory=lambda: ["bm25", "dense", "dense-sentence", "dense-multi", "expansion"])
    sweep_doc_weights: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    sweep_level: Literal["doc", "sentence", "multi"] = "sentence"
    sweep_stage: Literal["stage1", "stage2"] | None = None
    coverage_fallback: list[Literal["stage1", "extractive"]] = field(default_factory=list)
    select: Literal["none", "label-free"] = "none"
    k_values: list[int] = field(default_factory=lambda: list(DEFAULT_K))
    search: SearchConfig = field(default_factory=SearchConfig)
    bm25: BM25Config = field(default_factory=BM25Config)
    columns: list[str] = field(default_factory=lambda: ["ndcg@10", "mrr@100", "recall@100"])
    run_depth: int | None = 1000

    def __post_init__(self) -> None:
        WEIGHTING_METHODS.check(self.methods, "evaluate.methods")
        if self.run_depth is not None:
            if self.run_depth < 1:
                raise ValueError(f"evaluate.run_depth must be >= 1 or null (no runs), got {self.run_depth}")
            for key, retrieved in (("search.k", self.search.k), ("bm25.k", self.bm25.k)):
                if self.run_depth > retrieved:
                    raise ValueError(f"evaluate.run_depth ({self.run_depth}) is deeper than evaluate.{key} "
                                     f"({retrieved}), the documents retrieved per query: raise evaluate.{key} "
                                     f"or lower evaluate.run_depth")


@dataclass
class LoggerConfig:
    """Weights & Biases for the pipeline's tables (filter samples, results); offline without an API key.

    Attributes:
        wandb: log to W&B (offline unless WANDB_API_KEY / ``wandb login`` is set or ``offline: false``).
        project: W&B project.
        name: run name; null reads WANDB_NAME, else the run directory's name.
        group: run group (the fit stage's run joins it); null reads WANDB_RUN_GROUP, else the run name.
        offline: force offline (true) or online (false); null decides from the API key.
    """

    wandb: bool = True
    project: str = "selfinstruct-retrieval"
    name: str | None = None
    group: str | None = None
    offline: bool | None = None
