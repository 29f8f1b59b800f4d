"""The ``cvsuite`` command: ``cvsuite train|eval|predict|export|check|generate`` with the flags of tools/*.py
(which call this). Any recipe key can be given as ``--section.key value`` after the flags.

Only argparse is imported before the arguments are parsed, so ``--help`` answers at once; torch and the tasks
load when a sub-command runs.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from cvsuite.errors import Failed

OVERRIDES_HELP = (
    "Any recipe key can follow the flags as --section.key value (e.g. --data.root ROOT --trainer.max_epochs 5); "
    "`cvsuite train --config RECIPE --help` lists the recipe's keys with their values and types."
)


CKPT_HELP = "checkpoint written by training, or its run folder (= RUN/checkpoints/best.ckpt)"


# ---- sub-commands: flags ------------------------------------------------------------------------------------------
def _train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="recipe YAML (configs/<task>/*.yaml); not needed with --resume")
    p.add_argument(
        "--resume", help="checkpoint to continue, with its own recipe (e.g. <run>/checkpoints/last.ckpt); see README"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines (same as --run.verbose false)")
    p.add_argument("--no-check", action="store_true", help="skip the dataset check before training")


def _eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help=CKPT_HELP)
    p.add_argument("--config", help="recipe YAML (default: the one stored in the checkpoint)")
    p.add_argument("--output", help="JSON file to write (default: <run>/eval_metrics.json)")
    p.add_argument(
        "--split",
        default="val",
        choices=("val", "test"),
        help="val (default): exactly the validation files stored in the checkpoint; test: ROOT/test",
    )
    p.add_argument(
        "--predictions",
        help="also write the predictions here (detection: COCO results JSON, plus <name>_gt.json, the ground "
        "truth in COCO form whatever the data's format)",
    )


def _predict_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help=CKPT_HELP)
    p.add_argument("--input", required=True, help="image file or folder")
    p.add_argument("--output", required=True, help="folder for the predictions")
    p.add_argument("--config", help="recipe YAML (default: the one stored in the checkpoint)")
    p.add_argument("--topk", type=int, help="classification: how many classes per image (default 5)")


def _export_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help=CKPT_HELP)
    p.add_argument("--output", required=True, help="folder: model.onnx or model.pt, and model.json (the sidecar)")
    p.add_argument("--format", default="onnx", choices=("onnx", "torchscript"), help="default: onnx")
    p.add_argument("--config", help="recipe YAML (default: the one stored in the checkpoint)")
    p.add_argument("--images", help="image file or folder for the parity check (default: the validation split)")
    p.add_argument("--tolerance", type=float, help="largest allowed output difference (default 1e-3)")


def _check_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="recipe YAML; --data.root ROOT points it at your data")


def _generate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="generation " + CKPT_HELP)
    p.add_argument("--num", type=int, required=True, help="how many images")
    p.add_argument("--output", required=True, help="folder for the PNGs (00000.png, 00001.png, ...)")
    p.add_argument("--seed", type=int, default=0, help="same checkpoint and seed give the same images")
    p.add_argument("--class", dest="class_name", help="conditional models: only this class")
    p.add_argument("--batch-size", type=int, default=64)


# ---- sub-commands: what they run ----------------------------------------------------------------------------------
def _train(args: argparse.Namespace, overrides: list[str]) -> None:
    from cvsuite import console
    from cvsuite.budget import process_start
    from cvsuite.config import ConfigError, load_config
    from cvsuite.distributed import global_rank
    from cvsuite.outputs import check_output_folder
    from cvsuite.run import resume_config, train

    marks = {"imports": time.time()}
    if args.quiet:
        overrides = [*overrides, "--run.verbose", "false"]
    if args.resume:
        cfg = resume_config(args.resume, args.config, overrides)
    elif args.config:
        cfg = load_config(args.config, overrides)
    else:
        raise ConfigError("train needs --config RECIPE (or --resume CKPT to continue a run)")
    console.setup(cfg.run.verbose)
    if not args.resume:
        check_output_folder(cfg.trainer["default_root_dir"], "trainer.default_root_dir")
    if not args.no_check and not args.resume:
        from cvsuite.doctor import check_dataset

        report = check_dataset(cfg, quick=True)
        if report.errors:
            print(report.table(), file=sys.stderr)
            raise console.CheckFailed(f"{len(report.errors)} dataset error(s); fix them or pass --no-check")
        if cfg.run.verbose and report.warnings:
            print(report.table(), file=sys.stderr)
    marks["check"] = time.time()
    run_dir = train(cfg, resume=args.resume, started=process_start(), marks=marks)  # run.budget: the whole process
    if global_rank() == 0:  # under DDP every rank runs this command; one of them speaks
        console.print_best(run_dir, cfg)
        print(f"run folder: {run_dir}")


def _eval(args: argparse.Namespace, overrides: list[str]) -> None:
    from cvsuite import console
    from cvsuite.cli import print_json_last
    from cvsuite.run import eval_output, evaluate

    console.setup(verbose=False)
    metrics = evaluate(args.ckpt, args.config, overrides, args.output, args.predictions, args.split)
    if args.predictions:  # the task wrote the truth of the scored split beside its predictions
        from cvsuite.doctor import ground_truth_path

        if ground_truth_path(args.predictions).is_file():
            metrics["ground_truth"] = str(ground_truth_path(args.predictions))
    print(console.metrics_table(metrics), file=sys.stderr)
    written = [str(eval_output(args.ckpt, args.output))] + [
        str(metrics[k]) for k in ("predictions", "ground_truth") if k in metrics
    ]
    print(
        f"eval: {metrics.get('num_samples', '?')} sample(s) of the {metrics.get('split', args.split)} split scored; "
        f"wrote {', '.join(written)}",
        file=sys.stderr,
    )
    print_json_last(metrics)


def _predict(args: argparse.Namespace, overrides: list[str]) -> None:
    from cvsuite import console
    from cvsuite.run import predict_report

    console.setup(verbose=False)
    options = {"topk": args.topk} if args.topk is not None else {}
    report = predict_report(args.ckpt, args.input, args.output, args.config, overrides, **options)
    print(report.line())


def _export(args: argparse.Namespace, overrides: list[str]) -> None:
    from cvsuite import console
    from cvsuite.config import ConfigError
    from cvsuite.data.common import IMAGE_EXTENSIONS, list_images
    from cvsuite.export import export
    from cvsuite.outputs import check_output_folder

    console.setup(verbose=False)
    if args.tolerance is not None and not args.tolerance >= 0:  # also NaN
        raise ConfigError(f"--tolerance must be >= 0 (the largest allowed output difference), got {args.tolerance}")
    check_output_folder(args.output, "--output")
    if args.images:
        images = Path(args.images)
        if not images.exists():
            raise ConfigError(f"--images {images}: no such file or folder")
        if images.is_dir() and not list_images(images):
            raise ConfigError(
                f"--images {images}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS)}) for the parity "
                "check; give a folder with a few of your images, or leave --images out (the validation split)"
            )
    result = export(args.ckpt, args.output, args.format, args.config, overrides, args.images, args.tolerance)
    print(f"exported: {result.path} ({result.summary()})")


def _check(args: argparse.Namespace, overrides: list[str]) -> None:
    from cvsuite import console
    from cvsuite.config import load_config
    from cvsuite.doctor import check_dataset

    console.setup(verbose=False)
    report = check_dataset(load_config(args.config, overrides))
    print(report.table())
    if report.errors:
        raise console.CheckFailed(f"{len(report.errors)} dataset error(s), listed above")


def _generate(args: argparse.Namespace, overrides: list[str]) -> None:
    import torch

    from cvsuite import console
    from cvsuite.cli import print_json_last
    from cvsuite.config import ConfigError
    from cvsuite.outputs import check_output_folder
    from cvsuite.run import load_checkpoint
    from cvsuite.tasks.generation import generate_images

    console.setup(verbose=False)
    for flag, value, low in (("--num", args.num, 1), ("--batch-size", args.batch_size, 1), ("--seed", args.seed, 0)):
        if value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    check_output_folder(args.output, "--output")
    module, cfg, _ = load_checkpoint(args.ckpt, None, overrides)
    if cfg.task != "generation":
        raise ConfigError(f"--ckpt {args.ckpt} is a {cfg.task} checkpoint; generate needs a generation one")
    if torch.cuda.is_available() and cfg.trainer.get("accelerator") in ("auto", "gpu", "cuda"):
        module = module.cuda()
    paths = generate_images(module, args.num, args.output, args.seed, args.batch_size, args.class_name)
    size = module.hparams.image_size
    print(f"generate: {len(paths)} image(s) of {size}x{size} written to {args.output}", file=sys.stderr)
    print_json_last({"num_images": len(paths), "output": args.output, "image_size": size, "seed": args.seed})


# name -> (one-line help, flags, runner)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[..., None]]] = {
    "train": ("train a task from a recipe; prints the run folder", _train_flags, _train),
    "eval": ("metrics of a checkpoint on the validation split (one JSON line on stdout)", _eval_flags, _eval),
    "predict": ("predict an image or a folder with a checkpoint", _predict_flags, _predict),
    "export": ("export to ONNX or TorchScript, checked against PyTorch", _export_flags, _export),
    "check": ("check a dataset before training: counts, sizes, broken files, labels", _check_flags, _check),
    "generate": ("write images sampled from a GAN checkpoint", _generate_flags, _generate),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvsuite",
        description="Classification, detection, segmentation, regression and GAN generation on timm backbones.",
        epilog=OVERRIDES_HELP + " `cvsuite COMMAND --help` lists a command's flags.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (text, add_flags, _) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text, epilog=OVERRIDES_HELP, allow_abbrev=False, add_help=False)
        p.add_argument("-h", "--help", action="store_true", help="show this help (with --config: the recipe's keys)")
        add_flags(p)
    return parser


def _help(parser: argparse.ArgumentParser, command: str, argv: list[str]) -> int:
    """A sub-command's help; with --config (train, check) also the recipe's keys, values and types."""
    sub = next(a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction))
    sub_parser = sub.choices[command]
    sub_parser.print_help()
    config = _flag_value(argv, "--config")
    if config and command in ("train", "check"):
        from cvsuite.cli import main_wrapper

        return main_wrapper(lambda: print("\n" + recipe_keys(config)))
    return 0


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def recipe_keys(config: str) -> str:
    """Every key of the recipe's sections, with its value in this recipe and its type, as lines to read."""
    import dataclasses
    import typing

    from cvsuite.config import SECTIONS, load_config

    cfg = load_config(config)
    lines = [f"recipe {config} (task: {cfg.task}); override any key with --section.key value:"]
    for section in SECTIONS[1:-1]:
        obj = getattr(cfg, section)
        hints = typing.get_type_hints(type(obj))
        lines.append(f"  {section}:")
        for f in dataclasses.fields(obj):
            hint = str(hints[f.name]).replace("typing.", "")
            hint = getattr(hints[f.name], "__name__", hint) if isinstance(hints[f.name], type) else hint
            lines.append(f"    {'--' + section + '.' + f.name:<36} {getattr(obj, f.name)!r:<28} {hint}")
    lines.append("  trainer: (any lightning.Trainer argument)")
    for key, value in cfg.trainer.items():
        lines.append(f"    {'--trainer.' + key:<36} {value!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code. With `argv` None (the process's own command line: the ``cvsuite``
    script, ``python -m cvsuite``, tools/*.py) a command that loaded torch ends the process here (`end_process`)."""
    if argv is None:
        return _ended(_main(sys.argv[1:]))
    return _main(list(argv))


def _ended(code: int) -> int:
    """`end_process` once torch is loaded (its teardown is the slow one); else the code, for a normal exit."""
    if "torch" in sys.modules:
        end_process(code)
    return code


def end_process(code: int) -> NoReturn:
    """End the process with `code` once its command is done: what Python's own exit does that matters (wait for
    non-daemon threads, run the exit handlers: logging, multiprocessing's children, TensorBoard's writer and any
    other registered, flush stdout and stderr), without then tearing the interpreter down module by module, which
    after torch, Lightning and their imports takes about 2 s on a 2-core CPU and writes nothing."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken pipe: nothing more can be said
            stream.flush()
    os._exit(code)


def _main(argv: list[str]) -> int:
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] in COMMANDS and ("-h" in argv or "--help" in argv):
        return _help(parser, argv[0], argv)  # before parsing: --help needs no --ckpt or --config
    args, overrides = parser.parse_known_args(argv)
    from cvsuite.cli import main_wrapper

    run = COMMANDS[args.command][2]
    failed: list[Failed] = []

    def go() -> None:
        try:
            run(args, overrides)
        except Failed as err:
            failed.append(err)
            print(f"error: {err}", file=sys.stderr)
        finally:
            from cvsuite import console

            console.end_command()  # lines shown once per command: the next command shows them again

    code = main_wrapper(go)
    return code or (1 if failed else 0)


def tool_main(command: str, argv: list[str] | None = None) -> int:
    """What tools/<command>.py runs: the same as ``cvsuite <command> ...`` (with `argv` None, the process's own
    arguments, ending the process as `main` does)."""
    if argv is None:
        return _ended(_main([command, *sys.argv[1:]]))
    return _main([command, *argv])
