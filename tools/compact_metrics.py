"""Rewrite the metrics.csv of complete runs at the writer's precision (ntng.training.records.METRIC_DIGITS).

Records written before metric cells were rounded hold full float reprs; this brings them to the form the writer
now produces, so a committed tree holds one format and stays small. A running run is left alone (its writer is
appending), and so is a damaged file.

    python tools/compact_metrics.py results/cpu [more directories...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ntng.training.records import Unreadable, compact_metrics


def main(roots: list[str]) -> int:
    if not roots:
        print("usage: python tools/compact_metrics.py DIR [DIR ...]", file=sys.stderr)
        return 2
    changed = before = after = 0
    for root in roots:
        if not Path(root).is_dir():
            print(f"compact_metrics: no directory {root}", file=sys.stderr)
            return 2
        for summary in sorted(Path(root).rglob("summary.json")):
            try:
                complete = json.loads(summary.read_text()).get("status") == "complete"
            except (OSError, ValueError):
                complete = False
            metrics = summary.with_name("metrics.csv")
            if not complete or not metrics.exists():
                continue
            size = metrics.stat().st_size
            try:
                changed += compact_metrics(metrics)
            except Unreadable as exc:
                print(f"compact_metrics: left alone {metrics.parent}: {exc.reason}", file=sys.stderr)
                continue
            before, after = before + size, after + metrics.stat().st_size
    print(f"compact_metrics: {changed} files rewritten, {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
