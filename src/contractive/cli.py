"""The ``contractive`` command: a parser builder and one thin function per subcommand.

Exit codes: 0 success; 1 training diverged (the run folder keeps its last good
checkpoint); 2 a user error (one line on stderr, no traceback, no run folder
left behind); 130 interrupted by Ctrl-C (a checkpoint was written first).

To add a subcommand: write ``add_<name>_parser(subparsers)`` that registers its
arguments and sets ``func=cmd_<name>``, and ``cmd_<name>(args) -> int``; list the
adder in ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path

from contractive import distributed, runs
from contractive.data import list_builtin_datasets
from contractive.experiment import (
    ANALYSIS_MAX_SAMPLES,
    SCALINGS,
    DivergedRun,
    InterruptedRun,
    TrainOptions,
    encode_file,
    evaluate_run,
    format_summary,
    resolve_device,
    resume_run,
    train_run,
)
from contractive.modules import ACTIVATIONS, DECODERS
from contractive.objective import LOSSES, PRESETS
from contractive.penalties import CORRUPTIONS
from contractive.training import OPTIMIZERS, PRECISIONS, check_precision

PROG = "contractive"
_DEFAULTS = {f.name: f.default for f in fields(TrainOptions)}
#: Flags that may accompany --resume (everything else comes from config.json).
_RESUME_FLAGS = {"out", "resume", "device", "epochs", "progress", "nproc"}


class UsageError(Exception):
    """A bad command line; its message is printed as one line (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise UsageError(message if self.prog == PROG else f"{self.prog}: {message}")


# ------------------------------------------------------------------ value types


def _number(
    kind: Callable[[str], float], test: Callable[[float], bool], what: str
) -> Callable[[str], float]:
    """An argparse type: ``kind(text)``, finite and passing ``test``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a positive number")
nonnegative_float = _number(float, lambda v: v >= 0, "a number >= 0")
fraction = _number(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")


def hidden_sizes(text: str) -> tuple[int, ...]:
    """``"64"`` or ``"256,64"`` -> tuple of positive ints."""
    try:
        return tuple(positive_int(part.strip()) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas, got {text!r}"
        ) from None


# ------------------------------------------------------------------ parsers


def _d(name: str) -> str:
    return f" (default: {_DEFAULTS[name]})"


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an autoencoder and write a run folder",
        description="Train an autoencoder; with no arguments, a CAE on the built-in "
        "digits data. Writes config.json, metrics.jsonl, checkpoints/, "
        "model.safetensors and summary.json to the run folder.",
        epilog="examples:\n  contractive train\n"
        "  contractive train --data mnist5k --hidden 256 --contraction 0.3\n"
        "  contractive train --data x.npy --model dae --out runs/x --epochs 50\n"
        "  contractive train --out runs/x --resume\n"
        "  contractive train --nproc 4 --data big.npy --batch-size 256\n"
        "  torchrun --nproc_per_node 4 -m contractive train --data big.npy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        metavar="NAME|PATH",
        help="built-in digits or mnist5k, or a .npy/.npz/.csv/IDX file or "
        "folder" + _d("data"),
    )
    g.add_argument(
        "--label-column",
        metavar="COL",
        help="CSV column (name or index) or .npz array holding labels",
    )
    g.add_argument("--scaling", choices=SCALINGS, help="input scaling" + _d("scaling"))
    g.add_argument(
        "--validation-fraction",
        type=fraction,
        metavar="F",
        help="rows held out for validation and early stopping"
        + _d("validation_fraction"),
    )
    g.add_argument(
        "--test-fraction",
        type=fraction,
        metavar="F",
        help="rows held out for the final metrics and the linear probe"
        + _d("test_fraction"),
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=tuple(PRESETS), help="model family" + _d("model"))
    g.add_argument(
        "--hidden",
        type=hidden_sizes,
        metavar="N[,N...]",
        help="encoder layer sizes; several make a deep encoder (default: 64)",
    )
    g.add_argument(
        "--pretrain-epochs",
        type=nonnegative_int,
        metavar="N",
        help="greedy layer-wise pre-training epochs per layer of a deep encoder "
        "(stacked CAE), before the end-to-end epochs" + _d("pretrain_epochs"),
    )
    g.add_argument(
        "--conv-channels",
        type=positive_int,
        metavar="C",
        help="a convolutional encoder of C channels on image data, instead of "
        "--hidden (closed-form penalty; transposed-convolution decoder)",
    )
    g.add_argument(
        "--kernel-size", type=positive_int, metavar="K", help="conv" + _d("kernel_size")
    )
    g.add_argument(
        "--stride", type=positive_int, metavar="S", help="conv" + _d("stride")
    )
    g.add_argument(
        "--padding", type=nonnegative_int, metavar="P", help="conv" + _d("padding")
    )
    g.add_argument(
        "--activation", choices=ACTIVATIONS, help="hidden activation" + _d("activation")
    )
    g.add_argument("--decoder", choices=DECODERS, help="decoder" + _d("decoder"))
    g.add_argument(
        "--loss",
        choices=("auto", *LOSSES),
        help="reconstruction loss; auto: bce for a sigmoid decoder, else mse"
        + _d("loss"),
    )
    g.add_argument(
        "--contraction",
        type=nonnegative_float,
        metavar="LAMBDA",
        help="weight of ||J_f||_F^2 (of ||J_{g.f}||_F^2 for rcae) "
        "(default: 1.0 with bce, 0.1 with mse)",
    )
    g.add_argument(
        "--higher-order",
        type=nonnegative_float,
        metavar="GAMMA",
        help="weight of the CAE+H term (default: the preset's)",
    )
    g.add_argument(
        "--corruption",
        choices=CORRUPTIONS,
        help="input corruption (default: gaussian for dae, none otherwise)",
    )
    g.add_argument(
        "--corruption-level",
        type=positive_float,
        metavar="L",
        help="std (gaussian) or fraction of entries (default: 0.25)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, help="epochs" + _d("epochs"))
    g.add_argument(
        "--batch-size", type=positive_int, help="batch size" + _d("batch_size")
    )
    g.add_argument("--lr", type=positive_float, help="learning rate" + _d("lr"))
    g.add_argument(
        "--optimizer", choices=OPTIMIZERS, help="optimizer" + _d("optimizer")
    )
    g.add_argument("--momentum", type=fraction, help="SGD momentum" + _d("momentum"))
    g.add_argument("--seed", type=nonnegative_int, help="random seed" + _d("seed"))
    g.add_argument(
        "--patience",
        type=nonnegative_int,
        help="stop after this many epochs without a lower validation "
        "loss; 0 never stops early" + _d("patience"),
    )
    g.add_argument(
        "--device", metavar="DEV", help="auto, cpu, cuda, cuda:N or mps" + _d("device")
    )
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32, or bf16/fp16 autocast on CUDA; penalties stay float32"
        + _d("precision"),
    )
    g.add_argument(
        "--nproc",
        type=positive_int,
        metavar="N",
        help="train with N processes (DistributedDataParallel, launched with "
        "torchrun; --batch-size is per process); or run under torchrun yourself "
        "(default: 1)",
    )
    g.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="CPU threads for training; small models are fastest on one"
        + _d("threads"),
    )
    g = p.add_argument_group("run folder")
    g.add_argument(
        "--out", metavar="DIR", help="run folder (default: runs/<data>-<model>-<time>)"
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint "
        "(settings come from its config.json; --epochs may be raised)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (only a run folder is ever emptied)",
    )
    g.add_argument(
        "--checkpoint-every",
        type=nonnegative_int,
        metavar="N",
        help="also checkpoint every N optimizer steps (default: each epoch only)",
    )
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar (it shows only on a terminal anyway)",
    )
    p.set_defaults(func=cmd_train)


def add_encode_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode",
        help="write the codes of a dataset",
        description="Encode INPUT (a built-in name or data file) with a trained run's "
        "model and its input scaling; write the codes to OUTPUT (.npy or .csv).",
        epilog="example:\n  contractive encode runs/digits-cae-... digits codes.npy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("input", metavar="INPUT", help="data name or file")
    p.add_argument("output", metavar="OUTPUT", help="codes file, .npy or .csv")
    p.add_argument(
        "--label-column",
        metavar="COL",
        default=None,
        help="CSV column to drop as labels",
    )
    p.add_argument("--device", default="cpu", metavar="DEV", help="(default: cpu)")
    p.set_defaults(func=cmd_encode)


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="print a run's metrics as JSON",
        description="Reconstruction error, mean Jacobian norm and (with labels) the "
        "linear-probe accuracy of a trained run, as JSON on stdout, with an "
        "'analysis' object: the Jacobian singular-value spectrum's decay, the exact "
        "mean Jacobian norm and contraction ratios at radii relative to the data "
        "scale. Default data: the run's own held-out test split.",
        epilog="examples:\n  contractive evaluate runs/digits-cae-...\n"
        "  contractive evaluate runs/x --data other.npy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument(
        "--data",
        metavar="NAME|PATH",
        default=None,
        help="evaluate on this data instead (all its rows)",
    )
    p.add_argument("--label-column", metavar="COL", default=None)
    p.add_argument("--device", default="cpu", metavar="DEV", help="(default: cpu)")
    p.add_argument(
        "--analysis-samples",
        type=positive_int,
        metavar="N",
        default=ANALYSIS_MAX_SAMPLES,
        help="rows used for the Jacobian spectrum and the contraction ratios "
        f"(default: {ANALYSIS_MAX_SAMPLES})",
    )
    p.add_argument(
        "--no-analysis",
        action="store_true",
        help="skip the analysis (no 'analysis' key)",
    )
    p.set_defaults(func=cmd_evaluate)


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write figures and a markdown report of runs",
        description="Write PNG figures (training curves, filters, reconstructions, "
        "Jacobian spectrum, contraction curve, tangents) into RUN/figures and an "
        "index RUN/report.md. With several runs, also a comparison folder with the "
        "curves and spectra overlaid and a table of the runs. Prints the path of "
        "the report.",
        epilog="examples:\n  contractive report runs/digits-cae-...\n"
        "  contractive report runs/ae runs/cae --out runs/ae-vs-cae",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", metavar="RUN", nargs="+", help="run folder(s)")
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="comparison folder, several runs only "
        "(default: report-<names> beside the first run)",
    )
    p.add_argument("--device", default="cpu", metavar="DEV", help="(default: cpu)")
    p.add_argument(
        "--analysis-samples",
        type=positive_int,
        metavar="N",
        default=ANALYSIS_MAX_SAMPLES,
        help="evaluation rows used for the Jacobians, contraction and figures "
        f"(default: {ANALYSIS_MAX_SAMPLES})",
    )
    p.set_defaults(func=cmd_report)


SUBCOMMANDS = [
    add_train_parser,
    add_encode_parser,
    add_evaluate_parser,
    add_report_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Contractive autoencoders: train, encode, evaluate, report.",
        epilog="Run 'contractive COMMAND -h' for a command's options.",
    )
    from contractive import __version__

    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    _add_verbosity(parser)
    parser.set_defaults(verbose=False, quiet=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in SUBCOMMANDS:
        add(sub)
    for subparser in sub.choices.values():  # -v/-q also after the subcommand
        _add_verbosity(subparser)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log more",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="only errors: no table, no progress bar",
    )


# ------------------------------------------------------------------ subcommands

_GLOBAL = {"verbose", "quiet", "command", "func", "argv"}


def cmd_train(args: argparse.Namespace) -> int:
    given = {k: v for k, v in vars(args).items() if k not in _GLOBAL}
    if "conv_channels" in given and "hidden" in given:
        raise ValueError("--hidden and --conv-channels exclude each other: pick one")
    conv_only = {"kernel_size", "stride", "padding"} & set(given)
    if conv_only and "conv_channels" not in given:
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(conv_only))
        raise ValueError(f"{flags} only apply with --conv-channels")
    nproc = given.pop("nproc", 1)
    if nproc > 1 or distributed.env_world_size() > 1:
        code = _launch_or_check_workers(args, given, nproc)
        if code is not None:
            return code
    progress = given.pop("progress", None)
    if args.quiet:
        progress = False
    if given.pop("resume", False):
        extra = sorted(set(given) - _RESUME_FLAGS)
        if extra:
            flags = ", ".join("--" + k.replace("_", "-") for k in extra)
            raise ValueError(
                f"--resume continues with the run's stored settings; drop {flags}"
            )
        if "out" not in given:
            raise ValueError("--resume needs the run folder: --out DIR")
        result = resume_run(
            given["out"],
            epochs=given.get("epochs"),
            device=given.get("device"),
            progress=progress,
        )
    else:
        result = train_run(TrainOptions(**given), progress=progress)
    if not result.is_main:  # other ranks of a multi-process run: rank 0 reports
        return 0
    if not args.quiet:
        print(format_summary(result.summary))
    print(f"run folder: {result.run_dir}")
    return 0


def _launch_or_check_workers(
    args: argparse.Namespace, given: dict, nproc: int
) -> int | None:
    """``--nproc N``: launch torchrun with this command line; return its code.

    Inside a torchrun worker (``WORLD_SIZE`` set) returns None (train here),
    after refusing a nested ``--nproc``. Before launching, the checks that need
    no data run here, so a bad flag or ``--out`` exits with code 2 at once.
    """
    if distributed.env_world_size() > 1:
        if nproc > 1:
            raise ValueError(
                "--nproc launches torchrun itself; under torchrun leave it out"
            )
        return None
    if given.get("resume"):
        if "out" in given:
            record = runs.read_config(given["out"]).get("distributed") or {}
            trained_with = int(record.get("world_size", 1))
            if trained_with != nproc:
                raise ValueError(
                    f"run {given['out']!r} was trained with {trained_with} "
                    f"processes; resume it with --nproc {trained_with}"
                )
    else:
        options = TrainOptions(
            **{k: v for k, v in given.items() if k not in ("progress", "resume")}
        )
        device = resolve_device(options.device)
        check_precision(options.precision, device)
        builtin = options.data in list_builtin_datasets()
        if not builtin and not Path(options.data).expanduser().exists():
            raise ValueError(f"no such file or folder: {options.data!r}")
        if options.out is not None:
            runs.check_new_run_dir(options.out, overwrite=options.overwrite)
    argv = _without_nproc(args.argv)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "contractive",
        *argv,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(command, env=env, check=False).returncode


def _without_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (or an abbreviation)."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if len(name) >= 4 and "--nproc".startswith(name):
            skip = "=" not in token
            continue
        out.append(token)
    return out


def cmd_encode(args: argparse.Namespace) -> int:
    n, k = encode_file(
        args.run,
        args.input,
        args.output,
        label_column=args.label_column,
        device=args.device,
    )
    logging.getLogger(__name__).info(
        "wrote %d codes of size %d to %s", n, k, args.output
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    metrics = evaluate_run(
        args.run,
        args.data,
        label_column=args.label_column,
        device=args.device,
        analyse=not args.no_analysis,
        analysis_samples=args.analysis_samples,
    )
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from contractive.report import write_report  # pulls in matplotlib

    path = write_report(
        args.runs,
        args.out,
        device=args.device,
        max_samples=args.analysis_samples,
    )
    print(path)
    return 0


# ------------------------------------------------------------------ entry point


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", force=True)


def _fail(message: str) -> None:
    text = " ".join(str(message).split())  # always one line
    print(f"{PROG}: error: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (console scripts exit with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        _fail(str(err))
        return 2
    _configure_logging(args.verbose, args.quiet)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except InterruptedRun as err:
        print(
            f"{PROG}: interrupted at epoch {err.epoch + 1}, step {err.step_in_epoch}; "
            f"checkpoint written. Resume with: contractive train --out "
            f"{err.run_dir} --resume",
            file=sys.stderr,
        )
        return 130
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except DivergedRun as err:
        _fail(str(err))
        return 1
    except ValueError as err:  # DataError, RunError and option checks
        _fail(str(err))
        return 2
    except OSError as err:
        _fail(f"{err.strerror or err}: {err.filename}" if err.filename else str(err))
        return 2


if __name__ == "__main__":
    sys.exit(main())
