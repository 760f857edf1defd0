#!/usr/bin/env python
"""The one entry point: ``python train.py <command> ...``; ``python train.py --help`` lists the commands.

    python train.py pipeline -c configs/profiles/demo.yaml            # every stage, finished ones skipped
    python train.py embed -c configs/profiles/demo.yaml               # one stage alone
    python train.py baselines --data.path ../shared/data/scifact      # BM25 + corpus-only dense
    python train.py fit -c configs/fit/selfinstruct.yaml              # LightningCLI: fit/validate/test/predict

The commands are the table in ``pipeline/commands.py``. Lightning's own subcommands go to LightningCLI;
the others are typed functions whose signatures jsonargparse turns into parsers, so the same composable
``-c`` YAML fragments (``class_path``/``init_args``) drive both.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from core.interrupt import RunInterrupted, stop_on_signals
from core.io import InputError, ModelNotAvailableError, OutputError
from pipeline.commands import COMMANDS, named_run_dir, run_command, usage
from pipeline.config_errors import located
from pipeline.run_lock import RunDirectoryInUse, check_free


def main(argv: Sequence[str] | None = None) -> Any:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return None
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command '{command}'\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    try:
        run_dir = named_run_dir(command, rest)
        if run_dir is not None:
            check_free(run_dir)  # a run directory in use refuses before the imports of torch and Lightning
        with stop_on_signals():  # SIGTERM/SIGINT: exit 143/130 (RunInterrupted) once the loop's writers flushed
            return run_command(command, rest)
    except RunInterrupted as err:
        print(f"stopped: {err}", file=sys.stderr)
        raise
    except (InputError, ModelNotAvailableError, OutputError, RunDirectoryInUse) as err:  # says where and what to do
        print(f"error: {located(err, rest) if isinstance(err, InputError) else err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
