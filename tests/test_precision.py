"""Precision: ``auto`` follows the hardware's native bfloat16, ``float32``/``bf16`` force either, and forced bf16
embeds the tiny fixture within cosine 0.999 of float32, recorded in the vector file and keyed apart from it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from helpers import make_tiny_bert, one_thread  # noqa: F401 (a fixture)
from lightning_modules import precision as precision_module
from lightning_modules.precision import (cpu_bf16_support, precision_identity, resolve_precision,
                                         resolve_trainer_precision)
from pipeline.embed import embed_texts
from retrieval.vectors import read_vector_metadata

WORDS = "cell protein gene tumour dose patient cohort risk mouse assay receptor signal kinase".split()


def _capabilities(monkeypatch: pytest.MonkeyPatch, **flags: bool) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_f": True, **flags})


@pytest.mark.parametrize(("flags", "expected"), [({}, "32-true"), ({"avx512_bf16": True}, "bf16-mixed"),
                                                 ({"amx_bf16": True, "amx_tile": True}, "bf16-mixed"),
                                                 ({"avx512_vnni": True}, "32-true")])
def test_auto_on_a_cpu_follows_native_bf16(monkeypatch: pytest.MonkeyPatch, flags: dict[str, bool],
                                           expected: str) -> None:
    _capabilities(monkeypatch, **flags)
    choice = resolve_precision("auto", "cpu")
    assert choice.lightning == expected and choice.device == "cpu"
    assert ("avx512_bf16" in choice.reason or "amx_bf16" in choice.reason)  # the evidence is named either way
    assert choice.record()["dtype"] == ("bfloat16" if expected.startswith("bf16") else "float32")


@pytest.mark.parametrize(("setting", "expected"), [("float32", "32-true"), ("bf16", "bf16-mixed"),
                                                   ("32-true", "32-true"), ("bf16-true", "bf16-true")])
def test_forced_settings_ignore_the_hardware(monkeypatch: pytest.MonkeyPatch, setting: str, expected: str) -> None:
    for flags in ({}, {"avx512_bf16": True}):
        _capabilities(monkeypatch, **flags)
        assert resolve_precision(setting, "cpu").lightning == expected


def test_absent_precision_is_auto_and_other_settings_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    _capabilities(monkeypatch, avx512_bf16=True)
    settings, choice = resolve_trainer_precision({"accelerator": "cpu", "devices": 1})
    assert settings == {"accelerator": "cpu", "devices": 1, "precision": "bf16-mixed"} and choice.setting == "auto"


def test_gpu_auto_uses_torch_cuda_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Some GPU")
    for supported, expected in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert resolve_precision("auto", "gpu").lightning == expected


def test_cpuinfo_fallback_when_torch_has_no_capabilities(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Older torch (before ``torch.cpu.get_capabilities``): the flags line of /proc/cpuinfo decides."""
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision_module, "CPUINFO", info)
    for flags, supported in (("fpu avx512f avx512_vnni", False), ("fpu avx512f avx512_bf16", True)):
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        found, evidence = cpu_bf16_support()
        assert found is supported and "/proc/cpuinfo" in evidence


def test_precision_identity_is_empty_for_float32_only() -> None:
    for value in (None, "32", "32-true"):
        assert precision_identity({"precision": value}) == {}
    assert precision_identity({}) == {} and precision_identity(None) == {}
    assert precision_identity({"precision": "bf16-mixed"}) == {"precision": "bf16-mixed"}


@pytest.mark.usefixtures("one_thread")
def test_forced_bf16_embeds_within_cosine_0999_and_is_recorded(tmp_path: Path) -> None:
    encoder = str(make_tiny_bert(tmp_path / "bert"))
    rng = random.Random(0)
    items = [(f"d{i}", " ".join(rng.choices(WORDS, k=rng.randint(3, 80)))) for i in range(40)]
    cpu = {"accelerator": "cpu", "devices": 1}
    output = tmp_path / "vectors.safetensors"
    _, float32 = embed_texts(items, encoder, output, batch_size=16, progress=False,
                             trainer_kwargs={**cpu, "precision": "32-true"})
    assert read_vector_metadata(output)["precision"] == "32-true"
    _, bf16 = embed_texts(items, encoder, output, batch_size=16, progress=False,  # same file: not reused
                          trainer_kwargs={**cpu, "precision": resolve_precision("bf16", "cpu").lightning})
    assert read_vector_metadata(output)["precision"] == "bf16-mixed"
    cosine = torch.nn.functional.cosine_similarity(float32, bf16, dim=-1)
    assert not torch.equal(float32, bf16)  # bf16 really ran (its rounding shows)
    assert float(cosine.min()) >= 0.999
