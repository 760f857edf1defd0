"""Rao-Blackwellised unit vectors: a document (or sentence) vector averaged with the embeddings
of the synthetic questions and keywords written for its document.

Why: one embedding of a document is a single noisy draw of "what this document answers"; the
synthetic queries are further draws of the same thing, and averaging them in lowers the variance
of the estimate (Zeng et al. 2024, §3.3). How much each draw should count is the open question
the study answers, so every weighting the study needs is one parameterisation here:

    v(u) = normalise( a_u · e(u)  +  Σ_m c_um · e(m)  +  c_u,parent · e(doc(u)) )

over the kept synthetic outputs m of u's document. With ``doc_weight`` = w and shares α_t
(``task_weights``, any non-negative numbers; only their ratios matter) and the parent share π
(``parent_share``), for the methods ``manual``, ``bertscore`` and ``softmax``:

    a_u = w,   task t gets (1 − w) · α_t / (π + Σ_{present t'} α_t'),   the parent (1 − w) · π / (same),

and within a task the outputs share the task's weight in proportion to a score s_m: 1 (manual,
a plain mean), the output's BERTScore F1 against the document (bertscore, given as
``synthetic_weights``), or exp(cos(e(m), anchor) / temperature) (softmax). ``uniform`` ignores w
and α: the unit, each kept output (and the parent when π > 0) count 1/(1 + n) each. So one sweep of
w ∈ [0, 1] and α covers every method, with uniform a fixed point; w = 1 returns the input.

Study knobs, with simple defaults: ``normalise_within="all"`` spreads the tasks' total mass over
all of a unit's outputs in proportion to α_t · s_m (so with one output per task the scores still
choose between question and keywords); ``min_similarity`` drops outputs whose cosine to the anchor
is below it; ``similarity_to`` picks the anchor of those cosines, the unit itself or its whole
document; ``parent_share`` mixes the whole document's vector into each sentence. A task with no
kept output is absent (its share goes to the present ones); a unit whose document has no kept
output (and π = 0) keeps its own vector. A task share of 0 switches that task off in every method.

Vectorised: outputs are grouped by document once, each chunk of units expands to its (unit, output)
pairs as a sparse CSR matrix (cosines by a sampled matrix product, the mix by a sparse-dense
product), and weights are normalised with ``index_add_``/``scatter_reduce`` — no Python loop over
documents, no (pairs × d) gather; ``chunk_size`` bounds the pairs and units held at once, so a
million rows fit. Half-precision synthetic vectors are copied to float32 once.

Methods are registered in :data:`WEIGHTING_METHODS`, one class each (below): a method says how a unit's
(anchor, output) pairs are scored within their group, and declares what it needs, the cosines to the
anchor (``needs_similarity``) or a per-output score the caller supplies (``output_score``, e.g.
BERTScore F1): the evaluator asks for whatever the chosen method declares. Adding a method is one class
here plus its test; a config names it by its registered name.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from core.registry import Registry

NORM_TOLERANCE = 1e-2  # float16 vectors on disk drift ~1e-3 from unit length


class WeightingMethod:
    """How the synthetic outputs of a unit share their weight (the ``method`` of :class:`RaoBlackwellConfig`).

    :meth:`pair_scores` gives each (anchor, output) pair its raw score s_m; outputs share their task's
    weight (or, with ``normalise_within="all"``, all the outputs' weight) in proportion to it. A method
    with ``equal_weights`` ignores the document weight and the task shares instead: the unit and each
    output with a positive score count the same.
    """

    needs_similarity: ClassVar[bool] = False
    """Whether :meth:`pair_scores` reads ``cosine`` (each output's cosine to its anchor)."""
    output_score: ClassVar[str | None] = None
    """The name of a per-output score the caller must pass as ``synthetic_weights`` (None: none)."""
    equal_weights: ClassVar[bool] = False

    def pair_scores(self, keep: Tensor, cosine: Tensor, output_score: Tensor | None, group: Tensor,
                    num_groups: int, config: RaoBlackwellConfig) -> Tensor:
        """Raw score per pair, 0 where ``keep`` is False; ``group`` numbers the pair's normalisation group."""
        return keep.float()


WEIGHTING_METHODS: Registry[type[WeightingMethod]] = Registry("weighting method")


@WEIGHTING_METHODS.register("manual")
class Manual(WeightingMethod):
    """A plain mean within each task: the task shares and the document weight decide everything."""


@WEIGHTING_METHODS.register("uniform")
class Uniform(WeightingMethod):
    """Every vector counts the same: the unit, each kept output (and the parent document when π > 0)."""

    equal_weights = True


@WEIGHTING_METHODS.register("bertscore")
class BertScoreWeights(WeightingMethod):
    """Outputs in proportion to their BERTScore F1 against their document (``retrieval.bertscore``)."""

    output_score = "bertscore"

    def pair_scores(self, keep: Tensor, cosine: Tensor, output_score: Tensor | None, group: Tensor,
                    num_groups: int, config: RaoBlackwellConfig) -> Tensor:
        return torch.where(keep, output_score, torch.zeros_like(keep, dtype=torch.float32))


@WEIGHTING_METHODS.register("softmax")
class SoftmaxSimilarity(WeightingMethod):
    """Outputs by the softmax of their cosine to the anchor over ``temperature``."""

    needs_similarity = True

    def pair_scores(self, keep: Tensor, cosine: Tensor, output_score: Tensor | None, group: Tensor,
                    num_groups: int, config: RaoBlackwellConfig) -> Tensor:
        logits = torch.where(keep, cosine / config.temperature, torch.full_like(cosine, -torch.inf))
        peak = torch.full((num_groups,), -torch.inf, device=cosine.device).scatter_reduce(0, group, logits, "amax")
        return torch.where(keep, torch.exp(logits - peak[group]), torch.zeros_like(logits))


@dataclass
class RaoBlackwellConfig:
    """How synthetic outputs are weighted into unit vectors (see the module docstring for the formula).

    Attributes:
        method: a registered weighting method (:data:`WEIGHTING_METHODS`): ``manual`` (plain mean within a
            task), ``uniform`` (every vector equal), ``bertscore`` (proportional to each output's BERTScore F1
            against its document), ``softmax`` (softmax of cosine to the anchor over ``temperature``).
        doc_weight: weight w of the unit's own vector (the document, or the sentence at sentence level);
            the augmenting vectors share 1 − w. Ignored by ``uniform``.
        task_weights: shares α per task name; ratios matter, a task with share 0 is left out.
        temperature: softmax temperature over cosines (``softmax`` only).
        normalise_within: ``task`` normalises scores within each task (each task keeps its share);
            ``all`` normalises α_t · score over all of a unit's outputs (scores move mass between tasks).
        min_similarity: drop outputs whose cosine to the anchor is below this; None keeps all.
        similarity_to: anchor of the cosines for ``softmax`` and ``min_similarity``: ``unit`` (the
            sentence at sentence level) or ``document`` (needs ``doc_vectors`` at sentence level).
        parent_share: share π of the whole document's vector, beside the task shares, mixed into each
            sentence (sentence level; needs ``doc_vectors``). 0 turns it off.
        chunk_size: at most this many (unit, output) pairs, and so units, are handled at once: memory
            per chunk is about chunk_size × d floats (the chunk's units and mix), whatever M is.
        count_prior: k ≥ 0: the synthetic share 1 − w of a unit is scaled by n / (n + k), n its document's weighted
            outputs, so a document with one output moves toward "question space" less than one with ten
            (a shrinkage towards the unit's own vector; issue 15's partial coverage). 0: off (the share is 1 − w
            whatever n is). Ignored by ``uniform``, whose weights already depend on n.
        bertscore_layer: ``bertscore`` only: how many of the embedding encoder's layers BERTScore runs
            (``bert_score``'s ``num_layers``; it has no default for MiniLM or T5 encoders); null: all of them,
            the last layer, whose states the retrieval vectors pool (``retrieval/bertscore.py``).
    """

    method: str = "manual"
    doc_weight: float = 0.9  # chosen on TRAIN queries only: the SciFact covered-subset study's best doc-level
    # weight (manual, stage 1; benchmarks/results/defaults-selection/selection.md, python -m benchmarks.select_defaults)
    task_weights: dict[str, float] = field(default_factory=lambda: {"question": 0.5, "keywords": 0.5})
    temperature: float = 0.1
    normalise_within: Literal["task", "all"] = "task"
    min_similarity: float | None = None
    similarity_to: Literal["unit", "document"] = "unit"
    parent_share: float = 0.0
    chunk_size: int = 65536
    bertscore_layer: int | None = None
    count_prior: float = 0.0

    def __post_init__(self) -> None:
        WEIGHTING_METHODS.check(self.method, "rao_blackwell.method")
        if not 0.0 <= self.doc_weight <= 1.0:
            raise ValueError(f"doc_weight must lie in [0, 1], got {self.doc_weight}")
        if not self.task_weights:
            raise ValueError("task_weights needs at least one task, e.g. {'question': 0.5, 'keywords': 0.5}")
        negative = {task: share for task, share in self.task_weights.items() if share < 0}
        if negative:
            raise ValueError(f"task_weights must be non-negative, got {negative}")
        if sum(self.task_weights.values()) + self.parent_share <= 0:
            raise ValueError("task_weights (plus parent_share) must have a positive share somewhere")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.normalise_within not in ("task", "all"):
            raise ValueError(f"normalise_within must be 'task' or 'all', got {self.normalise_within!r}")
        if self.similarity_to not in ("unit", "document"):
            raise ValueError(f"similarity_to must be 'unit' or 'document', got {self.similarity_to!r}")
        if self.min_similarity is not None and not -1.0 <= self.min_similarity <= 1.0:
            raise ValueError(f"min_similarity must lie in [-1, 1] or be None, got {self.min_similarity}")
        if self.parent_share < 0:
            raise ValueError(f"parent_share must be non-negative, got {self.parent_share}")
        if self.count_prior < 0:
            raise ValueError(f"count_prior must be non-negative, got {self.count_prior}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {self.chunk_size}")
        if self.bertscore_layer is not None and self.bertscore_layer < 0:
            raise ValueError(f"bertscore_layer must be a layer count >= 0 or null (the last), got {self.bertscore_layer}")

    @property
    def tasks(self) -> list[str]:
        """Task names in code order: a LongTensor ``synthetic_task`` indexes this list."""
        return list(self.task_weights)

    @property
    def weighting(self) -> WeightingMethod:
        return WEIGHTING_METHODS.get(self.method)()

    @property
    def needs_similarity(self) -> bool:
        return self.weighting.needs_similarity or self.min_similarity is not None


@dataclass
class _Outputs:
    """Synthetic outputs grouped by document (CSR): the outputs of document d are
    ``order[offsets[d]:offsets[d] + counts[d]]``."""

    vectors: Tensor  # (M, d) float32
    norms: Tensor
    task: Tensor
    score: Tensor | None
    order: Tensor
    offsets: Tensor
    counts: Tensor


def rao_blackwellise(unit_vectors: Tensor, unit_to_doc: Tensor, synthetic_vectors: Tensor, synthetic_doc: Tensor,
                     synthetic_task: Tensor | Sequence[str], config: RaoBlackwellConfig,
                     synthetic_weights: Tensor | None = None, doc_vectors: Tensor | None = None) -> Tensor:
    """Return the Rao-Blackwellised unit vectors, (U, d), L2-normalised, in ``unit_vectors``' dtype.

    Args:
        unit_vectors: (U, d) normalised vectors of the units (documents, or sentences).
        unit_to_doc: (U,) document index of each unit (one per unit at document level).
        synthetic_vectors: (M, d) normalised embeddings of the synthetic outputs.
        synthetic_doc: (M,) document index of each output, in the same index space as ``unit_to_doc``.
        synthetic_task: (M,) task of each output: names, or codes into ``config.tasks``.
        config: the weighting.
        synthetic_weights: (M,) non-negative score per output; required by a method with an ``output_score``
            (``bertscore``: each output's F1).
        doc_vectors: (D, d) normalised document vectors, indexed by document; needed at sentence
            level for ``parent_share`` > 0 and for ``similarity_to="document"``.
    """
    device = unit_vectors.device
    unit_to_doc = _index_tensor(unit_to_doc, "unit_to_doc", len(unit_vectors), device)
    synthetic_doc = _index_tensor(synthetic_doc, "synthetic_doc", len(synthetic_vectors), device)
    task_codes = _task_codes(synthetic_task, config, len(synthetic_vectors), device)
    _check_vectors(unit_vectors, "unit_vectors")
    _check_vectors(synthetic_vectors, "synthetic_vectors")
    if synthetic_vectors.shape[1:] != unit_vectors.shape[1:]:
        raise ValueError(f"synthetic_vectors have dimension {tuple(synthetic_vectors.shape[1:])} but unit_vectors "
                         f"{tuple(unit_vectors.shape[1:])}: embed both with the same encoder")
    num_docs = int(max(unit_to_doc.max().item() + 1 if len(unit_to_doc) else 0,
                       synthetic_doc.max().item() + 1 if len(synthetic_doc) else 0))
    if doc_vectors is not None:
        _check_vectors(doc_vectors, "doc_vectors")
        if len(doc_vectors) < num_docs or doc_vectors.shape[1:] != unit_vectors.shape[1:]:
            raise ValueError(f"doc_vectors has shape {tuple(doc_vectors.shape)} but documents are indexed up to "
                             f"{num_docs - 1} with dimension {unit_vectors.shape[1]}")
        num_docs = len(doc_vectors)
    score = _output_scores(synthetic_weights, config, len(synthetic_vectors), device)

    one_unit_per_doc = bool((torch.bincount(unit_to_doc, minlength=num_docs) <= 1).all()) if len(unit_to_doc) else True
    if config.parent_share > 0 and doc_vectors is None:
        raise ValueError("parent_share > 0 mixes the whole document's vector into each sentence: pass doc_vectors")
    anchor_is_document = config.needs_similarity and config.similarity_to == "document" and not one_unit_per_doc
    if anchor_is_document and doc_vectors is None:
        raise ValueError("similarity_to='document' at sentence level needs doc_vectors (the documents' own vectors)")
    # Weights depend only on the document unless cosines to each unit are needed: then mix once per document.
    per_document = not config.needs_similarity or anchor_is_document

    order = torch.argsort(synthetic_doc, stable=True)
    counts = torch.bincount(synthetic_doc, minlength=num_docs)
    offsets = torch.cumsum(counts, 0) - counts
    vectors = synthetic_vectors.float()  # a float32 copy only if stored in half precision
    outputs = _Outputs(vectors, torch.linalg.vector_norm(vectors, dim=-1), task_codes, score, order, offsets, counts)
    shares = torch.tensor([config.task_weights[t] for t in config.tasks], dtype=torch.float32, device=device)

    result = torch.empty_like(unit_vectors)
    chunks = list(_chunks(counts[unit_to_doc].clamp(min=1), config.chunk_size))
    for start, stop in tqdm(chunks, desc="rao-blackwell", unit="chunk", disable=len(chunks) < 10, leave=False):
        units = unit_vectors[start:stop].float()
        docs = unit_to_doc[start:stop]
        if per_document:
            anchor_doc, inverse = torch.unique(docs, return_inverse=True)
            anchors = doc_vectors[anchor_doc].float() if config.needs_similarity else None
        else:
            anchor_doc, inverse, anchors = docs, torch.arange(len(docs), device=device), units
        own, mix, parent = _mix_for_anchors(anchor_doc, anchors, outputs, shares, config)
        combined = own[inverse, None] * units + mix[inverse]
        if config.parent_share > 0:
            combined += parent[inverse, None] * doc_vectors[docs].float()
        result[start:stop] = F.normalize(combined, dim=-1).to(result.dtype)
    return result


def _mix_for_anchors(anchor_doc: Tensor, anchors: Tensor | None, outputs: _Outputs, shares: Tensor,
                     config: RaoBlackwellConfig) -> tuple[Tensor, Tensor, Tensor]:
    """For K anchors: the weight of the unit's own vector (K,), the weighted sum of its outputs (K, d)
    and the parent document's weight (K,).

    The (anchor, output) pairs are the non-zeros of a sparse CSR matrix (K, M): cosines are a sampled
    matrix product and the mix a sparse-dense product, so no (pairs, d) matrix is ever gathered.
    """
    device, num_tasks = anchor_doc.device, len(shares)
    num_anchors = len(anchor_doc)
    n = outputs.counts[anchor_doc]
    row_ends = torch.cumsum(n, 0)
    pair_anchor = torch.repeat_interleave(torch.arange(num_anchors, device=device), n)
    first = torch.repeat_interleave(outputs.offsets[anchor_doc] - (row_ends - n), n)
    # Within a document, ``order`` lists outputs by increasing index: sorted CSR columns, as CSR requires.
    pair_output = outputs.order[first + torch.arange(len(pair_anchor), device=device)]
    crow = torch.cat([row_ends.new_zeros(1), row_ends])
    task = outputs.task[pair_output]

    def sparse(values: Tensor) -> Tensor:
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the tests pin its results
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(crow, pair_output, values, size=(num_anchors, len(outputs.vectors)),
                                           check_invariants=False)

    keep = shares[task] > 0
    cosine = torch.zeros(len(pair_output), device=device)
    if config.needs_similarity and len(pair_output):
        dots = torch.sparse.sampled_addmm(sparse(torch.zeros(len(pair_output), device=device)),
                                          F.normalize(anchors, dim=-1), outputs.vectors.T, beta=0.0).values()
        cosine = dots / outputs.norms[pair_output]
        if config.min_similarity is not None:
            keep &= cosine >= config.min_similarity

    group = pair_anchor * num_tasks + task if config.normalise_within == "task" else pair_anchor
    num_groups = num_anchors * num_tasks if config.normalise_within == "task" else num_anchors
    method = config.weighting
    raw = method.pair_scores(keep, cosine, None if outputs.score is None else outputs.score[pair_output], group,
                             num_groups, config)

    # Which tasks are present for each anchor (some kept output with positive score).
    task_mass = torch.zeros(num_anchors * num_tasks, device=device).index_add_(0, pair_anchor * num_tasks + task, raw)
    present = (task_mass > 0).view(num_anchors, num_tasks)
    parent_mass = torch.full((num_anchors,), float(config.parent_share), device=device)

    if method.equal_weights:
        counted = (raw > 0).float()
        n_vectors = 1.0 + torch.zeros(num_anchors, device=device).index_add_(0, pair_anchor, counted) + (parent_mass > 0)
        coefficient = counted / n_vectors[pair_anchor]
        own, parent = 1.0 / n_vectors, (parent_mass > 0) / n_vectors
    else:
        present_share = (present * shares).sum(1)  # Σ α_t over present tasks
        total = present_share + parent_mass
        if config.normalise_within == "task":
            within = raw / torch.zeros(num_groups, device=device).index_add_(0, group, raw)[group].clamp(min=1e-30)
            coefficient = shares[task] * within
        else:
            prior = shares[task] * raw
            within = prior / torch.zeros(num_groups, device=device).index_add_(0, group, prior)[group].clamp(min=1e-30)
            coefficient = present_share[pair_anchor] * within
        synthetic_share = torch.full_like(total, 1.0 - config.doc_weight)
        if config.count_prior > 0:  # shrink the synthetic share of documents with few outputs
            n_outputs = torch.zeros(num_anchors, device=device).index_add_(0, pair_anchor, (raw > 0).float())
            synthetic_share = synthetic_share * n_outputs / (n_outputs + config.count_prior)
        augment = synthetic_share / total.clamp(min=1e-30)
        has_augment = total > 0
        coefficient = coefficient * augment[pair_anchor]
        own = torch.where(has_augment, 1.0 - synthetic_share, torch.ones_like(total))
        parent = parent_mass * augment

    mix = sparse(coefficient) @ outputs.vectors if len(pair_output) else outputs.vectors.new_zeros(
        num_anchors, outputs.vectors.shape[1])
    return own, mix, parent


def _chunks(cost: Tensor, budget: int) -> Iterator[tuple[int, int]]:
    """Consecutive [start, stop) ranges of units whose summed cost (pairs) stays within budget (≥ 1 unit each)."""
    ends = torch.cumsum(cost, 0)
    start, total = 0, len(cost)
    while start < total:
        limit = (int(ends[start - 1]) if start else 0) + budget
        stop = max(int(torch.searchsorted(ends, limit, right=True)), start + 1)
        yield start, stop
        start = stop


def _index_tensor(index: Tensor, name: str, length: int, device: torch.device) -> Tensor:
    index = torch.as_tensor(index, device=device)
    if index.dtype not in (torch.int64, torch.int32) or index.dim() != 1 or len(index) != length:
        raise ValueError(f"{name} must be a 1-d integer tensor of length {length}, got dtype {index.dtype} "
                         f"and shape {tuple(index.shape)}")
    if len(index) and int(index.min()) < 0:
        raise ValueError(f"{name} holds negative document indices")
    return index.long()


def _task_codes(synthetic_task: Tensor | Sequence[str], config: RaoBlackwellConfig, length: int,
                device: torch.device) -> Tensor:
    if isinstance(synthetic_task, Tensor):
        codes = _index_tensor(synthetic_task, "synthetic_task", length, device)
        if len(codes) and int(codes.max()) >= len(config.tasks):
            raise ValueError(f"synthetic_task codes index config.tasks {config.tasks}, got code {int(codes.max())}")
        return codes
    if len(synthetic_task) != length:
        raise ValueError(f"synthetic_task has {len(synthetic_task)} entries for {length} synthetic vectors")
    code_of = {task: code for code, task in enumerate(config.tasks)}
    unknown = sorted(set(synthetic_task) - set(code_of))
    if unknown:
        raise ValueError(f"synthetic tasks {unknown} have no share in task_weights {config.task_weights}: "
                         "add them (share 0 leaves a task out)")
    return torch.tensor([code_of[task] for task in synthetic_task], dtype=torch.long, device=device)


def _output_scores(synthetic_weights: Tensor | None, config: RaoBlackwellConfig, length: int,
                   device: torch.device) -> Tensor | None:
    needed = config.weighting.output_score
    if needed is None:
        return None
    if synthetic_weights is None:
        raise ValueError(f"method '{config.method}' needs synthetic_weights: each output's {needed} score "
                         "(bertscore: its BERTScore F1 against its document, retrieval.bertscore.bertscore_f1)")
    score = torch.as_tensor(synthetic_weights, device=device).float()
    if score.shape != (length,):
        raise ValueError(f"synthetic_weights must have shape ({length},), got {tuple(score.shape)}")
    if not torch.isfinite(score).all() or (score < 0).any():
        raise ValueError("synthetic_weights must be finite and non-negative (a negative BERTScore F1 means an "
                         "output unrelated to its document: drop it or clamp the scores at 0 yourself)")
    return score


def _check_vectors(vectors: Tensor, name: str) -> None:
    if vectors.dim() != 2:
        raise ValueError(f"{name} must be a (rows, dim) matrix, got shape {tuple(vectors.shape)}")
    if len(vectors):
        norms = torch.linalg.vector_norm(vectors, dim=-1, dtype=torch.float32)
        if ((norms - 1).abs() > NORM_TOLERANCE).any():
            raise ValueError(f"{name} must be L2-normalised (norms range {norms.min():.4f}..{norms.max():.4f}); "
                             "embed with normalize=True or apply torch.nn.functional.normalize")


LEVELS = ("doc", "sentence", "multi")
"""Unit levels: one vector per document; each sentence; the sentences plus the document's own vector (max-scored)."""


def mix_sentences(sentence_vectors: Tensor, sentence_doc: Tensor, doc_vectors: Tensor, sentence_weight: float) -> Tensor:
    """The multi level's sentence units: normalise(a · sentence + (1 − a) · its document); a = 1 returns them as is."""
    if sentence_weight >= 1.0:
        return sentence_vectors
    return F.normalize(sentence_weight * sentence_vectors.float()
                       + (1 - sentence_weight) * doc_vectors[sentence_doc].float(), dim=-1).to(sentence_vectors.dtype)


def rao_blackwell_level(level: str, doc_vectors: Tensor, synthetic_vectors: Tensor, synthetic_doc: Tensor,
                        synthetic_task: Tensor | Sequence[str], config: RaoBlackwellConfig, *,
                        sentence_vectors: Tensor | None = None, sentence_doc: Tensor | None = None,
                        sentence_weight: float = 1.0,
                        synthetic_weights: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The units of ``level`` Rao-Blackwellised: ``(vectors, unit_to_doc)``; ``unit_to_doc`` None at ``doc`` level.

    Why one function: the evaluator's in-memory rows and the index loop (one batch of documents at a time)
    must compute the same vectors. ``sentence`` augments each sentence; ``multi`` is the sentences mixed with
    their document (:func:`mix_sentences`) followed by every document's Rao-Blackwellised vector.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if level == "multi":
        rb_docs, _ = rao_blackwell_level("doc", doc_vectors, synthetic_vectors, synthetic_doc, synthetic_task, config,
                                         synthetic_weights=synthetic_weights)
        sentences, owner = _sentences(sentence_vectors, sentence_doc)
        mixed = mix_sentences(sentences, owner, doc_vectors, sentence_weight)
        return torch.cat([mixed, rb_docs]), torch.cat([owner, torch.arange(len(doc_vectors), device=owner.device)])
    if level == "doc":
        units, owner = doc_vectors, torch.arange(len(doc_vectors), device=doc_vectors.device)
    else:
        units, owner = _sentences(sentence_vectors, sentence_doc)
    needs_docs = config.parent_share > 0 or (level == "sentence" and config.similarity_to == "document")
    vectors = rao_blackwellise(units, owner, synthetic_vectors, synthetic_doc, synthetic_task, config,
                               synthetic_weights=synthetic_weights, doc_vectors=doc_vectors if needs_docs else None)
    return vectors, None if level == "doc" else owner


def _sentences(sentence_vectors: Tensor | None, sentence_doc: Tensor | None) -> tuple[Tensor, Tensor]:
    if sentence_vectors is None or sentence_doc is None:
        raise ValueError("the sentence and multi levels need sentence vectors (embed.sentences: true)")
    return sentence_vectors, sentence_doc
