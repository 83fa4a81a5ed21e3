"""Write the README's "Results at a glance" from the run records (ntng.book.verdicts.glance), or check that it is current.

    python tools/make_readme.py            # rewrite the block in README.md
    python tools/make_readme.py --check    # exit 1 if the block is not what the records give

The README shows no number typed by hand: the block between its two markers is this script's output over
results/<preset> (the reference preset `cpu` by default), and tests/test_packaging.py fails when it is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START = "<!-- results at a glance: written by tools/make_readme.py from the records in results/cpu; do not edit by hand -->"
END = "<!-- end of results at a glance -->"


def render(readme: str, results: Path, preset: str) -> str:
    """`readme` with the block between START and END replaced by the glance over `results/<preset>`."""
    from ntng.book.verdicts import glance

    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{glance(results, preset)}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is not current")
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--preset", default="cpu")
    args = parser.parse_args(argv)
    path = ROOT / "README.md"
    current = path.read_text()
    if START not in current or END not in current:
        print(f"make_readme: {path} has lost its results markers", file=sys.stderr)
        return 1
    wanted = render(current, args.results, args.preset)
    if args.check:
        if wanted != current:
            print("make_readme: README.md's results are not what the records give: run tools/make_readme.py",
                  file=sys.stderr)
            return 1
        return 0
    path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
