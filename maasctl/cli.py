"""The `maasctl` command line. Command modules are imported inside each command, so `maasctl --help`,
`serve` and `predict` never pay for torch."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

from maasctl.errors import EXIT_UNAVAILABLE, MaasctlError

TRAIN_EXTRA = {
    "torch",
    "torchvision",
    "onnx",
    "onnxscript",
    "matplotlib",
    "transformers",
    "torch_pruning",
}  # pyproject's `train` extra
EXIT_CODES = "Exit codes: 0 success, 1 a check failed, 2 usage or input error, 3 model or server unavailable."

app = typer.Typer(
    name="maasctl",
    help=f"Train a model from a YAML recipe, export it to ONNX, serve it over the Open Inference Protocol. {EXIT_CODES}",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
recipe_app = typer.Typer(help="Show recipes resolved with their defaults, and the recipe schema.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
models_app = typer.Typer(help="Model architectures (the registry) and the model repository.")
app.add_typer(models_app, name="models")

ARTIFACTS = typer.Option(
    Path("artifacts"), "--artifacts", envvar="MAASCTL_ARTIFACTS", help="where runs/ and models/ live"
)
REPO = typer.Option(Path("artifacts/models"), "--repo", envvar="MAASCTL_REPO", help="model repository folder")
JSON = typer.Option(False, "--json", help="print exactly one JSON object on stdout (logs go to stderr)")
SET = typer.Option([], "--set", help="override a recipe key: key.path=value (repeatable)")


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _log(message: str) -> None:
    _stderr().print(message, markup=False)


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _train_recipe(recipe: Path | None, overrides: list[str], resume: str | None, runs_root: Path) -> tuple[Any, Path]:
    """The recipe to train with, resolved and checked; with --resume, the run's saved one and its folder."""
    from maasctl.recipe import load_recipe

    if not resume:
        return load_recipe(recipe, overrides), Path()
    from maasctl.train.rundir import check_resumable, find_run_dir

    if recipe is not None:
        raise MaasctlError("--resume continues a run with its saved recipe; give changes with --set, not a RECIPE file")
    run_dir = find_run_dir(resume, runs_root)
    resolved = load_recipe(run_dir / "recipe.yaml", overrides)
    check_resumable(load_recipe(run_dir / "recipe.yaml"), resolved)
    return resolved, run_dir


@app.command()
def train(
    recipe: Path | None = typer.Argument(None, help="recipe YAML; the default digits recipe when omitted"),
    set_: list[str] = SET,
    name: str | None = typer.Option(None, "--name", help="run folder name (default: the recipe's name)"),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda (overrides train.device)"),
    resume: str | None = typer.Option(None, "--resume", help="continue the run RUN from its last checkpoint"),
    nproc: int | None = typer.Option(
        None,
        "--nproc",
        min=1,
        help="train on N processes with DistributedDataParallel (starts torchrun; one per GPU, or gloo on CPU)",
    ),
    artifacts: Path = ARTIFACTS,
    json_: bool = JSON,
) -> None:
    """Train a model; writes artifacts/runs/NAME/ (recipe, checkpoints, metrics.csv, summary.json)."""
    import contextlib

    overrides = list(set_) + ([f"train.device={device}"] if device else [])
    runs_root = artifacts / "runs"
    resolved, run_dir = _train_recipe(recipe, overrides, resume, runs_root)
    if nproc and nproc > 1:  # the recipe is checked above, once, before N processes start
        if "RANK" in os.environ:
            raise MaasctlError(
                "--nproc starts torchrun, but this process already runs under torchrun (RANK is set); leave --nproc out"
            )
        raise typer.Exit(_launch_torchrun(nproc))
    from maasctl.train.progress import epoch_reporter
    from maasctl.train.rundir import create_run_dir
    from maasctl.train.trainer import Trainer

    trainer = Trainer(resolved)  # data, model and optimizer first: a bad recipe fails before a folder exists
    trainer.log = _log
    try:
        if not resume:  # under torchrun rank 0 creates the folder and every rank gets its path
            run_dir = trainer.on_main(lambda: create_run_dir(runs_root, name or resolved.name))
        if trainer.is_main:
            _log(f"run folder: {run_dir}")
        reporter = epoch_reporter(_stderr(), resolved.train.epochs) if trainer.is_main else contextlib.nullcontext()
        try:
            with reporter as on_epoch:
                result = trainer.fit(
                    run_dir, resume=bool(resume), on_epoch=on_epoch, on_step=getattr(on_epoch, "step", None)
                )
        except KeyboardInterrupt:
            if trainer.is_main:
                again = f" --nproc {trainer.dist.world_size}" if trainer.dist.enabled else ""
                _log(f"interrupted; continue with: maasctl train --resume {run_dir}{again}")
            raise typer.Exit(130) from None
    finally:
        trainer.close()
    if not trainer.is_main:
        return
    _log(_test_line(result.metrics))
    if json_:
        _emit_json({"run_dir": str(result.run_dir), "metrics": result.metrics})


