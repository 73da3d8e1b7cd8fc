"""`python -m benchmarks SUITE...`: run benchmark suites and report them.

Benchmarks are not tests: they measure and report, each figure beside its baseline from
the same run and its target. `make bench` runs every suite and writes
benchmarks/results/<date>-<host>.json, .md (summary) and .png (chart); a subset of suites
writes <date>-<host>-<suites>.*. BENCHMARKS.md explains every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.common import RESULTS, record_for
from benchmarks.report import write

SUITES = ("ingest", "backends", "analysis", "streaming", "mqtt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("suites", nargs="*", default=["all"], choices=[*SUITES, "all"])
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modality", default="CT", choices=["CT", "MR", "PT"])
    parser.add_argument("--zoo", type=Path, default=None, help="model folder")
    parser.add_argument("--engines", type=Path, help="TensorRT engine folder (GPU box)")
    args = parser.parse_args(argv)
    suites = SUITES if "all" in args.suites else args.suites
    if args.zoo is None:
        from edge.inference.zoo import DEFAULT_ZOO

        args.zoo = DEFAULT_ZOO
    record = record_for(suites)
    stem = record["stem"] if "all" in args.suites else f"{record['stem']}-{'-'.join(suites)}"
    for suite in suites:
        if suite == "ingest":
            from benchmarks import ingest

            results = ingest.run(repeats=args.repeats)
        elif suite == "backends":
            from benchmarks import backends

            args.out.mkdir(parents=True, exist_ok=True)
            results = backends.run(args.modality, args.zoo, engines=args.engines,
                                   chart=args.out / f"{stem}-backends-{args.modality}.png")
        elif suite == "analysis":
            from benchmarks import analysis

            results = analysis.run(args.zoo)
        elif suite == "streaming":
            from benchmarks import streaming

            results = streaming.run(args.zoo, runs=args.repeats)
        elif suite == "mqtt":
            from benchmarks import mqtt

            results = mqtt.run()
        record["suites"][suite] = results
        print(json.dumps(results, indent=2))
    paths = write(record, args.out, stem)
    print(paths[1].read_text())
    print("written: " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
