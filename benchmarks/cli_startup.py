"""Wall time of `midpo --help` and `midpo recipe check` (fresh processes), against `python -c pass`.

Run: python benchmarks/cli_startup.py [--repeat 10]. Prints the medians and the ratio to a bare
interpreter start, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def median_wall(argv: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    if not recipe.exists():
        recipe = Path(tempfile.mkdtemp()) / "r.yaml"
        recipe.write_text("train:\n  lr: 1e-4\n")
    bare = median_wall([sys.executable, "-c", "pass"], args.repeat)
    helped = median_wall([sys.executable, "-m", "midpo_cli.cli", "--help"], args.repeat)
    check = median_wall([sys.executable, "-m", "midpo_cli.cli", "recipe", "check", str(recipe)], args.repeat)
    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}")
    print(f"python -c pass        {bare * 1000:7.0f} ms")
    print(f"midpo --help          {helped * 1000:7.0f} ms  ({helped / bare:.1f}x bare python)")
    print(f"midpo recipe check    {check * 1000:7.0f} ms  ({check / bare:.1f}x bare python)")


if __name__ == "__main__":
    main()