def _test_line(m: dict[str, Any]) -> str:
    """The run's result in one line: the test figures of the best checkpoint."""
    if "test_rmse" in m:  # regression
        return (
            f"test RMSE {m['test_rmse']:.4g}, MAE {m['test_mae']:.4g}, R² {m['test_r2']:.4f} "
            f"(best epoch {m['best_epoch']}, val RMSE {m['val_rmse']:.4g})"
        )
    return (
        f"test accuracy {m['test_accuracy']:.2%} (best epoch {m['best_epoch']}, val accuracy {m['val_accuracy']:.2%})"
    )


def _launch_torchrun(nproc: int) -> int:
    """`maasctl train --nproc N ARGS` runs `torchrun --standalone --nproc-per-node N -m maasctl train ARGS` and
    returns its exit code. Each process finds RANK/WORLD_SIZE/LOCAL_RANK in its environment (see Trainer)."""
    import shlex
    import subprocess

    args, skip = [], False
    for arg in sys.argv[1:]:  # the same command line, minus --nproc
        if skip or arg == "--nproc" or arg.startswith("--nproc="):
            skip = arg == "--nproc"
            continue
        args.append(arg)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "maasctl",
        *args,
    ]
    _log("starting: " + shlex.join(["torchrun", *cmd[3:]]))
    proc = subprocess.Popen(cmd)
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the workers too: let them stop (rank 0 prints how to resume)
        code = proc.wait()
    return 128 - code if code < 0 else code


