"""Which floating-point precision a run computes in: bfloat16 where the hardware has it, float32 elsewhere.

Why detect instead of always using bf16: a CPU with ``avx512_bf16`` or AMX computes bfloat16 matrix
products natively (faster than float32), but one without them emulates bfloat16 through float32 and is
*slower* in it. GPUs: ``torch.cuda.is_bf16_supported()`` (Ampere and later). So the pipeline's
``trainer.precision`` accepts ``auto`` (the default), resolved once at start by :func:`resolve_precision`,
besides ``float32`` / ``bf16`` to force either and any precision string Lightning itself takes
(``32-true``, ``bf16-mixed``, ``bf16-true``...), passed through unchanged.

``auto`` and ``bf16`` resolve to ``bf16-mixed`` (bf16 matrix products under autocast, float32 weights and
reductions: the setting the GPU profiles already use for tuning, generation and embedding alike);
``float32`` to ``32-true``. The choice, with the evidence it rests on, is recorded by the caller
(:meth:`PrecisionChoice.record`) so a run says which precision made its outputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PRECISION_KEY = "precision"
AUTO = "auto"
ALIASES = {"float32": "32-true", "fp32": "32-true", "bf16": "bf16-mixed", "bfloat16": "bf16-mixed"}
FLOAT32_SETTINGS = frozenset({None, "32", "32-true", 32})
"""Lightning's spellings of plain float32 (its default when the key is absent)."""
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU features with native bfloat16 arithmetic (``/proc/cpuinfo`` and ``torch.cpu.get_capabilities`` names)."""
CPUINFO = Path("/proc/cpuinfo")
"""Read for the flags when torch is older than ``torch.cpu.get_capabilities`` (2.8)."""


@dataclass(frozen=True)
class PrecisionChoice:
    """A resolved precision: what was asked, what Lightning gets, and why."""

    setting: str  # as configured: auto, float32, bf16 or a Lightning string
    lightning: str  # what the Trainer receives, e.g. "32-true", "bf16-mixed"
    device: str  # "cpu" or "cuda"
    reason: str

    @property
    def dtype(self) -> str:
        """The compute dtype of matrix products: ``bfloat16``, ``float16`` or ``float32``."""
        if self.lightning.startswith("bf16"):
            return "bfloat16"
        return "float16" if self.lightning.startswith("16") else "float32"

    def record(self) -> dict[str, str]:
        return {**asdict(self), "dtype": self.dtype}


def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU computes bfloat16 natively, and the evidence (torch's own probe, else /proc/cpuinfo)."""
    try:
        import torch

        capabilities = dict(torch.cpu.get_capabilities())  # torch >= 2.8
        source = "torch.cpu.get_capabilities()"
    except (AttributeError, RuntimeError):
        capabilities, source = {flag: flag in _proc_cpuinfo_flags() for flag in CPU_BF16_FLAGS}, "/proc/cpuinfo"
    found = [flag for flag in CPU_BF16_FLAGS if capabilities.get(flag)]
    if found:
        return True, f"CPU has {' and '.join(found)} ({source})"
    return False, f"CPU has none of {', '.join(CPU_BF16_FLAGS)} ({source}): bfloat16 would be emulated, slower"


def _proc_cpuinfo_flags() -> set[str]:
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def cuda_bf16_support() -> tuple[bool, str]:
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device"
    name = torch.cuda.get_device_name(0)
    if torch.cuda.is_bf16_supported():
        return True, f"{name}: torch.cuda.is_bf16_supported()"
    return False, f"{name} lacks native bfloat16 (torch.cuda.is_bf16_supported() is False)"


def accelerator_device(accelerator: Any) -> str:
    """``cpu`` or ``cuda`` for a Trainer's ``accelerator`` setting (``auto``/absent: CUDA when available)."""
    name = str(accelerator or "auto").lower()
    if name in ("gpu", "cuda"):
        return "cuda"
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_precision(setting: Any, accelerator: Any = "auto") -> PrecisionChoice:
    """``auto`` -> ``bf16-mixed`` where the device computes bf16 natively, else ``32-true``; aliases mapped;
    other Lightning strings kept. An unknown device kind (mps, tpu...) resolves ``auto`` to float32."""
    device = accelerator_device(accelerator)
    text = AUTO if setting is None else str(setting)
    key = text.lower()
    if key in ALIASES:
        return PrecisionChoice(text, ALIASES[key], device, "forced by the configuration")
    if key != AUTO:
        return PrecisionChoice(text, text, device, "a Lightning precision, as configured")
    if device == "cuda":
        supported, evidence = cuda_bf16_support()
    elif device == "cpu":
        supported, evidence = cpu_bf16_support()
    else:
        supported, evidence = False, f"accelerator '{accelerator}': bf16 support not probed"
    return PrecisionChoice(AUTO, "bf16-mixed" if supported else "32-true", device, evidence)


def resolve_trainer_precision(trainer: dict[str, Any]) -> tuple[dict[str, Any], PrecisionChoice]:
    """A copy of a Trainer settings dict with ``precision`` resolved (absent counts as ``auto``)."""
    choice = resolve_precision(trainer.get(PRECISION_KEY), trainer.get("accelerator"))
    return {**trainer, PRECISION_KEY: choice.lightning}, choice


def precision_identity(trainer_kwargs: dict[str, Any] | None) -> dict[str, str]:
    """``{"precision": ...}`` for cache keys and stage fingerprints when outputs are not float32, else ``{}``.

    Empty for float32 so that results made before precision was recorded keep their keys (and are reused);
    any other precision changes the outputs slightly, so it must change the key.
    """
    value = (trainer_kwargs or {}).get(PRECISION_KEY)
    return {} if value in FLOAT32_SETTINGS else {PRECISION_KEY: str(value)}
