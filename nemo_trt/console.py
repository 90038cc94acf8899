"""Rich console shared by all commands: progress, tables, errors, JSON output."""
from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

from nemo_trt.errors import NemoTrtError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def report_error(exc: NemoTrtError) -> None:
    from rich.markup import escape

    # problem and fix are plain text: "[/DIR]" in a usage hint is not a closing tag
    err_console.print(f"[bold red]error:[/] {escape(exc.problem)}", markup=True, soft_wrap=True)
    if exc.fix:
        err_console.print(f"[bold]fix:[/] {escape(exc.fix)}", soft_wrap=True)


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()