@app.command()
def export(
    run: str = typer.Argument(..., help="a run name under artifacts/runs, or a run folder path"),
    name: str | None = typer.Option(None, "--name", help="model name in the repository (default: the recipe's name)"),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset (default: the recipe's export.opset)"),
    atol: float | None = typer.Option(None, "--atol", help="parity tolerance (default: the recipe's export.atol)"),
    exporter: str = typer.Option(
        "auto", "--exporter", help="auto (dynamo, falling back to torchscript) | dynamo | torchscript"
    ),
    quantize: str | None = typer.Option(
        None,
        "--quantize",
        help="int8: static QDQ (calibrated on training samples) for CNNs, dynamic for MLP/RNN/Transformer; filed instead of fp32",
    ),
    fp16: bool = typer.Option(False, "--fp16", help="file a float16 model (float32 inputs and outputs kept)"),
    max_accuracy_drop: float = typer.Option(
        0.01,
        "--max-accuracy-drop",
        min=0,
        help="refuse a compressed model whose test accuracy is more than this below fp32 (0.01 = 1 point)",
    ),
    force: bool = typer.Option(False, "--force", help="file the compressed model even past --max-accuracy-drop"),
    artifacts: Path = ARTIFACTS,
    json_: bool = JSON,
) -> None:
    """Export a run's best checkpoint to ONNX, check it against PyTorch, file it as the next model version."""
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise MaasctlError(f"--exporter {exporter!r}: use auto, dynamo or torchscript")
    if quantize is not None and quantize != "int8":
        raise MaasctlError(f"--quantize {quantize!r}: use int8")
    if quantize and fp16:
        raise MaasctlError("--quantize and --fp16: pick one")
    compress = quantize or ("fp16" if fp16 else None)
    from maasctl.export.onnx_export import export_run
    from maasctl.repository import ModelRepository
    from maasctl.train.rundir import find_run_dir

    run_dir = find_run_dir(run, artifacts / "runs")
    result = export_run(
        run_dir,
        ModelRepository(artifacts / "models"),
        name=name,
        opset=opset,
        atol=atol,
        exporter=exporter,
        compress=compress,
        max_accuracy_drop=max_accuracy_drop,
        force=force,
        log=_log,
    )
    _log(f"filed {result.name} version {result.version} at {result.path}")
    if json_:
        _emit_json(result.to_json())


@app.command()
def prune(
    run: str = typer.Argument(..., help="a run name under artifacts/runs, or a run folder path"),
    ratio: float | None = typer.Option(
        None,
        "--ratio",
        help="share of each layer's channels to remove, 0 < r < 1 (default 0.5 when --macs is not given)",
    ),
    macs: float | None = typer.Option(None, "--macs", help="share of the multiply-accumulates to remove, 0 < m < 1"),
    importance: str = typer.Option(
        "l1", "--importance", help="which channels go: l1 | l2 (weight norms) | taylor | random"
    ),
    epochs: int = typer.Option(
        3, "--epochs", help="fine-tuning epochs after pruning, with the run's own recipe and data"
    ),
    lr: float | None = typer.Option(None, "--lr", help="fine-tuning peak learning rate (default: the run's)"),
    round_to: int | None = typer.Option(None, "--round-to", min=1, help="keep channel counts multiples of this"),
    name: str | None = typer.Option(None, "--name", help="the new run's name (default: the recipe's name + -pruned)"),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda for fine-tuning (default: the run's)"),
    artifacts: Path = ARTIFACTS,
    json_: bool = JSON,
) -> None:
    """Remove whole channels from a run's best checkpoint (Torch-Pruning), fine-tune, and write a new run."""
    from maasctl.train.progress import epoch_reporter
    from maasctl.train.prune import check_target, prune_run
    from maasctl.train.rundir import find_run_dir

    target = check_target(ratio, macs)  # a bad target or run: refused before any work
    parent = find_run_dir(run, artifacts / "runs")
    with epoch_reporter(_stderr(), epochs) as on_epoch:
        result = prune_run(
            parent,
            artifacts / "runs",
            target=target,
            importance=importance,
            epochs=epochs,
            lr=lr,
            name=name,
            device=device,
            round_to=round_to,
            log=_log,
            on_epoch=on_epoch,
        )
    p = result.pruning
    _log(
        f"{result.run_dir}: parameters {p['params_before']:,} → {p['params_after']:,}, MACs {p['macs_before']:,} → "
        f"{p['macs_after']:,}; {_pruned_line(p)}"
    )
    if json_:
        _emit_json({"run_dir": str(result.run_dir), "pruning": p})


def _pruned_line(p: dict[str, Any]) -> str:
    """Test accuracy (or RMSE) of the parent, of the pruned model before fine-tuning, and after."""
    key = "test_accuracy" if "test_accuracy" in p["metrics_after"] else "test_rmse"
    fmt = (lambda v: f"{v:.2%}") if key == "test_accuracy" else (lambda v: f"{v:.4g}")
    parent = p["parent_metrics"].get(key)
    return (
        f"{key.removeprefix('test_')} {fmt(parent) if parent is not None else '?'} (parent) → "
        f"{fmt(p['metrics_before_finetune'][key])} (pruned) → {fmt(p['metrics_after'][key])} (fine-tuned)"
    )


# long: typer declares each of the command's options in its signature
@app.command()
def serve(
    repo: Path = REPO,
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind; 0.0.0.0 exposes the server to the network"),
    port: int = typer.Option(8000, "--port"),
    device: str = typer.Option(
        "auto", "--device", help="auto (CUDA when onnxruntime has it) | cpu | cuda (refuse to start without it)"
    ),
    max_body_mb: float = typer.Option(64, "--max-body-mb", help="largest request body accepted (413 beyond)"),
    max_json_mb: float = typer.Option(
        16,
        "--max-json-mb",
        min=0,
        help="largest JSON infer body, or JSON header of a binary one (413 beyond): decoding JSON takes ~10x its size",
    ),
    max_decoding_mb: float = typer.Option(
        128,
        "--max-decoding-mb",
        min=1,
        help="request-body bytes held for decoding and inference at once, server-wide; beyond it 503 + Retry-After",
    ),
    access_log: bool = typer.Option(False, "--access-log/--no-access-log", help="one JSON line per request on stdout"),
    drain_seconds: float = typer.Option(
        30, "--drain-seconds", help="on SIGTERM/SIGINT, time given to in-flight requests"
    ),
    max_batch_size: int = typer.Option(
        32, "--max-batch-size", min=1, help="rows per model execution when batching requests; 1: no batching"
    ),
    max_queue_delay_ms: float = typer.Option(
        0,
        "--max-queue-delay-ms",
        min=0,
        help="how long a request waits for others to batch with (0: batch only what queued while the previous batch ran)",
    ),
    max_queue_size: int = typer.Option(
        256, "--max-queue-size", min=1, help="queued requests per model; beyond it 503 at once"
    ),
    request_timeout_s: float | None = typer.Option(
        None,
        "--request-timeout-s",
        min=0,
        help="504 when a request's result is not ready in this time (default: no limit)",
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="MAASCTL_TOKEN",
        show_envvar=True,
        help="require 'Authorization: Bearer TOKEN' on all but /v2/health/*; prefer the env variable (argv is visible in ps)",
    ),
    version_policy: str = typer.Option(
        "latest", "--version-policy", help="versions served per model: latest | latest:N (the N highest) | all"
    ),
    poll_seconds: float = typer.Option(
        0,
        "--poll-seconds",
        min=0,
        help="look for new, changed and removed versions this often (0: at start, and on POST /v2/repository/models/NAME/load)",
    ),
    grpc_port: int | None = typer.Option(
        None,
        "--grpc-port",
        min=0,
        max=65535,
        help="also serve the Open Inference Protocol over gRPC on this port (Triton's is 8001; default: REST only)",
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=1,
        help="server processes on the port (SO_REUSEPORT), each with its own models; default: 1 on a GPU or under 4 cores, else cores/4",
    ),
    exit_on_error: bool = typer.Option(
        True,
        "--exit-on-error/--no-exit-on-error",
        help="a model that fails to load at start-up stops the server (exit 3); --no-exit-on-error serves the ones that loaded",
    ),
) -> None:
    """Serve every model in the repository over the Open Inference Protocol (KServe v2 REST)."""
    if device not in ("auto", "cpu", "cuda"):
        raise MaasctlError(f"--device {device!r}: use auto, cpu or cuda")
    if token is not None and not token.strip():
        raise MaasctlError("--token / MAASCTL_TOKEN is empty: give a secret, or unset it to serve without one")
    from maasctl.serve.batching import BatchingConfig
    from maasctl.serve.memory import BodyBudget
    from maasctl.serve.models import VersionPolicy
    from maasctl.serve.server import check_device
    from maasctl.serve.server import serve as run_server
    from maasctl.serve.workers import default_workers, serve_workers

    VersionPolicy.parse(version_policy)  # a typo fails here, before any model loads
    batching = BatchingConfig(max_batch_size, max_queue_delay_ms, max_queue_size, request_timeout_s or None)
    options = dict(
        repo=str(repo),
        host=host,
        port=port,
        device=device,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        access_log=access_log,
        drain_seconds=drain_seconds,
        batching=batching,
        token=token,
        version_policy=version_policy,
        poll_seconds=poll_seconds,
        exit_on_error=exit_on_error,
        grpc_port=grpc_port,
        body_budget=BodyBudget(int(max_decoding_mb * 1024 * 1024), int(max_json_mb * 1024 * 1024)),
    )
    check_device(device)  # before any model loads, worker starts or port opens
    workers = workers or default_workers(device)
    if workers == 1:
        run_server(**options)
        return
    serve_workers(workers, **options)


@app.command()
def monitor(
    model: str = typer.Argument(..., help="a served model: NAME, or NAME:VERSION"),
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="the maasctl server"),
    token: str | None = typer.Option(
        None, "--token", envvar="MAASCTL_TOKEN", show_envvar=True, help="the server's token, if it has one"
    ),
    json_: bool = JSON,
) -> None:
    """Print a served model's drift: each input value's PSI and mean shift, and the predicted classes' PSI, against
    the training statistics in its manifest. Exit 1 when it drifts past the alert thresholds with enough samples."""
    from maasctl import drift
    from maasctl.monitor import model_reports

    name, _, version = model.partition(":")
    if version and not version.isdecimal():
        raise MaasctlError(f"model {model!r}: the version after ':' must be a number")
    reports = model_reports(url, name, int(version) if version else None, token)
    if json_:
        _emit_json({"reports": reports, "thresholds": _drift_thresholds()})
    else:
        from rich.console import Console
        from rich.table import Table

        for report in reports:
            table = Table(title=f"{report['model']} version {report['version']}: {report['samples']} samples")
            for column in ("value", "PSI", "mean shift (sd)", ""):
                table.add_column(column, justify="left" if column == "value" else "right")
            for value in report["values"]:
                flag = "DRIFT" if value["drifting"] else ""
                table.add_row(value["name"], f"{value['psi']:.3f}", f"{value['mean_shift']:+.2f}", flag)
            if report["prediction_psi"] is not None:
                flag = "DRIFT" if report["predictions_drifting"] else ""
                table.add_row("predicted classes", f"{report['prediction_psi']:.3f}", "", flag)
            Console(highlight=False).print(table)
            if not report["enough_samples"]:
                _log(f"only {report['samples']} of the {drift.MIN_SAMPLES} samples needed to judge drift")
    if any(r["drifting"] for r in reports):
        raise typer.Exit(1)


def _drift_thresholds() -> dict[str, float]:
    from maasctl import drift

    return {"psi": drift.PSI_THRESHOLD, "mean_shift": drift.SHIFT_THRESHOLD, "min_samples": drift.MIN_SAMPLES}


@app.command(
    help="Predict labels for images and tensors (files, folders, globs, stdin), locally or through a server, "
    "and gate CI on expected labels. Exit codes: 0 ok, 1 gate failed, 2 usage or input error, 3 model or server "
    "unavailable. All options: maasctl predict --help.",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
def predict(ctx: typer.Context) -> None:
    # The arguments go to predict's own argparse parser untouched (maasctl/predict/command.py says why);
    # `python -m maasctl.predict` runs the same parser without typer, for the fastest start.
    from maasctl.predict.command import main as predict_main

    raise typer.Exit(predict_main(ctx.args))


@app.command()
def evaluate(
    model: str = typer.Argument(..., help="repository name, name:version, or a model folder path"),
    split: str = typer.Option(
        "test", "--split", help="train | validation | test, as the model's recipe splits its data"
    ),
    repo: Path = REPO,
    json_: bool = JSON,
) -> None:
    """Score the exported ONNX model (onnxruntime, no torch) on its recipe's data split."""
    from maasctl.evaluate import evaluate_model

    result = evaluate_model(model, repo, split)
    m = result["metrics"]
    where = f"{result['name']} version {result['version']} on {result['samples']} {split} samples"
    if result["task"] == "regression":
        _log(f"{where}: RMSE {m['rmse']:.6g}, MAE {m['mae']:.6g}, R² {m['r2']:.6f}")
    else:
        auc = f", ROC AUC {m['roc_auc']:.4f}" if m.get("roc_auc") is not None else ""
        _log(
            f"{where}: accuracy {m['accuracy']:.2%}, macro F1 {m['macro_f1']:.4f}, macro precision "
            f"{m['macro_precision']:.4f}, macro recall {m['macro_recall']:.4f}{auc}"
        )
    if json_:
        _emit_json(result)


@app.command()
def benchmark(
    models: list[str] = typer.Argument(
        ...,
        help="repository names, name:version, model folders, or run folders (artifacts/runs/NAME: exported to a temporary place)",
    ),
    device: str = typer.Option("cpu", "--device", help="cpu | auto | cuda: where onnxruntime runs"),
    split: str = typer.Option("test", "--split", help="the recipe's split to score and time on"),
    repeats: int = typer.Option(30, "--repeats", help="timed runs per batch size (the median is reported)"),
    repo: Path = REPO,
    json_: bool = JSON,
) -> None:
    """Model variants side by side: parameters, file size, score, and onnxruntime latency at batch 1 and 32."""
    from maasctl.benchmark import benchmark_models

    rows = benchmark_models(models, repo, device=device, split=split, repeats=repeats, log=_log)
    if json_:
        _emit_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "version", "parameters", "size", f"{split} score", "batch 1 ms", "batch 32 ms", "provider")
    for r in rows:
        table.add_row(
            r["model"],
            "run" if r["kind"] == "run" else str(r["version"]),
            "-" if r["parameters"] is None else f"{r['parameters']:,}",
            f"{r['bytes'] / 1e6:.2f} MB",
            _headline(r["metrics"]),
            f"{r['latency_ms_b1']:.3f}",
            f"{r['latency_ms_b32']:.3f}",
            r["provider"],
        )
    Console().print(table)


def _headline(metrics: dict[str, Any]) -> str:
    """The one figure a table row shows: accuracy for classes, RMSE for values."""
    if "accuracy" in metrics:
        return f"accuracy {metrics['accuracy']:.2%}"
    if "rmse" in metrics:
        return f"RMSE {metrics['rmse']:.4g}"
    return "-"


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context) -> None:
    """The model architectures a recipe's model.name may use (the registry)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table

    from maasctl.models import list_models
    from maasctl.models.registry import get_model_entry

    table = Table("name", "inputs", "model.params (defaults)", "description")
    for name in list_models():
        entry = get_model_entry(name)
        params = ", ".join(f"{k}={v!r}" for k, v in entry.params.items())
        table.add_row(name, ", ".join(entry.inputs), params, entry.description)
    Console(soft_wrap=True).print(table)


@models_app.command("list")
def models_list(repo: Path = REPO, json_: bool = JSON) -> None:
    """The model repository: names, versions, test accuracy, sizes."""
    from maasctl.repository import ModelRepository

    repository = ModelRepository(repo)
    rows = []
    for name in repository.names():
        for version in repository.versions(name):
            manifest = repository.get(name, version).manifest()
            rows.append(
                {
                    "name": name,
                    "version": version,
                    "test_accuracy": manifest.get("metrics", {}).get("test_accuracy"),
                    "bytes": manifest["onnx"]["bytes"],
                    "created": manifest.get("created"),
                    "exporter": manifest["onnx"].get("exporter"),
                }
            )
    if json_:
        _emit_json({"repository": str(repo), "models": rows})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "version", "test accuracy", "size", "created", title=str(repo))
    for r in rows:
        acc = f"{r['test_accuracy']:.2%}" if r["test_accuracy"] is not None else "-"
        table.add_row(r["name"], str(r["version"]), acc, f"{r['bytes'] / 1024:.1f} KiB", r["created"] or "-")
    Console(soft_wrap=True).print(table)


@app.command()
def examples(
    dest: Path = typer.Argument(Path("data/examples"), help="folder to write the example datasets into"),
) -> None:
    """Write the example datasets that the recipes in recipes/ train on (no network needed)."""
    from maasctl.data.examples import write_examples

    for _name, path in write_examples(dest).items():
        _log(f"wrote {path}")


@app.command()
def doctor() -> None:
    """Versions, what torch and onnxruntime see (CUDA?), and known installation conflicts."""
    from maasctl.doctor import run_doctor

    raise typer.Exit(run_doctor(_stderr()))


@app.command()
def quickstart(
    epochs: int | None = typer.Option(None, "--epochs", help="override train.epochs of the default recipe"),
    samples: int = typer.Option(8, "--samples", help="held-out digits to write as PNG files and predict"),
    artifacts: Path = ARTIFACTS,
) -> None:
    """The whole path on the embedded digits: train the default recipe, export it, predict held-out images."""
    from maasctl.quickstart import run_quickstart

    run_quickstart(artifacts, epochs, samples, _log)


@recipe_app.command("show")
def recipe_show(
    recipe: Path | None = typer.Argument(None, help="recipe YAML; the default recipe when omitted"),
    set_: list[str] = SET,
) -> None:
    """Print the recipe resolved with every default, as YAML."""
    from maasctl.data.sources import describe_task
    from maasctl.recipe import dump_recipe, load_recipe

    resolved = load_recipe(recipe, set_)
    # The task `auto` resolves to, from the labels (it depends on the data, so it is a comment, not a key)
    sys.stdout.write(f"# task: {describe_task(resolved)}\n" + dump_recipe(resolved))


@recipe_app.command("schema")
def recipe_schema() -> None:
    """Print the recipe's JSON Schema (point your editor's YAML support at it for completion)."""
    from maasctl.recipe import Recipe

    _emit_json(Recipe.model_json_schema())


def main() -> None:
    try:
        app()
    except MaasctlError as exc:
        # Under torchrun every rank meets the same error: one copy of it is enough.
        if os.environ.get("RANK", "0") == "0":
            _stderr().print(f"error: {exc}", markup=False, style="red")
        sys.exit(exc.exit_code)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TRAIN_EXTRA:
            raise
        # A serving box installs the core only (no torch): say what to install, not a traceback.
        _stderr().print(
            f"error: this command needs {exc.name}, from maasctl's training extra (torch, torchvision, onnx, "
            "matplotlib), which this installation lacks: pip install 'maasctl[train]' (from a clone: pip install -e '.[train]'). "
            "serve, predict, evaluate and doctor work without it.",
            markup=False,
            style="red",
        )
        sys.exit(EXIT_UNAVAILABLE)
    except BrokenPipeError:  # `maasctl ... | head` closed the pipe: not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
