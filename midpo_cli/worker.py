"""Entry point that a launcher (deepspeed / torchrun) runs in every process.

`python -m midpo_cli.worker --stage NAME --config resolved.yaml [--resume] [--local_rank N]`
runs one stage in-process with the resolved recipe that the launching command wrote.
Rank 0 alone writes artifacts (the engine decides); every rank runs the same stage function.
"""

from __future__ import annotations

import argparse
import os
import sys

from midpo_cli import console
from midpo_cli.errors import MidpoError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="midpo_cli.worker")
    parser.add_argument("--stage", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None)
    args = parser.parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if os.environ.get("RANK", "0") != "0":
        console.configure(quiet=True)
    console.hide_library_warnings()
    from midpo_cli.commands.stage_cmds import execute
    from midpo_cli.recipe import load_recipe

    try:
        execute(args.stage, load_recipe(args.config), resume=True, lock=False)  # the launcher holds the lock
    except MidpoError as exc:
        console.error(str(exc))
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
