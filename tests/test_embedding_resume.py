"""Embedding killed with SIGKILL at five chosen points, resumed each time, equals an uninterrupted run.

Each attempt is a separate process running ``embed_texts`` with a tiny random BERT, one text per batch,
killed with SIGKILL (no handler, no cleanup: as a pre-empted job or the out-of-memory killer would)
after 1 to 3 new part files, inside a batch, between batches or during a part file's atomic write: the
process kills itself there (``core.interrupt.HOOK_ENV``), so no kill races the machine's speed. The last attempt runs to the
end; its file must equal, byte for byte, a run that was never interrupted (one text per batch on both
sides, so every vector is computed the same way): no id missing, none twice, the same vectors.
Attempts are forked from the test process (the same process boundary as a fresh interpreter, without
5 to 25 s of imports each); the generation stage has the same test in test_generation_resume.py.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

import pytest

from helpers import make_tiny_bert, one_thread, sigkill_then_resume  # noqa: F401 (a fixture)
from pipeline.embed import embed_texts
from retrieval.vectors import read_vector_ids

WORDS = "cell protein gene tumour dose patient cohort risk mouse assay receptor signal".split()
pytestmark = pytest.mark.usefixtures("one_thread")


def make_items(n: int) -> list[tuple[str, str]]:
    rng = random.Random(3)
    return [(f"doc-{i}", " ".join(rng.choices(WORDS, k=rng.randint(1, 40)))) for i in range(n)]


ITEMS = make_items(80)


def embed(model: Path, output: Path) -> None:
    embed_texts(ITEMS, str(model), output, batch_size=1, progress=False, dtype="float16")


def test_sigkill_five_times_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    model = make_tiny_bert(tmp_path / "bert")
    reference = tmp_path / "reference" / "documents.safetensors"
    embed(model, reference)

    output = tmp_path / "run" / "documents.safetensors"
    done_before_resume = sigkill_then_resume(functools.partial(embed, model, output), output, "*/rank*.safetensors")
    assert done_before_resume < len(ITEMS)  # work was left for the resume
    assert read_vector_ids(output) == [key for key, _ in ITEMS]  # every id once, in the caller's order
    assert output.read_bytes() == reference.read_bytes()  # and the same vectors
