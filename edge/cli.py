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
    analyze = commands.add_parser(
        "analyze", help="offline analysis of DICOM files and folders, one result per series")
    analyze.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    analyze.add_argument("--backend", default="torch",
                         choices=["auto", "onnxruntime", "tensorrt", "torch"])
    analyze.add_argument("--json", action="store_true", help="print one JSON object")
    analyze.add_argument("--zoo", type=Path, help="model folder (default: the shipped zoo)")
    analyze.add_argument("--config", type=Path, help="TOML config (reader limits)")
    analyze.set_defaults(handler=_analyze)

    train = commands.add_parser(
        "train", help="train a detection model",
        description="Train on DICOM series with mask.npz (as `scanside synth` writes them) "
                    "or a Medical Segmentation Decathlon folder. Under torchrun it trains "
                    "data-parallel (DDP).")
    train.add_argument("--data", type=Path, nargs="+", required=True)
    train.add_argument("--modality", required=True, choices=["CT", "MR", "PT"])
    train.add_argument("--out", type=Path, required=True, help="checkpoints and curves")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--steps-per-epoch", type=int, default=100)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--crop", type=int, help="training crop (default per modality)")
    train.add_argument("--learning-rate", type=float, default=2e-3)
    train.add_argument("--base-channels", type=int, default=8)
    train.add_argument("--depth", type=int, default=5)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    train.add_argument("--workers", type=int, default=2, help="processes preparing cases")
    train.add_argument("--init-encoder", type=Path, help="checkpoint whose encoder to start from")
    train.add_argument("--freeze-encoder-epochs", type=int, default=0)
    train.add_argument("--tumour-labels", type=int, nargs="+",
                       help="Decathlon label values that are tumour (default: by name)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "eval", help="lesion- and series-level performance on series with ground truth")
    evaluate.add_argument("--data", type=Path, nargs="+", required=True,
                          help="folders of series with truth.json and mask.npz")
    evaluate.add_argument("--model", type=Path, help="checkpoint (default: the zoo's)")
    evaluate.add_argument("--zoo", type=Path, help="model folder (default: the shipped zoo)")
    evaluate.add_argument("--out", type=Path, required=True, help="eval.json, eval.md, froc.png")
    evaluate.set_defaults(handler=_eval)

    synth = commands.add_parser(
        "synth", help="write synthetic CT, MR or PET series with ground truth",
        description="Synthetic patients scanned as DICOM series: one folder per series with "
                    "its DICOM files, truth.json (lesions in patient coordinates) and "
                    "mask.npz (lesion ids per voxel).")
    synth.add_argument("--modality", required=True, choices=["CT", "MR", "PT"])
    synth.add_argument("--cases", type=int, required=True, help="number of series")
    synth.add_argument("--seed", type=int, required=True, help="case k uses (seed, k)")
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--first-case", type=int, default=0, help="index of the first case")
    synth.add_argument("--workers", type=int, default=1, help="parallel processes")
    synth.set_defaults(handler=_synth)
    return parser


def _needs_torch(command: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ScansideError(f"`scanside {command}` needs PyTorch: install the train extra "
                            "(pip install 'scanside[train]')") from None


def _open_backend(kind: str, modality: str, zoo: Path | None):
    """The backend for one modality's shipped model (torch for now; ONNX Runtime and
    TensorRT join with the exported models)."""
    from edge.inference.zoo import DEFAULT_ZOO, model_file

    if kind not in ("torch", "auto"):
        raise ScansideError(f"backend {kind!r} is not available yet: use --backend torch")
    _needs_torch("analyze")
    from models.torch_backend import TorchBackend

    return TorchBackend(model_file(zoo or DEFAULT_ZOO, modality, "model.pt"))


def _analyze(args: argparse.Namespace) -> int:
    from edge.config import load_config
    from edge.errors import ModelError
    from edge.inference.series import analyze_series
    from edge.survey import collect

    found = collect(args.paths, load_config(args.config), keep_pixels=True)
    backends: dict = {}
    results = []
    for uid in sorted(found.slices):
        modality = found.series[uid].modality
        if modality not in backends:
            try:
                backends[modality] = _open_backend(args.backend, modality, args.zoo)
            except ModelError as error:
                logging.getLogger("scanside").warning("%s", error)
                backends[modality] = None
        results.append(analyze_series(found.slices[uid], backends[modality]))
    for backend in filter(None, backends.values()):
        backend.close()
    if args.json:
        json.dump({"series": [r.to_json() for r in results],
                   "rejected": [{"path": p, "reason": r} for p, r in found.rejected]},
                  sys.stdout, indent=2)
        print()
        return 0
    for r in results:
        lesions = ", ".join(f"{f.diameter_mm:.0f} mm at "
                            f"({', '.join(f'{c:.0f}' for c in f.center_mm)}) "
                            f"p={f.probability:.2f}" for f in r.findings)
        print(f"{r.modality:<3} {r.series_uid}  {r.status.upper()}  {lesions or ''}"
              f"{'  ' + r.reason if r.reason and r.status == 'failed' else ''}")
    return 0


def _train(args: argparse.Namespace) -> int:
    _needs_torch("train")
    from models.network import NetworkConfig
    from models.train import TrainConfig, train

    best = train(TrainConfig(
        modality=args.modality, data=tuple(args.data), out=args.out,
        network=NetworkConfig(base_channels=args.base_channels, depth=args.depth),
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
        crop=args.crop, learning_rate=args.learning_rate, seed=args.seed, device=args.device,
        workers=args.workers, init_encoder=args.init_encoder,
        freeze_encoder_epochs=args.freeze_encoder_epochs, resume=args.resume,
        tumour_labels=tuple(args.tumour_labels) if args.tumour_labels else None))
    if best is not None:
        print(f"best model: {best}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    _needs_torch("eval")
    from edge.inference.zoo import DEFAULT_ZOO, model_file
    from models.evaluate import evaluate, write_report
    from models.torch_backend import TorchBackend

    folders = sorted(f for root in args.data for f in (
        [root] if (root / "truth.json").exists() else root.iterdir())
        if (f / "truth.json").exists())
    by_modality: dict[str, list[Path]] = {}
    for folder in folders:
        modality = json.loads((folder / "truth.json").read_text())["modality"]
        by_modality.setdefault(modality, []).append(folder)
    if not by_modality:
        raise ScansideError(f"no series with truth.json under {', '.join(map(str, args.data))}")
    results = {}
    for modality, group in sorted(by_modality.items()):
        checkpoint = args.model or model_file(args.zoo or DEFAULT_ZOO, modality, "model.pt")
        with TorchBackend(checkpoint) as backend:
            if backend.spec.modality != modality:
                raise ScansideError(f"{checkpoint} is a {backend.spec.modality} model; "
                                    f"the data hold {modality} series")
            results[modality] = evaluate(group, backend)
    report = write_report(results, args.out)
    print(report.table())
    print(f"written to {args.out}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from models.synthetic.series import synthesize

    folders = synthesize(args.modality, args.cases, args.seed, args.out, args.workers,
                         args.first_case)
    print(f"wrote {len(folders)} {args.modality} series to {args.out}")
    return 0


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
