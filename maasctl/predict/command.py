"""The `maasctl predict` command line: options, the run, what goes to stdout and stderr, the exit code.

Options are parsed with argparse rather than typer: typer (0.2x) coerces every parameter, including
the group's own --help, through pydantic TypeAdapters, which costs about as much start-up as numpy and
onnxruntime together. `python -m maasctl.predict` runs this module without typer at all, the fastest start
for CI steps; `maasctl predict` hands its arguments here unchanged.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from maasctl.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, MaasctlError, UsageError

SUMMARY = """Predict labels for images, tensors, CSV rows and texts, locally with onnxruntime or through a server, and gate
a CI job on the expected labels."""
EXIT_CODES = """exit codes:
  0  every input was predicted (and the gate, if any, passed)
  1  the gate failed: a prediction differs from its expected label, or accuracy < --min-accuracy;
     regression: an |error| > --max-abs-error, or the mean |error| > --max-mae
  2  usage or input error: a bad option, or an input that could not be read or predicted
     (one line per problem on stderr; the other inputs are still predicted and printed)
  3  model or server unavailable: unknown model, tampered model file, unreachable server,
     token refused (401/403)"""
EPILOG = f"""inputs:
  FILE      an image (any format Pillow reads; made into a tensor with the model's own preprocessing),
            or a tensor holding one sample or a batch: .npy, .npz (the array named x, or the only one),
            .json (a nested list, {{"data": ...}}, or an infer request body {{"inputs": [{{"name", "shape",
            "datatype", "data"}}]}})
  FOLDER    every image and tensor file under it, recursively, sorted (hidden files skipped)
  'GLOB'    a pattern, expanded here as well, so quoting works; ** matches any depth: 'data/**/*.png'
  -         stdin: a .npy/.npz/JSON tensor or an image; anything else is read as paths, one per line
  FILE.csv  tabular models: one input per data row, named FILE.csv[i] (i from 0, the first row after the
            header); columns matched by header name to the model's, other columns (the label) ignored
  FILE.txt  text models: one input per non-empty line, named FILE.txt[i] (i from 0)
  FILE.jsonl text models: one input per JSON line, its text in the recipe's text column
  --text T  text models: the text T itself (repeatable), named --text[i]
  Folders and patterns take image and tensor files by suffix; files named outright are always read.
  A batch file's samples are named FILE[i].

gating (one of):
  --expect LABEL          every input should be LABEL
  --labels-file FILE      CSV rows input,label (header optional), or JSON {{"input": "label"}}; paths
                          relative to the current folder or to FILE's; FILE[i] for a sample of a batch
  --labels-from-folders   the folder holding each file is its label: data/cat/1.png should be cat
  --labels-from-column    a .csv/.jsonl input's own label column (the recipe's data.label_column)
  Accuracy is reported; the gate fails (exit 1) on any mismatch, or, with --min-accuracy, only when
  accuracy is below it.
  Regression models print values in the target's units; the expected labels are numbers, and the gate
  needs a tolerance: --max-abs-error E (every |value - expected| <= E) and/or --max-mae M (their mean
  <= M). MAE, RMSE and the largest error are reported.

{EXIT_CODES}

examples:
  maasctl predict digits samples/ --expect 3
  maasctl predict digits:2 'test/**/*.png' --labels-from-folders --min-accuracy 95% --json -o report.json
  maasctl predict iris-mlp data/examples/iris.csv --labels-from-column --min-accuracy 90%
  maasctl predict reviews-gru --text "not sturdy at all" --text "works great"
  find data -name '*.png' | maasctl predict digits - --url http://127.0.0.1:8000 --format csv
