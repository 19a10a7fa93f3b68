"""The deployment kit in deploy/: Kubernetes kinds validated offline against the API schemas (kubernetes-validate,
strict: an unknown field fails), KServe resources and the ServiceMonitor against their projects' CRD schemas (pruned
copies in schemas/),
and every container command parsed by the real `maasctl serve` CLI, so the kit cannot drift from the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml
from helpers import ROOT

from maasctl.cli import app

DEPLOY = ROOT / "deploy"
SCHEMAS = Path(__file__).parent / "schemas"
K8S_VERSION = "1.30"  # the oldest Kubernetes these manifests are meant for
MODELS = "/mnt/models"  # where KServe's storage initializer puts storageUri; the images read it too


def docs(*names: str) -> list[dict]:
    return [d for name in names for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def serve_context(argv: list[str]) -> typer.Context:
    """Parse `maasctl ARGV` with the CLI's own parser (types, ranges, unknown options), as the container would."""
    group = typer.main.get_command(app)
    assert argv[:2] == ["maasctl", "serve"], argv
    return group.commands["serve"].make_context("serve", list(argv[2:]))


def serve_flags() -> set[str]:
    command = typer.main.get_command(app).commands["serve"]
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def dockerfile(name: str) -> dict[str, list[str]]:
    """Instruction -> its arguments (JSON form for ENTRYPOINT and CMD), with continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / name).read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, rest = line.strip().partition(" ")
            value = json.loads(rest) if instruction in ("ENTRYPOINT", "CMD") else [rest]
            found.setdefault(instruction, []).extend(value)
    return found


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_image_entrypoint_is_a_valid_serve_command(name):
    image = dockerfile(name)
    ctx = serve_context(image["ENTRYPOINT"] + image["CMD"])
    assert ctx.params["repo"] == Path(MODELS)
    assert ctx.params["host"] == "0.0.0.0"  # reachable from outside the container
    assert image["EXPOSE"] == [f"{ctx.params['port']} {ctx.params['grpc_port']}"]  # REST and gRPC
    assert image["USER"] == ["1000:1000"]
    assert ctx.params["token"] is None  # never baked into an image: MAASCTL_TOKEN at run time
    # Only what exists is copied (pip install . needs pyproject.toml, and the README it names).
    for copy in image["COPY"]:
        for source in copy.split()[:-1]:
            assert (ROOT / source).exists(), f"{name}: COPY {source} does not exist"


def test_cuda_image_swaps_onnxruntime_for_the_gpu_build():
    cpu, cuda = dockerfile("Dockerfile"), dockerfile("Dockerfile.cuda")
    install = " ".join(cuda["RUN"])
    assert "pip uninstall -y onnxruntime" in install and "onnxruntime-gpu" in install
    assert "onnxruntime-gpu" not in " ".join(cpu["RUN"])
    assert serve_context(cuda["ENTRYPOINT"] + cuda["CMD"]).params["device"] == "cuda"
    assert serve_context(cpu["ENTRYPOINT"] + cpu["CMD"]).params["device"] == "cpu"


def test_serve_help_lists_the_flags_the_kit_uses():
    """The real `maasctl serve --help`, as an operator reads it, names every flag the kit passes."""
    from helpers import run_cli

    helptext = run_cli("serve", "--help").stdout
    used = {a for c in served_containers() for a in c["args"]}
    for flag in sorted(a for a in used if a.startswith("--")):
        assert flag in helptext, flag


def test_container_args_parse_with_the_cli():
    containers = served_containers()
    assert len(containers) == 2  # the Deployment's and the ServingRuntime's
    for container in containers:
        # No `command`: the image's ENTRYPOINT (maasctl serve) runs with these args.
        assert "command" not in container
        ctx = serve_context([*dockerfile("Dockerfile")["ENTRYPOINT"], *container["args"]])
        assert ctx.params["repo"] == Path(MODELS)
        assert ctx.params["host"] == "0.0.0.0"
        assert [p["containerPort"] for p in container["ports"]] == [ctx.params["port"], ctx.params["grpc_port"]]


def test_a_flag_the_cli_lacks_is_caught():
    # typer's parser names the unknown option (NoSuchOption, a UsageError: exit 2 on the command line).
    with pytest.raises(Exception, match="No such option: --max-batch"):
        serve_context(["maasctl", "serve", "--max-batch", "8"])


@pytest.mark.parametrize("name", ["kubernetes/maasctl.yaml", "kubernetes/hpa.yaml"], ids=str)
def test_core_kinds_are_valid_kubernetes(name):
    for doc in docs(name):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_validation_catches_a_misspelt_field():
    """The check above can fail: a typo in a probe is refused, not ignored."""
    (deployment,) = [d for d in docs("kubernetes/maasctl.yaml") if d["kind"] == "Deployment"]
    _container(deployment)["livenessProbe"]["periodSecond"] = 10
    with pytest.raises(kubernetes_validate.ValidationError, match="periodSecond"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_deployment_probes_token_and_resources():
    deployment, service = docs("kubernetes/maasctl.yaml")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["runAsNonRoot"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    startup = container["startupProbe"]
    # Models load before the port opens: minutes of grace before liveness may restart the pod.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    (token,) = [e for e in container["env"] if e["name"] == "MAASCTL_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "maasctl-token", "key": "token"}
    # The token option really reads that variable (else the server would run open).
    assert (
        "MAASCTL_TOKEN"
        in next(p for p in typer.main.get_command(app).commands["serve"].params if p.name == "token").envvar
    )
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    drain = float(serve_context(["maasctl", "serve", *container["args"]]).params["drain_seconds"])
    assert pod["terminationGracePeriodSeconds"] > drain
    assert any(m["mountPath"] == MODELS and m["readOnly"] for m in container["volumeMounts"])
    named_port = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in named_port
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_hpa_targets_the_deployment():
    (hpa,) = docs("kubernetes/hpa.yaml")
    (deployment,) = [d for d in docs("kubernetes/maasctl.yaml") if d["kind"] == "Deployment"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_servicemonitor_scrapes_the_service_with_the_token():
    (monitor,) = docs("kubernetes/servicemonitor.yaml")
    _deployment, service = docs("kubernetes/maasctl.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {"name": "maasctl-token", "key": "token"}


# Custom resources, checked against their projects' own CRD schemas (pruned copies, see prune_crd.py).
CRDS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntime.v1alpha1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice.v1beta1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.v1.json",
}
CRD_FILES = [
    "kserve/servingruntime.yaml",
    "kserve/inferenceservice.yaml",
    "kserve/inferenceservice-canary.yaml",
    "kubernetes/servicemonitor.yaml",
]


def crd_validate(doc: dict) -> None:
    schema = json.loads((SCHEMAS / CRDS[(doc["apiVersion"], doc["kind"])]).read_text())
    jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)


@pytest.mark.parametrize("name", CRD_FILES, ids=str)
def test_custom_resources_match_their_crd_schema(name):
    for doc in docs(name):
        crd_validate(doc)


def test_kserve_schema_catches_a_misspelt_field():
    (isvc,) = docs("kserve/inferenceservice.yaml")
    isvc["spec"]["predictor"]["model"]["storageURI"] = isvc["spec"]["predictor"]["model"].pop("storageUri")
    with pytest.raises(jsonschema.ValidationError, match="storageURI"):
        crd_validate(isvc)


def test_kserve_runtime_and_services_fit_together():
    (runtime,) = docs("kserve/servingruntime.yaml")
    spec = runtime["spec"]
    assert [f["name"] for f in spec["supportedModelFormats"]] == ["onnx"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"  # KServe injects storage and probes into this one
    assert set(spec["protocolVersions"]) <= {"v1", "v2", "grpc-v1", "grpc-v2"}
    # grpc-v2 is declared exactly when the runtime's `maasctl serve` opens a gRPC port to back it, named h2c as
    # KServe expects of a gRPC container port.
    ctx = serve_context([*dockerfile("Dockerfile")["ENTRYPOINT"], *container["args"]])
    assert ("grpc-v2" in spec["protocolVersions"]) == (ctx.params["grpc_port"] is not None)
    if ctx.params["grpc_port"] is not None:
        assert {"name": "h2c", "containerPort": ctx.params["grpc_port"], "protocol": "TCP"} in container["ports"]
    isvcs = docs("kserve/inferenceservice.yaml", "kserve/inferenceservice-canary.yaml")
    for isvc in isvcs:
        model = isvc["spec"]["predictor"]["model"]
        assert model["runtime"] == runtime["metadata"]["name"]
        assert model["modelFormat"]["name"] in [f["name"] for f in spec["supportedModelFormats"]]
        assert model["protocolVersion"] in spec["protocolVersions"]
        assert re.match(r"^(s3|gs|pvc|https?|hdfs|webhdfs|oci|hf)://", model["storageUri"]), model["storageUri"]
    (canary,) = [i for i in isvcs if "canaryTrafficPercent" in i["spec"]["predictor"]]
    assert 0 < canary["spec"]["predictor"]["canaryTrafficPercent"] < 100
    assert canary["metadata"]["name"] == isvcs[0]["metadata"]["name"]  # a canary updates the same service


def served_containers() -> list[dict]:
    found = docs("kubernetes/maasctl.yaml", "kserve/servingruntime.yaml")
    return [_container(d) for d in found if d["kind"] in ("Deployment", "ServingRuntime")]


def _container(doc: dict) -> dict:
    spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]
    (container,) = spec["containers"]
    return container
