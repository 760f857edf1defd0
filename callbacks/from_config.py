"""Lightning callbacks from a profile's ``callbacks:`` (``class_path``/``init_args``), for every loop.

Why jsonargparse: the ``fit`` command parses its ``trainer.callbacks`` with LightningCLI, which is
jsonargparse; parsing the prediction loops' callbacks the same way means one YAML entry means the same
thing in every loop (the pipeline keeps the entries as dicts, so tuning's CLI gets them as written) (a short class name such as ``LearningRateMonitor`` included), and an unknown class or
option is refused with the key and the reason before any stage runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jsonargparse import ArgumentParser
from lightning.pytorch import Callback

from core.io import InputError


def instantiate_callbacks(specs: Sequence[Any] | Mapping[str, Any] | Callback | None,
                          key: str = "callbacks") -> list[Callback]:
    """Fresh callbacks from ``specs``: ``{class_path, init_args}`` dicts (one, or a list) and ready instances.

    A new object per call: each Trainer gets its own (a callback keeps state between hooks).
    """
    if specs is None:
        return []
    items = [specs] if isinstance(specs, (Mapping, Callback)) else list(specs)
    ready = {i: item for i, item in enumerate(items) if isinstance(item, Callback)}
    to_parse = [item for i, item in enumerate(items) if i not in ready]
    built: list[Callback] = []
    if to_parse:
        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--callbacks", type=list[Callback])
        try:
            built = list(parser.instantiate(parser.parse_object({"callbacks": to_parse})).callbacks)
        except Exception as err:  # jsonargparse's ArgumentError, or an __init__ that refuses its arguments
            detail = " ".join(str(err).replace('Parser key "callbacks":', "").split())
            raise InputError(detail, field=key, hint="each entry: class_path, a lightning.pytorch.Callback "
                                                     "subclass; init_args, its arguments") from None
    parsed = iter(built)
    return [ready[i] if i in ready else next(parsed) for i in range(len(items))]
