"""Summarise py-spy's collapsed stacks (``--profile`` of benchmarks.intake_throughput):
the functions with the most samples, inclusive (anywhere on the stack) and self (on top).

    .venv/bin/python -m benchmarks.intake_profile /tmp/prof/batch.txt [--top 40] [--match intake]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def summarise(path: Path, top: int, match: str | None) -> None:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
                  for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    print(f"{total} samples")
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"\n{title}:")
        shown = 0
        for frame, count in counter.most_common():
            if match and match not in frame:
                continue
            print(f"{count / total:6.1%}  {frame}")
            shown += 1
            if shown >= top:
                break


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("path", type=Path)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--match", default=None)
    args = parser.parse_args()
    summarise(args.path, args.top, args.match)
