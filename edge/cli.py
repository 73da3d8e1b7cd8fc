"""The `scanside` command line: one entry point, one subcommand per job.

Subcommands that need torch (`models`) or the exporters (`export`) import them inside
their handler, so the appliance's own commands work on a box with the base install only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from edge import __version__
from edge.errors import ScansideError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except ScansideError as error:
        print(f"scanside {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scanside", description=(
        "Scanner-side tumour detection: watches a DICOM inbox, analyses each slice as it "
        "lands and publishes alerts over MQTT."))
    parser.add_argument("--version", action="version", version=f"scanside {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="the appliance")
    run.set_defaults(handler=_run)

    inspect = commands.add_parser(
        "inspect", help="read-only survey of DICOM files and folders",
        description="List the series found under PATH with modality, slice count, matrix, "
                    "spacing, completeness and geometry problems, and every file the "
                    "appliance would reject with the reason. Never moves or changes a file.")
    inspect.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.add_argument("--config", type=Path, help="TOML config (reader limits)")
    inspect.set_defaults(handler=_inspect)
    return parser


def _run(args: argparse.Namespace) -> int:
    print("scanside run: the streaming appliance is not built yet (issue 5). Today you can "
          "survey a folder of DICOM files with `scanside inspect PATH`.", file=sys.stderr)
    return 1


def _inspect(args: argparse.Namespace) -> int:
    from edge.config import load_config
    from edge.survey import survey

    report = survey(args.paths, load_config(args.config))
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        print()
        return 0
    for s in report.series:
        spacing = "x".join("?" if v is None else f"{v:g}" for v in s.spacing_mm)
        state = "complete" if s.complete else "incomplete"
        expected = f"/{s.expected_slices}" if s.expected_slices else ""
        print(f"{s.modality:<3} {s.series_uid}  {s.n_slices}{expected} slices  "
              f"{s.rows}x{s.columns}  {spacing} mm  {state}  {s.description}")
        for problem in s.problems:
            print(f"      ! {problem}")
    if report.rejected:
        print(f"rejected ({len(report.rejected)}):")
        for path, reason in report.rejected:
            print(f"  {path}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
