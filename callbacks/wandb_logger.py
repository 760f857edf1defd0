"""A WandbLogger that never needs the network unless the user has given W&B a key.

Why: runs go to clusters without internet and to laptops without a W&B account. Lightning's
``WandbLogger`` defaults to online, so ``wandb.init`` would ask for a login or retry its upload for
minutes. Here the mode is chosen once, when the logger is made:

1. ``offline: true/false`` (or wandb's own ``mode``) in the config, when given;
2. else ``WANDB_MODE`` from the environment (``offline``, ``online``, ``disabled``), when set;
3. else online when an API key exists (``WANDB_API_KEY``, or a ``~/.netrc`` / ``$NETRC`` entry for the
   W&B host, which ``wandb login`` writes), offline otherwise.

An offline run lives in ``<save_dir>/wandb/offline-run-*``; ``wandb sync <that folder>`` uploads it later.
Run name and group come from the config or, when unset, from ``WANDB_NAME`` / ``WANDB_RUN_GROUP``
(``wandb.init`` reads them), so a launcher script can label runs without editing YAML.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "selfinstruct-retrieval"


def wandb_api_key_available() -> bool:
    """True when ``WANDB_API_KEY`` is set or the netrc file holds a password for the W&B API host."""
    if os.environ.get("WANDB_API_KEY", "").strip():
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if not path.is_file():
        return False
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError) as err:
        log.warning("cannot read %s (%s); treating W&B as having no API key (offline)", path, err)
        return False
    return entry is not None and bool(entry[2])


def choose_wandb_mode(offline: bool | None) -> Literal["offline", "online"] | None:
    """The ``mode`` for ``wandb.init``: None leaves the choice to ``WANDB_MODE`` (see the module docstring)."""
    if offline is not None:
        return "offline" if offline else "online"
    if os.environ.get("WANDB_MODE", "").strip():
        return None
    return "online" if wandb_api_key_available() else "offline"


class OfflineFirstWandbLogger(WandbLogger):
    """``WandbLogger`` that is offline unless a W&B API key (or an explicit setting) says otherwise."""

    def __init__(self, name: str | None = None, save_dir: str = ".", project: str | None = None,
                 group: str | None = None, offline: bool | None = None, version: str | None = None,
                 tags: list[str] | None = None, log_model: bool = False, **kwargs: Any) -> None:
        """
        Args:
            name: run name; null: ``WANDB_NAME`` or W&B's generated name.
            save_dir: folder for ``wandb/`` (a relative path is taken inside the fit run directory).
            project: W&B project; null: ``WANDB_PROJECT`` or "selfinstruct-retrieval".
            group: run group (e.g. one pipeline run's stages); null: ``WANDB_RUN_GROUP``.
            offline: force offline (true) or online (false); null: decide as the module docstring says.
            version: a W&B run id to resume.
            tags: W&B tags.
            log_model: upload checkpoints as artifacts (online only).
        """
        # jsonargparse lists every wandb.init argument under **kwargs; unset ones keep WandbLogger's defaults
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        explicit_mode = kwargs.pop("mode", None)
        mode = explicit_mode if explicit_mode is not None and offline is None else choose_wandb_mode(offline)
        if log_model and (mode == "offline" or (mode is None and os.environ["WANDB_MODE"] != "online")):
            raise ValueError("log_model uploads checkpoints, which an offline W&B run cannot do; set log_model: "
                             "false or give W&B an API key (wandb login) and offline: false")
        project = project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        # read here, not left to wandb: its settings singleton may have read the environment earlier in the process
        name = name or os.environ.get("WANDB_NAME") or None
        group = group or os.environ.get("WANDB_RUN_GROUP") or None
        if mode is not None:
            kwargs["mode"] = mode  # passed to wandb.init; unlike offline=True it leaves os.environ alone
        super().__init__(name=name, save_dir=save_dir, project=project, version=version, offline=False,
                         log_model=log_model, group=group, tags=tags, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)  # wandb warns that the (deprecated) setting has no effect
        self.mode = mode or os.environ["WANDB_MODE"]
        rank_zero_info(f"W&B logging {self.mode}" + (" (no API key found; `wandb sync` uploads later)"
                                                     if mode == "offline" and offline is None else ""))

    def finalize(self, status: str) -> None:
        """Close the W&B run so its files are complete (and an offline run can be synced) when fit ends."""
        super().finalize(status)
        if self._experiment is not None and hasattr(self._experiment, "finish"):
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None
