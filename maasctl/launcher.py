"""The `maasctl` console entry point. `maasctl predict` goes straight to its own argparse command: CI scripts
call it many times, and skipping typer's start-up (which runs every parameter through pydantic) makes each
call noticeably faster. Everything else goes through the typer app."""

from __future__ import annotations

import sys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "predict":
        from maasctl.predict.command import main as predict_main

        sys.exit(predict_main(sys.argv[2:]))
    from maasctl.cli import main as cli_main

    cli_main()
