"""The `scanside` command line: one entry point, one subcommand per job.

Subcommands that need torch (`models`) or the exporters (`export`) import them inside
their handler, so the appliance's own commands work on a box with the base install only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from edge import __version__
from edge.errors import ScansideError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:       # the benchmark runner parses its own arguments
        return _bench(argparse.Namespace(rest=argv[1:]))
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:            # the embedded broker's state machine logs every step
        for chatty in ("transitions", "amqtt"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
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

    _appliance_commands(commands)
    _train_command(commands)
    _evaluation_commands(commands)
    _export_commands(commands)
    _synth_command(commands)
    return parser


def _appliance_commands(commands: argparse._SubParsersAction) -> None:
    """The appliance and what runs beside it: play series into it, follow its alerts,
    inspect a file, analyse series in one go."""
    run = commands.add_parser(
        "run", help="the appliance: watch the inbox, analyse slices as they land, publish",
        description="Run the appliance until SIGTERM. The options override the config.")
    run.add_argument("--config", type=Path, help="TOML config (see edge/default.toml)")
    run.add_argument("--inbox", type=Path, help="folder the scanner writes to")
    run.add_argument("--state-dir", type=Path, help="journal, outbox, quarantine")
    run.add_argument("--broker", help="mqtt://HOST[:PORT] or mqtts://...; none: embedded")
    run.add_argument("--topic-prefix", help="default scanside/<appliance id>")
    run.add_argument("--listen", help="status page HOST:PORT (default 127.0.0.1:8080)")
    run.set_defaults(handler=_run)

    simulate = commands.add_parser(
        "simulate-scanner", help="play DICOM series into an inbox at scanner pace")
    simulate.add_argument("--inbox", type=Path, required=True)
    simulate.add_argument("--from", dest="sources", type=Path, nargs="*", default=[],
                          help="series folders, or folders of them (default: synthesize)")
    simulate.add_argument("--modality", choices=["CT", "MR", "PT"], default="PT",
                          help="what to synthesize when no --from is given")
    simulate.add_argument("--cases", type=int, default=2)
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument("--rate", type=float, default=10.0, help="slices per second")
    simulate.add_argument("--order", choices=["ascending", "descending", "shuffled"],
                          default="ascending")
    simulate.add_argument("--pause", type=float, default=2.0, help="seconds between series")
    simulate.set_defaults(handler=_simulate)

    listen = commands.add_parser("subscribe", help="print alerts and results as they arrive")
    listen.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    listen.add_argument("--topic-prefix", default="scanside/+")
    listen.add_argument("--count", type=int, help="stop after this many messages")
    listen.add_argument("--json", action="store_true")
    listen.set_defaults(handler=_subscribe)

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
    analyze.add_argument("--backend", default="auto",
                         choices=["auto", "onnxruntime", "tensorrt", "torch"])
    analyze.add_argument("--engines", type=Path, help="TensorRT engine folder")
    analyze.add_argument("--json", action="store_true", help="print one JSON object")
    analyze.add_argument("--zoo", type=Path, help="model folder (default: the shipped zoo)")
    analyze.add_argument("--config", type=Path, help="TOML config (reader limits)")
    analyze.set_defaults(handler=_analyze)


def _train_command(commands: argparse._SubParsersAction) -> None:
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
    train.add_argument("--input-size", type=int, metavar="PIXELS",
                       help="network input, pixels a side (default per modality, or the "
                            "fine-tuned model's)")
    train.add_argument("--pixel-mm", type=float, metavar="MM",
                       help="pixel spacing each slice is resampled to (default per "
                            "modality, or the fine-tuned model's)")
    train.add_argument("--learning-rate", type=float, default=2e-3)
    train.add_argument("--base-channels", type=int, default=8)
    train.add_argument("--depth", type=int, default=5)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    train.add_argument("--workers", type=int, default=2, help="processes preparing cases")
    train.add_argument("--init-encoder", type=Path, help="checkpoint whose encoder to start from")
    train.add_argument("--init-weights", type=Path, metavar="CHECKPOINT",
                       help="fine-tune: start from every weight of a model of the same "
                            "modality (its network size and input replace --base-channels "
                            "and --depth), with a fresh optimiser and learning-rate schedule")
    train.add_argument("--freeze-encoder-epochs", type=int, default=0)
    train.add_argument("--tumour-labels", type=int, nargs="+",
                       help="Decathlon label values that are tumour (default: by name)")
    train.add_argument("--resume", action="store_true",
                       help="continue from OUT/last.pt with the network and input it began "
                            "with (a fresh run while there is none)")
    train.add_argument("--balance-lesions-mm2", type=float, default=0.0, metavar="AREA",
                       help="weigh each lesion on a slice smaller than AREA mm2 in the "
                            "cross-entropy as if it had that area (at most 25x; default 0: "
                            "every lesion voxel weighs the same)")
    train.add_argument("--sample-by-lesion", action="store_true",
                       help="centre positive crops on each lesion as often as on any other "
                            "(default: on lesion voxels, so large lesions most often)")
    train.add_argument("--favour-faint", type=float, default=0.0, metavar="SD",
                       help="sample by lesion, drawing a lesion that stands out from its "
                            "surroundings in the network input by less than SD standard "
                            "deviations SD/contrast times as often (at most 4x; default 0: "
                            "off)")
    train.add_argument("--hard-negatives", type=float, default=0.0, metavar="SHARE",
                       help="centre this share of crops on spots where the network marks a "
                            "lesion that is not there, found again before every epoch by "
                            "running it over the training slices (default 0: off)")
    train.add_argument("--favour-missed", type=float, default=0.0, metavar="W",
                       help="sample by lesion, drawing a lesion the network misses (no "
                            "voxel at 0.5 or more, found again before every epoch as the "
                            "hard negatives are) W times as often (default 0: off)")
    train.add_argument("--mr-weighting", action="store_true",
                       help="MR: give the network a second input channel saying whether "
                            "the echo and repetition times weight a slice by T1 or T2")
    train.add_argument("--context-slices", type=int, metavar="K",
                       help="2.5D: show the network K neighbouring slices on each side as "
                            "extra input channels (default: the fine-tuned model's, else 0). "
                            "Fine-tuning a 2D model this way starts the neighbours' weights "
                            "at zero, so it begins as the model it starts from")
    train.set_defaults(handler=_train)


def _evaluation_commands(commands: argparse._SubParsersAction) -> None:
    """Judging a model on series with ground truth, choosing its operating point, mixing two."""
    evaluate = commands.add_parser(
        "eval", help="lesion- and series-level performance on series with ground truth")
    evaluate.add_argument("--data", type=Path, nargs="+", required=True,
                          help="folders of series with truth.json and mask.npz")
    evaluate.add_argument("--model", type=Path, help="checkpoint (default: the zoo's)")
    evaluate.add_argument("--zoo", type=Path, help="model folder (default: the shipped zoo)")
    evaluate.add_argument("--out", type=Path, required=True, help="eval.json, eval.md, froc.png")
    evaluate.add_argument("--overlays", action="store_true",
                          help="also a PNG of each missed lesion and false positive in "
                               "OUT/overlays: the network input, the probability as heat, "
                               "the model's outline in green, the true lesions' in cyan")
    _backend_option(evaluate)
    evaluate.set_defaults(handler=_eval)

    calibrate = commands.add_parser(
        "calibrate", help="choose a model's operating point on a calibration set",
        description="Sweep the pixel and detection thresholds and minimum lesion volume on "
                    "series with truth.json (neither training nor held-out data), pick the "
                    "most sensitive point within the limits, write it into a copy of the "
                    "model.")
    calibrate.add_argument("--data", type=Path, nargs="+", required=True)
    calibrate.add_argument("--model", type=Path, required=True, help="checkpoint to calibrate")
    calibrate.add_argument("--out", type=Path, required=True, help="calibrated checkpoint")
    calibrate.add_argument("--max-fp", type=float, default=0.4, help="false positives per scan")
    calibrate.add_argument("--min-specificity", type=float, default=0.9,
                           help="series-level; met when the specificity's lower bound is")
    calibrate.add_argument("--specificity-se", type=float, default=1.0,
                           help="standard errors below the specificity measured that its "
                                "lower bound lies (Wilson score); 0 compares the figure itself")
    calibrate.add_argument("--no-companion", action="store_true",
                           help="sweep no companion threshold: every finding must reach the "
                                "detection threshold itself, so no series' faint findings "
                                "hang on the one score that triggers them")
    calibrate.add_argument("--mirror", action=argparse.BooleanOptionalAction,
                           help="infer each slice and its left-right mirror and average the "
                                "two (twice the network's cost), calibrated so and written "
                                "into the model; --no-mirror turns it off (default: as the "
                                "model has it)")
    _backend_option(calibrate)
    calibrate.set_defaults(handler=_calibrate)

    average = commands.add_parser(
        "average", help="average the weights of a model and a fine-tune of it",
        description="(1 - W) x FIRST + W x SECOND, weight by weight: one network's cost, "
                    "and it can do better than either. The models must share their network and "
                    "input; the result keeps FIRST's spec, so calibrate it again.")
    average.add_argument("first", type=Path)
    average.add_argument("second", type=Path)
    average.add_argument("--weight", type=float, default=0.5, help="SECOND's share")
    average.add_argument("--out", type=Path, required=True, help="averaged checkpoint")
    average.add_argument("--across-grids", action="store_true",
                         help="allow the two to differ in input grid (size, pixel spacing), as "
                              "a fine-tune moved to a new grid and its starting point do; "
                              "the result runs on FIRST's grid")
    average.set_defaults(handler=_average)


def _export_commands(commands: argparse._SubParsersAction) -> None:
    """From checkpoint to engine, each step checked for parity; and the benchmarks."""
    export = commands.add_parser("export", help="ONNX, FP16 ONNX, TensorRT engine, Triton")
    steps = export.add_subparsers(dest="step", required=True, metavar="STEP")
    step = steps.add_parser("onnx", help="checkpoint -> ONNX FP32, parity against torch "
                                         "(a model that fails it is deleted)")
    step.add_argument("--model", type=Path, required=True, help="torch checkpoint")
    step.add_argument("--out", type=Path, required=True)
    step.add_argument("--data", type=Path, nargs="*", default=[], help="parity series")
    step.set_defaults(handler=_export_onnx)
    step = steps.add_parser("fp16", help="ONNX FP32 -> FP16, parity against FP32 on CPU "
                                         "(a model that fails it is deleted)")
    step.add_argument("--onnx", type=Path, required=True)
    step.add_argument("--out", type=Path, required=True)
    step.add_argument("--data", type=Path, nargs="*", default=[], help="parity series")
    step.set_defaults(handler=_export_fp16)
    step = steps.add_parser("engine", help="FP16 ONNX -> TensorRT engine on this GPU box")
    step.add_argument("--onnx", type=Path, help="FP16 ONNX (default: each zoo modality's)")
    step.add_argument("--zoo", type=Path, help="model folder (default: the shipped zoo)")
    step.add_argument("--engines", type=Path, required=True, help="engine folder")
    step.add_argument("--if-needed", action="store_true",
                      help="rebuild only when the manifest does not match this box")
    step.add_argument("--max-batch", type=int, default=16)
    step.add_argument("--workspace-mb", type=int, default=2048)
    step.add_argument("--timing-cache", type=Path, help="reused across builds")
    step.add_argument("--data", type=Path, nargs="*", default=[], help="parity series")
    step.set_defaults(handler=_export_engine)
    step = steps.add_parser("triton", help="a Triton Inference Server model repository")
    step.add_argument("--onnx", type=Path, required=True)
    step.add_argument("--engine", type=Path, help="serve this plan instead of the ONNX")
    step.add_argument("--out", type=Path, required=True, help="repository folder")
    step.add_argument("--max-batch", type=int, default=32)
    step.set_defaults(handler=_export_triton)

    commands.add_parser(
        "bench", help="benchmark suites (ingest, backends, analysis, streaming, mqtt); "
                      "results in benchmarks/results (scanside bench --help)")


def _synth_command(commands: argparse._SubParsersAction) -> None:
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
    synth.add_argument("--faint", type=float, default=0.0, metavar="SHARE",
                       help="for training sets: draw this share of lesions barely above their "
                            "organ (PET uptake 1.2-2 times the organ's; CT and MR solid "
                            "lesions at the low end of their contrast); default 0")
    synth.add_argument("--small", type=float, default=0.0, metavar="SHARE",
                       help="for training sets: draw this share of lesions 4-10 mm across "
                            "(the rest 4-40 mm); default 0")
    synth.add_argument("--bright", type=float, metavar="SHARE",
                       help="for training sets: draw this share of CT solid lesions brighter "
                            "than their organ (the rest darker); default 0.35")
    synth.add_argument("--t1", type=float, metavar="SHARE",
                       help="for training sets: draw this share of MR series T1-weighted (the "
                            "rest T2); default 0.45")
    synth.add_argument("--without-lesions", action="store_true",
                       help="for calibration sets: every patient without a lesion (a quarter "
                            "are, by default), so the specificity limit rests on many")
    synth.set_defaults(handler=_synth)


def _needs_torch(command: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ScansideError(f"`scanside {command}` needs PyTorch: install the train extra "
                            "(pip install 'scanside[train]')") from None


def _open_backend(kind: str, modality: str, zoo: Path | None, engines: Path | None = None):
    """The backend for one modality's model: torch from the checkpoint, or what
    `edge.backends.select` chooses among TensorRT and ONNX Runtime."""
    from edge.backends.select import choose, open_backend, probe
    from edge.inference.zoo import DEFAULT_ZOO, model_file

    zoo = zoo or DEFAULT_ZOO
    if kind == "torch":
        _needs_torch("analyze --backend torch")
        from models.torch_backend import TorchBackend

        return TorchBackend(model_file(zoo, modality, "model.pt"))
    model_file(zoo, modality, "model.onnx")          # a clear error when the model is absent
    return open_backend(choose(kind, zoo / modality, engines, probe()))


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
                backends[modality] = _open_backend(args.backend, modality, args.zoo,
                                                   args.engines)
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
        crop=args.crop, input_size=args.input_size, pixel_mm=args.pixel_mm,
        learning_rate=args.learning_rate, seed=args.seed, device=args.device,
        workers=args.workers, init_encoder=args.init_encoder, init_weights=args.init_weights,
        freeze_encoder_epochs=args.freeze_encoder_epochs, resume=args.resume,
        balance_lesions_mm2=args.balance_lesions_mm2, sample_by_lesion=args.sample_by_lesion,
        favour_faint_sd=args.favour_faint, hard_negative_fraction=args.hard_negatives,
        favour_missed=args.favour_missed,
        mr_weighting=args.mr_weighting, context_slices=args.context_slices,
        tumour_labels=tuple(args.tumour_labels) if args.tumour_labels else None))
    if best is not None:
        print(f"best model: {best}")
    return 0


def _truth_series(data: list[Path]) -> list[Path]:
    """The series folders with truth.json among `data`: each is one, or holds some."""
    for root in data:
        if not root.is_dir():
            raise ScansideError(f"{root}: no such folder")
    folders = sorted(f for root in data for f in (
        [root] if (root / "truth.json").exists() else root.iterdir())
        if (f / "truth.json").exists())
    if not folders:
        raise ScansideError(f"no series with truth.json under {', '.join(map(str, data))}")
    return folders


def _backend_option(command: argparse.ArgumentParser) -> None:
    from models.backend import BACKENDS

    command.add_argument("--backend", choices=BACKENDS, default=BACKENDS[0],
                         help="run the checkpoint in ONNX Runtime (default; on a CPU the "
                              "network runs about 3.5 times faster), in its own export beside "
                              "it (model.onnx by model.pt) or else a temporary FP32 export; "
                              "or in torch, the reference")


def _eval(args: argparse.Namespace) -> int:
    _needs_torch("eval")
    from edge.inference.zoo import DEFAULT_ZOO, model_file
    from models.backend import open_checkpoint
    from models.evaluate import evaluate, write_report

    by_modality: dict[str, list[Path]] = {}
    for folder in _truth_series(args.data):
        modality = json.loads((folder / "truth.json").read_text())["modality"]
        by_modality.setdefault(modality, []).append(folder)
    results = {}
    for modality, group in sorted(by_modality.items()):
        checkpoint = args.model or model_file(args.zoo or DEFAULT_ZOO, modality, "model.pt")
        with open_checkpoint(checkpoint, args.backend) as backend:
            if backend.spec.modality != modality:
                raise ScansideError(f"{checkpoint} is a {backend.spec.modality} model; "
                                    f"the data hold {modality} series")
            results[modality] = evaluate(group, backend, args.overlays)
    report = write_report(results, args.out)
    print(report.table())
    print(f"written to {args.out}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    _needs_torch("calibrate")
    from dataclasses import replace

    from models.backend import open_checkpoint
    from models.calibrate import COMPANION, calibrate

    folders = _truth_series(args.data)
    with open_checkpoint(args.model, args.backend) as backend:
        if args.mirror is not None:
            backend.spec = replace(backend.spec, mirror=args.mirror)
        report = calibrate(folders, args.model, args.out, backend, args.max_fp,
                           args.min_specificity, args.specificity_se,
                           () if args.no_companion else COMPANION)
    print(json.dumps(report["chosen"], indent=2))
    print(f"calibrated model: {args.out}")
    return 0


def _average(args: argparse.Namespace) -> int:
    _needs_torch("average")
    from models.checkpoint import average_checkpoints, save_checkpoint

    save_checkpoint(args.out, average_checkpoints(args.first, args.second, args.weight,
                                                  args.across_grids), slim=True)
    print(f"averaged model: {args.out} (calibrate it before use)")
    return 0


def _parity(reference, candidate, data: list[Path], tolerances, report_path: Path,
            drop: Path | None = None) -> int:
    """Compare two backends on the series under `data`; write the report; 1 if it fails,
    after deleting `drop` (the model just exported) so that nothing ships or builds it."""
    from export.parity import compare, write_report

    folders = sorted(f for root in data for f in ([root] if (root / "mask.npz").exists()
                                                  else root.iterdir())
                     if (f / "mask.npz").exists())
    if not folders:
        print("no parity series given (--data): parity not checked", file=sys.stderr)
        return 0
    report = compare(reference, candidate, folders, tolerances)
    write_report(report, report_path)
    print(json.dumps({k: report[k] for k in ("series", "max_abs_error", "reference_lesions",
                                             "reference_lesions_found", "dice_reference",
                                             "dice_candidate", "nan_or_inf", "passed")}))
    if not report["passed"]:
        print(f"parity FAILED: see {report_path}", file=sys.stderr)
        if drop is not None:
            drop.unlink()
            print(f"deleted {drop}: a model that fails parity is not kept", file=sys.stderr)
        return 1
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    _needs_torch("export onnx")
    from edge.backends.onnxruntime import OnnxRuntimeBackend
    from export.onnx_export import export_onnx
    from export.parity import TORCH_TO_ONNX
    from models.torch_backend import TorchBackend

    export_onnx(args.model, args.out)
    print(f"wrote {args.out}")
    with TorchBackend(args.model) as torch_model, \
            OnnxRuntimeBackend(args.out, ["CPUExecutionProvider"]) as onnx_model:
        return _parity(torch_model, onnx_model, args.data, TORCH_TO_ONNX,
                       args.out.with_name("onnx-parity.json"), drop=args.out)


def _export_fp16(args: argparse.Namespace) -> int:
    from edge.backends.onnxruntime import OnnxRuntimeBackend
    from export.onnx_export import convert_fp16
    from export.parity import FP32_TO_FP16

    convert_fp16(args.onnx, args.out)
    print(f"wrote {args.out}")
    with OnnxRuntimeBackend(args.onnx, ["CPUExecutionProvider"]) as fp32, \
            OnnxRuntimeBackend(args.out, ["CPUExecutionProvider"]) as fp16:
        return _parity(fp32, fp16, args.data, FP32_TO_FP16,
                       args.out.with_name("fp16-parity.json"), drop=args.out)


def _export_engine(args: argparse.Namespace) -> int:
    from edge.backends.manifest import EngineManifest
    from edge.backends.onnxruntime import OnnxRuntimeBackend
    from edge.backends.select import engine_files
    from edge.backends.tensorrt import TensorRTBackend
    from edge.inference.zoo import DEFAULT_ZOO
    from export.engine import ensure_engine, write_manifest
    from export.onnx_export import metadata
    from export.parity import Tolerances

    if args.onnx:
        sources = {json.loads(metadata(args.onnx)["scanside.spec"])["modality"]: args.onnx}
    else:
        zoo = args.zoo or DEFAULT_ZOO
        sources = {d.name: d / "model.fp16.onnx" for d in sorted(zoo.iterdir())
                   if (d / "model.fp16.onnx").exists()}
    status = 0
    for modality, onnx_path in sources.items():
        plan, manifest_path = engine_files(args.engines, modality)
        if not args.if_needed and plan.exists():
            plan.unlink()
        print(ensure_engine(onnx_path, args.engines, modality, max_batch=args.max_batch,
                            workspace_mb=args.workspace_mb, timing_cache=args.timing_cache))
        if args.data:
            manifest = EngineManifest.load(manifest_path)
            report_path = args.engines / f"{modality}.parity.json"
            with OnnxRuntimeBackend(onnx_path) as reference, \
                    TensorRTBackend(plan, manifest) as engine:
                status |= _parity(reference, engine, args.data, Tolerances(dice_ratio=0.999),
                                  report_path)
            write_manifest(manifest, manifest_path, json.loads(report_path.read_text()))
    return status


def _export_triton(args: argparse.Namespace) -> int:
    from export.triton import export_triton

    folder = export_triton(args.onnx, args.out, args.max_batch, args.engine)
    print(f"wrote {folder}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    try:
        from benchmarks.__main__ import main as bench_main
    except ImportError:
        raise ScansideError("the benchmarks are part of the source tree: run from a "
                            "checkout (make bench)") from None
    return bench_main(args.rest)


def _synth(args: argparse.Namespace) -> int:
    from models.synthetic.anatomy import TrainingMix
    from models.synthetic.series import synthesize

    for option, share in (("--faint", args.faint), ("--small", args.small),
                          ("--bright", args.bright), ("--t1", args.t1)):
        if share is not None and not 0 <= share <= 1:
            raise ScansideError(f"{option} {share}: expected a share between 0 and 1")
    mix = TrainingMix(args.faint, args.small, args.bright, args.t1)
    folders = synthesize(args.modality, args.cases, args.seed, args.out, args.workers,
                         args.first_case, mix, not args.without_lesions)
    print(f"wrote {len(folders)} {args.modality} series to {args.out}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from edge.appliance import Appliance
    from edge.config import load_config

    config = load_config(args.config, {
        "paths.inbox": args.inbox, "paths.state_dir": args.state_dir,
        "mqtt.broker": args.broker, "mqtt.topic_prefix": args.topic_prefix,
        "web.listen": args.listen})
    return Appliance(config).run()


def _simulate(args: argparse.Namespace) -> int:
    import tempfile

    from edge.simulator import play, series_files

    with tempfile.TemporaryDirectory(prefix="scanside-simulator-") as scratch:
        sources = [f for root in args.sources for f in (
            [root] if any(p.suffix == ".dcm" or p.name == "truth.json" for p in root.iterdir())
            else sorted(d for d in root.iterdir() if d.is_dir()))]
        if not sources:
            from models.synthetic.series import synthesize

            sources = synthesize(args.modality, args.cases, args.seed, Path(scratch))
        for n, folder in enumerate(sources):
            files = series_files(folder, args.order, args.seed)
            print(f"scanner: sending {folder.name} ({len(files)} slices at {args.rate:g}/s)",
                  flush=True)
            for _ in play(files, args.inbox, args.rate, folder.name):
                pass
            if n + 1 < len(sources):
                time.sleep(args.pause)
    return 0


def _subscribe(args: argparse.Namespace) -> int:
    from edge.subscribe import subscribe

    return subscribe(args.broker, args.topic_prefix, args.count, args.json)


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
