"""Generation killed with SIGKILL at five chosen points, resumed each time, equals an uninterrupted run.

Each attempt is a separate process running ``generate_synthetic`` on the tiny BEIR fixture with a
tiny random T5, one prompt per batch, killed with SIGKILL (no handler, no cleanup: as a pre-empted
job or the out-of-memory killer would) after 1 to 3 new part files, inside a batch, between batches or
during a part file's atomic write: the process kills itself there (``core.interrupt.HOOK_ENV``), so no
kill races the machine's speed. Attempts are forked from the test process rather than started as fresh interpreters: the
process boundary is the same, and each attempt skips 5 to 25 s of importing torch and Lightning.
About 15 s on two CPU cores.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from datamodules.beir import load_beir
from helpers import make_tiny_t5, one_thread, sigkill_then_resume  # noqa: F401 (a fixture)
from lightning_modules.decoding import DecodingConfig
from pipeline.generate import generate_synthetic

TINY_BEIR = Path(__file__).resolve().parent / "data" / "tiny_beir"
DECODING = DecodingConfig(num_samples=2, max_new_tokens=12, seed=7)
pytestmark = pytest.mark.usefixtures("one_thread")


def generate(model: Path, output: Path, batch_size: int = 1) -> Path:
    return generate_synthetic(load_beir(TINY_BEIR), str(model), decoding=DECODING, output=output,
                              batch_size=batch_size, progress=False)


@pytest.mark.slow
def test_sigkill_five_times_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    model = make_tiny_t5(tmp_path / "t5")
    reference = generate(model, tmp_path / "reference" / "stage1.jsonl", batch_size=4)

    output = tmp_path / "run" / "stage1.jsonl"
    sigkill_then_resume(functools.partial(generate, model, output), output, "*/rank*.jsonl")
    assert output.read_bytes() == reference.read_bytes()  # nothing missing, nothing twice, the same texts