"""
PROGRESS_MIN_INPUTS = 100  # a progress bar (stderr, terminals only) from this many input files on
MISMATCHES_SHOWN = 10


# long: one add_argument per option, in the order --help shows them
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="maasctl predict", description=SUMMARY, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="repository name, name:version, or a model folder; with --url, the served model's name[:version]",
    )
    p.add_argument(
        "inputs",
        metavar="INPUT",
        nargs="*",
        help="image, tensor, .csv, .txt or .jsonl files, folders, glob patterns, or - for stdin",
    )
    p.add_argument(
        "--text", action="append", default=[], metavar="TEXT", help="a text to classify (text models; repeatable)"
    )

    target = p.add_argument_group("where the model runs")
    target.add_argument(
        "--url", help="a running server (maasctl serve, or any Open Inference Protocol server for tensors)"
    )
    target.add_argument(
        "--token",
        default=os.environ.get("MAASCTL_TOKEN") or None,
        help="sent as 'Authorization: Bearer TOKEN' (default: $MAASCTL_TOKEN; prefer it, argv shows in ps)",
    )
    target.add_argument(
        "--timeout", type=_positive(float), default=30.0, metavar="SECONDS", help="per server request (default 30)"
    )
    target.add_argument(
        "--repo",
        type=Path,
        metavar="DIR",
        default=Path(os.environ.get("MAASCTL_REPO") or "artifacts/models"),
        help="model repository for local models (default: $MAASCTL_REPO or artifacts/models)",
    )
    target.add_argument(
        "--device", choices=("cpu", "auto", "cuda"), help="local models: onnxruntime device (default cpu)"
    )

    run = p.add_argument_group("running")
    run.add_argument(
        "--batch-size", type=_positive(int), default=64, metavar="N", help="samples per inference call (default 64)"
    )
    run.add_argument(
        "--fail-fast",
        action="store_true",
        help="stop at the first input that fails (those before it are still predicted)",
    )

    out = p.add_argument_group("output")
    out.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        help="table (default), json, or csv; with --output FILE.json/.csv, taken from the suffix",
    )
    out.add_argument(
        "--json",
        action="store_true",
        help='same as --format json: {"predictions": [{input, label, probability, index, top_k}], "errors", "summary"}',
    )
    out.add_argument(
        "--output", "-o", type=Path, metavar="FILE", help="write the results to FILE (atomically) instead of stdout"
    )
    out.add_argument(
        "--top-k", type=_positive(int), default=1, metavar="K", help="also report the K most likely labels (default 1)"
    )

    gate = p.add_argument_group("gating")
    source = gate.add_mutually_exclusive_group()
    source.add_argument("--expect", metavar="LABEL", help="every input should be predicted as LABEL")
    source.add_argument("--labels-file", type=Path, metavar="FILE", help="expected labels per input (CSV or JSON)")
    source.add_argument(
        "--labels-from-folders", action="store_true", help="the folder holding each input file is its expected label"
    )
    source.add_argument(
        "--labels-from-column",
        action="store_true",
        help="CSV/JSONL inputs: the label column named in the model's recipe (data.label_column)",
    )
    gate.add_argument(
        "--min-accuracy", metavar="X", help="fail only when accuracy < X (0.95 or 95%%) instead of on any mismatch"
    )
    gate.add_argument(
        "--max-abs-error", metavar="E", help="regression: fail when any |value - expected| > E (target units)"
    )
    gate.add_argument("--max-mae", metavar="M", help="regression: fail when the mean |value - expected| > M")
    return p


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: must be greater than 0")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_intermixed_args(argv)
        fmt, min_accuracy = _check_options(parser, args)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return int(exc.code or 0)
    try:
        return _run(args, fmt, min_accuracy)
    except MaasctlError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:  # `maasctl predict ... | head` closed the pipe: not worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


def _check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, float | None]:
    if not args.inputs and not args.text:
        parser.error("give at least one INPUT or --text")
    if args.json and args.format not in (None, "json"):
        parser.error(f"--json and --format {args.format} disagree; give one")
    fmt = "json" if args.json else args.format
    if fmt is None:
        fmt = {".json": "json", ".csv": "csv"}.get(args.output.suffix.lower(), "table") if args.output else "table"
    if args.url and args.device:
        parser.error("--device is for local models; a server runs on the device it was started with")
    min_accuracy = None
    labelled = (
        args.expect is not None or args.labels_file is not None or args.labels_from_folders or args.labels_from_column
    )
    for option in ("max_abs_error", "max_mae"):
        if getattr(args, option) is not None:
            from maasctl.predict.gate import parse_tolerance

            flag = "--" + option.replace("_", "-")
            if not labelled:
                parser.error(f"{flag} needs expected values: --expect, --labels-file or --labels-from-column")
            try:
                setattr(args, option, parse_tolerance(flag, getattr(args, option)))
            except UsageError as exc:
                parser.error(str(exc))
    if args.min_accuracy is not None:
        if not labelled:
            parser.error(
                "--min-accuracy needs expected labels: --expect, --labels-file, --labels-from-folders or --labels-from-column"
            )
        from maasctl.predict.gate import parse_accuracy

        try:
            min_accuracy = parse_accuracy(args.min_accuracy)
        except UsageError as exc:
            parser.error(str(exc))
    return fmt, min_accuracy


def _run(args: argparse.Namespace, fmt: str, min_accuracy: float | None) -> int:
    from maasctl.inputs.outputs import model_labels
    from maasctl.inputs.types import ModelInput, Problem
    from maasctl.predict.engine import Outcome, run_predictions
    from maasctl.predict.inputs import expand_inputs, text_sources

    started = time.perf_counter()
    log = _Reporter()
    outcome, target, gate = Outcome(), None, None
    try:
        expectations = _expectations(args)
        target = _open_target(args)
        if args.labels_from_column:
            from maasctl.predict.gate import ColumnLabels

            expectations = ColumnLabels(target.manifest)
        ModelInput.from_manifest(target.manifest)  # a model predict cannot feed is refused before any input is read
        labels = model_labels(target.manifest)
        _check_gate_options(args, target.manifest, expectations is not None)
        if args.expect is not None and labels and args.expect not in labels:
            raise UsageError(f"--expect {args.expect!r} is not one of the model's labels: {', '.join(labels)}")
    except MaasctlError as exc:  # nothing can be predicted: say why, and in JSON too for scripts that parse it
        outcome.fatal = Problem(None, str(exc), exc.exit_code)
        outcome.problems.append(outcome.fatal)
        log.problem(outcome.fatal)
        if fmt == "json":
            _emit(args, fmt, outcome, None, _summary(args, outcome, None, None, started, exc.exit_code), log)
        return exc.exit_code

    items = expand_inputs(
        args.inputs, sys.stdin.buffer if sys.stdin else None, [p for p in (args.labels_file, args.output) if p]
    )
    items += text_sources(args.text)
    with log.progress(len(items), enabled=len(items) >= PROGRESS_MIN_INPUTS and sys.stderr.isatty()):
        outcome = run_predictions(
            target,
            items,
            batch_size=args.batch_size,
            top_k=args.top_k,
            fail_fast=args.fail_fast,
            on_problem=log.problem,
            on_source=log.advance,
        )
    if expectations is not None:
        gate = _judge(args, expectations, outcome, labels, min_accuracy, log)
    code = _exit_code(outcome, gate)
    summary = _summary(args, outcome, target, gate, started, code)
    _emit(args, fmt, outcome, gate, summary, log)
    _report(outcome, gate, summary, log)
    return code


def _check_gate_options(args: argparse.Namespace, manifest: dict[str, Any], gated: bool) -> None:
    """Tolerances are for regression models, --min-accuracy for classifiers; a regression gate needs a tolerance."""
    from maasctl.inputs.outputs import is_regression

    tolerances = args.max_abs_error is not None or args.max_mae is not None
    if is_regression(manifest):
        if args.min_accuracy is not None:
            raise UsageError(
                "--min-accuracy is for classifiers; this model predicts values: use --max-abs-error/--max-mae"
            )
        if args.labels_from_folders:
            raise UsageError("--labels-from-folders gives class names; this model predicts values")
        if gated and not tolerances:
            raise UsageError(
                "this model predicts values, which rarely equal the expected ones exactly: give a tolerance in the "
                "target's units, --max-abs-error E (each prediction) and/or --max-mae M (the mean error)"
            )
    elif tolerances:
        raise UsageError("--max-abs-error and --max-mae are for regression models; this one predicts classes")


def _exit_code(outcome: Any, gate: Any) -> int:
    if outcome.fatal:
        return outcome.fatal.exit_code  # 3: the model or server
    if outcome.problems:
        return EXIT_USAGE  # 2: some input
    if gate is not None and not gate.passed:
        return EXIT_FAILED  # 1: the gate
    return EXIT_OK


def _expectations(args: argparse.Namespace) -> Any:
    if args.expect is None and args.labels_file is None and not args.labels_from_folders:
        return None  # --labels-from-column: made once the target's manifest is known
    from maasctl.predict.gate import FolderLabels, LabelsFile, SameLabel

    if args.expect is not None:
        return SameLabel(args.expect)
    return LabelsFile(args.labels_file) if args.labels_file is not None else FolderLabels()


def _open_target(args: argparse.Namespace) -> Any:
    from maasctl.predict.targets import LocalTarget, RemoteTarget

    if args.url:
        return RemoteTarget(args.model, args.url, token=args.token, timeout=args.timeout)
    return LocalTarget(args.model, args.repo, device=args.device or "cpu")


def _judge(
    args: argparse.Namespace,
    expectations: Any,
    outcome: Any,
    model_labels: list[str],
    min_accuracy: float | None,
    log: _Reporter,
) -> Any:
    from maasctl.inputs.types import Problem
    from maasctl.predict.gate import LabelsFile, apply_expectations, apply_value_expectations

    if any(p.value is not None for p in outcome.predictions):  # a regression model's values
        gate = apply_value_expectations(outcome.predictions, expectations, args.max_abs_error, args.max_mae)
        for message in gate.not_numbers:
            problem = Problem(message.split(": ", 1)[0], message)
            outcome.problems.append(problem)
            log.problem(problem)
    else:
        gate = apply_expectations(outcome.predictions, expectations, model_labels, min_accuracy)
    for label in gate.unknown_labels[:5]:
        log.line(f"warning: expected label {label!r} is not one of the model's labels ({', '.join(model_labels)})")
    if isinstance(expectations, LabelsFile):
        if gate.unlabelled and gate.labelled:
            log.line(
                f"warning: {len(gate.unlabelled)} inputs have no label in {args.labels_file} (first: {gate.unlabelled[0]}); they are not counted"
            )
        unused = [k for k in expectations.keys if k not in expectations.used]
        if unused and not outcome.stopped:
            log.line(f"warning: {len(unused)} entries of {args.labels_file} match no input (first: {unused[0]})")
    if outcome.predictions and not gate.labelled:
        problem = Problem(
            None, f"no input has an expected label (first input: {outcome.predictions[0].input}); nothing to gate on"
        )
        outcome.problems.append(problem)
        log.problem(problem)
    return gate


def _summary(
    args: argparse.Namespace, outcome: Any, target: Any, gate: Any, started: float, code: int
) -> dict[str, Any]:
    failed = sum(1 for p in outcome.problems if p.input is not None)
    summary = {
        "model": target.name if target else args.model,
        "version": target.version if target else None,
        "target": target.where if target else (args.url or "local"),
        "inputs": len(outcome.predictions) + failed,
        "predicted": len(outcome.predictions),
        "failed": failed,
        "stopped_early": outcome.stopped or outcome.fatal is not None,
        "accuracy": None,
        "correct": None,
        "labelled": None,
        "mismatches": None,
        "min_accuracy": None,
        "gate": None,
        "exit_code": code,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if gate is not None:
        g = gate.to_json()
        if "mae" in g:  # regression: errors in the target's units
            summary.update(
                {k: g[k] for k in ("labelled", "mismatches", "mae", "rmse", "max_error", "max_abs_error", "max_mae")}
            )
        else:
            summary.update({k: g[k] for k in ("accuracy", "correct", "labelled", "mismatches", "min_accuracy")})
        summary["gate"] = "passed" if gate.passed else "failed"
    return summary


def _emit(args: argparse.Namespace, fmt: str, outcome: Any, gate: Any, summary: dict[str, Any], log: _Reporter) -> None:
    from maasctl.predict import report

    top_k = max((len(p.top_k) for p in outcome.predictions), default=1)
    gated = gate is not None
    if fmt == "json":
        text = report.render_json(outcome.predictions, outcome.problems, summary)
    elif fmt == "csv":
        text = report.render_csv(outcome.predictions, top_k, gated)
    elif args.output is None:
        if outcome.predictions:  # no empty frame: the error lines on stderr say why
            from rich.console import Console

            report.print_table(Console(highlight=False), outcome.predictions, top_k, gated)
        return
    else:
        import io

        from rich.console import Console

        buf = io.StringIO()
        report.print_table(Console(file=buf, width=120, color_system=None), outcome.predictions, top_k, gated)
        text = buf.getvalue()
    if args.output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from maasctl.fileio import atomic_write_text

    try:
        atomic_write_text(args.output, text)
    except OSError as exc:
        raise UsageError(f"--output {args.output}: cannot write it ({exc.strerror or exc})") from None
    log.line(f"wrote {len(outcome.predictions)} predictions ({fmt}) to {args.output}")


def _report(outcome: Any, gate: Any, summary: dict[str, Any], log: _Reporter) -> None:
    """The closing lines on stderr, for people and CI logs."""
    if gate is not None and "mae" in gate.to_json():
        _report_values(outcome, gate, summary, log)
    elif gate is not None:
        wrong = [p for p in outcome.predictions if p.correct is False]
        for p in wrong[:MISMATCHES_SHOWN]:
            log.line(f"mismatch: {p.input}: expected {p.expected}, predicted {p.label} ({p.probability:.3f})")
        if len(wrong) > MISMATCHES_SHOWN:
            log.line(f"... and {len(wrong) - MISMATCHES_SHOWN} more mismatches")
        if gate.labelled:
            bar = (
                f" (minimum {gate.min_accuracy:.2%})"
                if gate.min_accuracy is not None
                else " (every prediction must match)"
            )
            log.line(f"accuracy {gate.accuracy:.2%} ({gate.correct} of {gate.labelled}); gate {summary['gate']}{bar}")
    model = summary["model"] + (f":{summary['version']}" if summary["version"] else "")
    line = f"predicted {summary['predicted']} of {summary['inputs']} inputs with {model} on {summary['target']} in {summary['seconds']:.2f} s"
    if summary["failed"]:
        line += f"; {summary['failed']} failed"
    if summary["stopped_early"]:
        line += "; stopped early, later inputs were not tried"
    log.line(line)


def _report_values(outcome: Any, gate: Any, summary: dict[str, Any], log: _Reporter) -> None:
    wrong = [p for p in outcome.predictions if p.correct is False]
    for p in wrong[:MISMATCHES_SHOWN]:
        log.line(
            f"mismatch: {p.input}: expected {p.expected}, predicted {p.value:.6g} (error {p.error:+.4g}, more than "
            f"{gate.max_abs_error:g})"
        )
    if len(wrong) > MISMATCHES_SHOWN:
        log.line(f"... and {len(wrong) - MISMATCHES_SHOWN} more mismatches")
    if gate.labelled:
        bars = [f"max |error| {gate.max_abs_error:g}"] if gate.max_abs_error is not None else []
        bars += [f"max MAE {gate.max_mae:g}"] if gate.max_mae is not None else []
        log.line(
            f"MAE {gate.mae:.4g}, RMSE {gate.rmse:.4g}, largest |error| {gate.worst:.4g} over {gate.labelled} values; "
            f"gate {summary['gate']} ({', '.join(bars)})"
        )


class _Reporter:
    """Lines on stderr, and a progress bar there when it is a terminal (lines then print above the bar)."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None

    def line(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def problem(self, problem: Any) -> None:
        self.line(f"error: {problem.message}")

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    @contextmanager
    def progress(self, total: int, enabled: bool) -> Iterator[None]:
        if not enabled:
            yield
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            self._bar, self._task = bar, bar.add_task("predict", total=total)
            try:
                yield
            finally:
                self._bar = None
