"""Every registered model on tiny inputs of each kind it takes (timm style: registering a model puts it under test).

Per model and input kind: the output shape; a training step that lowers the loss; ONNX export with dynamic batch
(and sequence) axes matching PyTorch in onnxruntime; padding invariance for token models; the `pretrained`
state_dict round trip and its errors. The slowest cases (dynamo exports of the larger torchvision networks,
ViT-B's training step and its 340 MB state_dict) run only with MAASCTL_SLOW_TESTS=1.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maasctl.errors import UsageError
from maasctl.models import create_model, list_models
from maasctl.models.registry import get_model_entry

NUM_CLASSES = 5
VOCAB = 50
# One sample's shape per input kind; the first is the one trained and exported.
SHAPES = {
    "image": [(3, 32, 32), (1, 8, 8)],
    "features": [(13,)],
    "sequence": [(12, 5)],
    "tokens": [(12,)],
    "subword": [(3, 12)],  # packed token ids, token type ids, attention mask (maasctl/models/hf.py)
}
# Subword models (pretrained encoders) are built here from a tiny BERT config, with no weights to read.
TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 50,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
}
# Settings besides the defaults that take another code path: the padding-aware backward direction, "last" pooling.
VARIANTS = {
    "lstm": [{"bidirectional": True, "layers": 2, "pool": "last"}],
    "gru": [{"bidirectional": True, "layers": 2, "pool": "last"}],
}
# The exporter each family is exported with; dynamo unless named. LSTM/GRU: see test_rnn_dynamo_export_in_a_fresh_process.
EXPORTER = {"lstm": "torchscript", "gru": "torchscript"}
# Cases of 10 s and more on two cores, run with MAASCTL_SLOW_TESTS=1.
SLOW_TRAIN = {"vit_b_16"}  # Adam over 86M weights
SLOW_EXPORT = {
    "resnet50",
    "vit_b_16",
    "efficientnet_b0",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
}  # dynamo: 10-30 s each
SLOW_FILE = {"resnet50", "vit_b_16"}  # state_dict files of 90 and 340 MB
slow = pytest.mark.skipif(
    os.environ.get("MAASCTL_SLOW_TESTS") != "1", reason="slow on CPU; MAASCTL_SLOW_TESTS=1 runs it"
)


def _cases(*, all_shapes: bool = False, small: bool = False, kinds: tuple[str, ...] | None = None, slow_for=()):
    """(name, kind, shape, params) for every model and input kind it takes: the first shape of each kind, the
    last (smallest) with `small`, or all of them; each with the default params and its VARIANTS."""
    out = []
    for name in list_models():
        for kind in get_model_entry(name).inputs:
            if kinds and kind not in kinds:
                continue
            for shape in SHAPES[kind] if all_shapes else SHAPES[kind][-1:] if small else SHAPES[kind][:1]:
                for params in [{}, *VARIANTS.get(name, [])]:
                    extra = "-".join(f"{k}={v}" for k, v in params.items())
                    case_id = "-".join(filter(None, [name, kind, "x".join(map(str, shape)), extra]))
                    marks = [slow] if name in slow_for else []
                    out.append(pytest.param(name, kind, shape, params, id=case_id, marks=marks))
    return out


def _build(
    name: str,
    kind: str,
    shape: tuple[int, ...],
    params: dict | None = None,
    num_classes: int = NUM_CLASSES,
    seed: int = 0,
):
    torch.manual_seed(seed)
    config = TINY_BERT if kind == "subword" else None
    return create_model(
        name,
        input_shape=shape,
        num_classes=num_classes,
        input_kind=kind,
        vocab_size=VOCAB,
        config=config,
        **(params or {}),
    )


def _inputs(kind: str, shape: tuple[int, ...], batch: int, length: int | None = None, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    size = [batch, *shape]
    if length is not None:
        size[1] = length
    if kind == "tokens":
        ids = torch.randint(1, VOCAB, size, generator=g)
        ids[0, size[1] // 2 :] = 0  # one row padded at the end, as text data comes
        return ids
    if kind == "subword":  # (batch, 3, T): ids, type ids, mask; one row padded at the end
        packed = torch.zeros(size, dtype=torch.int64)
        packed[:, 0] = torch.randint(1, VOCAB, (batch, size[2]), generator=g)
        packed[:, 2] = 1
        packed[0, :, size[2] // 2 :] = 0
        return packed
    return torch.randn(size, generator=g)


def _variable_length(name: str) -> bool:
    """Models for token inputs take any sequence length; the others (an MLP over a flattened sequence) do not."""
    return "tokens" in get_model_entry(name).inputs


# --- output shape ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kind, shape, params", _cases(all_shapes=True))
def test_output_shape(name, kind, shape, params):
    model = _build(name, kind, shape, params).eval()
    with torch.no_grad():
        logits = model(_inputs(kind, shape, batch=2))
    assert logits.shape == (2, NUM_CLASSES) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_every_model_describes_itself_and_its_inputs():
    for name in list_models():
        entry = get_model_entry(name)
        assert entry.description, f"{name} has no docstring: `maasctl models` shows its first line"
        assert entry.inputs and all(kind in SHAPES for kind in entry.inputs)


# --- training ----------------------------------------------------------------------------------------------


# Small images: a stem adapted to one channel, in a fraction of the time.
@pytest.mark.parametrize("name, kind, shape, params", _cases(small=True, slow_for=SLOW_TRAIN))
def test_a_training_step_lowers_the_loss(name, kind, shape, params):
    model = _build(name, kind, shape, params).train()
    x, y = _inputs(kind, shape, batch=4), torch.arange(4) % NUM_CLASSES
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss() -> torch.Tensor:
        torch.manual_seed(0)  # the same dropout masks every time: the loss is a function of the weights alone
        return F.cross_entropy(model(x), y)

    first = current = loss()
    for _ in range(3):  # one step almost always does it; allow a few before calling it a failure
        optimizer.zero_grad()
        current.backward()
        optimizer.step()
        current = loss()
        if current.item() < first.item():
            break
    assert current.item() < first.item(), f"loss went from {first.item():.4f} to {current.item():.4f}"


# --- ONNX ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_exporters():
    """The exporters' known warnings (pyproject turns warnings into errors), all from the TorchScript exporter: its
    deprecation, and its tracer's note on nn.RNNBase's own input-size check (a constant, rightly)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        warnings.filterwarnings(
            "ignore", "Converting a tensor to a Python boolean", torch.jit.TracerWarning, r"torch\.nn\.modules\.rnn"
        )
        # A caution about initial states frozen at the example's batch size; the parity checks at batch 1 and 3 show
        # these models create theirs from the input.
        warnings.filterwarnings("ignore", "Exporting a model to ONNX with a batch_size other than 1", UserWarning)
        yield


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, exporter: str, sequence_axis: bool) -> None:
    names = {"input_names": ["input"], "output_names": ["logits"], "opset_version": 18}
    with _quiet_exporters():
        if exporter == "dynamo":
            dims = {0: torch.export.Dim("batch", min=1, max=1024)}
            if sequence_axis:
                dims[1] = torch.export.Dim("sequence", min=2, max=512)
            torch.onnx.export(
                model,
                (example,),
                path,
                dynamo=True,
                dynamic_shapes=(dims,),
                external_data=False,
                verbose=False,
                **names,
            )
        else:
            axes = {"input": {0: "batch", 1: "sequence"} if sequence_axis else {0: "batch"}, "logits": {0: "batch"}}
            torch.onnx.export(model, (example,), path, dynamo=False, dynamic_axes=axes, **names)


@torch.no_grad()
def _make_outputs_informative(model: torch.nn.Module, x: torch.Tensor) -> None:
    """A fresh model can be useless for a parity check: zero-initialised weights (ViT's head) and BatchNorm running
    statistics that shrink deep nets' logits to 1e-10 (MobileNet, EfficientNet). Give the all-zero tensors small
    random values and set the BatchNorm statistics from a batch, so the logits have a scale to compare."""
    g = torch.Generator().manual_seed(2)
    for p in model.parameters():
        if not p.any():
            p.copy_(0.02 * torch.randn(p.shape, generator=g))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if norms:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: one pass sets the statistics of this batch
        model.train()
        model(x)
    model.eval()


@pytest.mark.parametrize("name, kind, shape, params", _cases(slow_for=SLOW_EXPORT))
def test_onnx_export_matches_pytorch(name, kind, shape, params, tmp_path):
    import onnxruntime as ort

    model = _build(name, kind, shape, params)
    _make_outputs_informative(model, _inputs(kind, shape, batch=8, seed=3))
    if kind == "subword":  # several named inputs: maasctl's text export and its parity check (two lengths, batches)
        from maasctl.export import text_export

        text_export.export(model.eval(), _inputs(kind, shape, batch=2).numpy(), tmp_path / "model.onnx", 18)
        diff, agreement, scale = text_export.parity(model, tmp_path / "model.onnx", _inputs(kind, shape, 6).numpy())
        assert diff <= 1e-4 * scale and agreement == 1.0
        return
    sequence_axis = kind in ("sequence", "tokens") and _variable_length(name)
    path = tmp_path / "model.onnx"
    export_onnx(model, _inputs(kind, shape, batch=2), path, EXPORTER.get(name, "dynamo"), sequence_axis)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    lengths = [None, shape[0] - 5, shape[0] + 8] if sequence_axis else [None]
    for length in lengths:
        for batch in (1, 3):
            x = _inputs(kind, shape, batch, length)
            with torch.no_grad():
                expected = model(x).numpy()
            assert expected.std() > 1e-3  # a meaningful comparison, not two arrays of near-zeros
            got = session.run(["logits"], {"input": x.numpy()})[0]
            assert got.shape == expected.shape
            # 1e-4, relative to logits beyond 1: EfficientNet's head init gives logits of 20-30, where float32
            # summation order alone (onnxruntime's kernels against PyTorch's) moves them by a few 1e-4.
            atol = 1e-4 * max(1.0, float(np.abs(expected).max()))
            np.testing.assert_allclose(got, expected, rtol=0, atol=atol, err_msg=f"batch {batch}, length {length}")


@slow
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_rnn_dynamo_export_in_a_fresh_process(name, tmp_path):
    """The dynamo exporter keeps an LSTM/GRU's sequence axis dynamic only in the first export of that op in a
    process (torch 2.14: torch.export._patches swaps the op's py_kernels without clearing its dispatch cache, so
    later exports silently freeze the length). `maasctl export` runs one export per process: that case works."""
    onnx_file = str(tmp_path / "m.onnx")
    script = f"""
import sys, torch, onnx, numpy as np, onnxruntime as ort
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_models import _build, _inputs, export_onnx
model = _build({name!r}, "tokens", (12,), {VARIANTS[name][0]!r}).eval()
export_onnx(model, _inputs("tokens", (12,), 2), {onnx_file!r}, "dynamo", True)
dims = [d.dim_param or d.dim_value for d in onnx.load({onnx_file!r}).graph.input[0].type.tensor_type.shape.dim]
assert dims == ["batch", "sequence"], dims
session = ort.InferenceSession({onnx_file!r}, providers=["CPUExecutionProvider"])
for batch, length in [(1, 12), (3, 7), (3, 20)]:
    x = _inputs("tokens", (12,), batch, length)
    with torch.no_grad():
        assert np.abs(session.run(None, {{"input": x.numpy()}})[0] - model(x).numpy()).max() < 1e-4, (batch, length)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


# --- padding -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kind, shape, params", _cases(kinds=("tokens",)))
def test_padding_does_not_change_predictions(name, kind, shape, params):
    model = _build(name, kind, shape, params).eval()
    g = torch.Generator().manual_seed(4)
    rows = [torch.randint(1, VOCAB, (n,), generator=g) for n in (12, 7, 3)]

    def batch(layout: str, length: int) -> torch.Tensor:
        out = torch.zeros(len(rows), length, dtype=torch.int64)
        for i, r in enumerate(rows):
            if layout == "end":
                out[i, : len(r)] = r
            elif layout == "start":
                out[i, length - len(r) :] = r
            else:  # "between": a padding step after every token
                out[i, : 2 * len(r) : 2] = r
        return out

    with torch.no_grad():
        alone = torch.cat([model(r.unsqueeze(0)) for r in rows])
        for layout, length in [("end", 12), ("end", 30), ("start", 16), ("between", 24)]:
            torch.testing.assert_close(
                model(batch(layout, length)), alone, rtol=0, atol=1e-5, msg=f"padding at the {layout}"
            )
        all_padding = model(torch.zeros(2, 6, dtype=torch.int64))
    assert torch.isfinite(all_padding).all()


# --- pretrained ----------------------------------------------------------------------------------------------


def _takes_weights_file(name: str) -> bool:
    """`pretrained` as a state_dict file; hf_encoder's names a model folder (tests/models/test_hf_text.py)."""
    return "pretrained" in get_model_entry(name).params and "subword" not in get_model_entry(name).inputs


def _pretrained_cases():
    out = []
    for name in list_models():
        if _takes_weights_file(name):
            marks = [slow] if name in SLOW_FILE else []
            out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.parametrize("name", _pretrained_cases())
def test_pretrained_state_dict_round_trip(name, tmp_path):
    shape = SHAPES["image"][-1]
    source = _build(name, "image", shape, seed=0).eval()
    saved = source.state_dict()
    path = tmp_path / "weights.pt"
    torch.save(saved, path)

    loaded = _build(name, "image", shape, {"pretrained": str(path)}, seed=1).eval()  # another seed: other weights
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0, msg=k)
    x = _inputs("image", shape, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)

    # Another class count: everything but the head comes from the file; the head keeps its fresh initialisation.
    other = _build(name, "image", shape, {"pretrained": str(path)}, num_classes=NUM_CLASSES + 2, seed=1).state_dict()
    fresh = _build(name, "image", shape, num_classes=NUM_CLASSES + 2, seed=1).state_dict()
    head = [k for k in other if other[k].shape != saved[k].shape]
    assert head and all(len(other[k]) == NUM_CLASSES + 2 for k in head)
    for k, v in other.items():
        torch.testing.assert_close(v, fresh[k] if k in head else saved[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("name", [n for n in list_models() if _takes_weights_file(n) and n not in SLOW_FILE])
def test_pretrained_problems_are_usage_errors_naming_the_file(name, tmp_path):
    shape = SHAPES["image"][-1]
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(UsageError, match=r"no file at .*nowhere\.pt"):
        _build(name, "image", shape, {"pretrained": str(missing)})

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(UsageError, match=r"garbage\.pt cannot be read as a PyTorch state_dict"):
        _build(name, "image", shape, {"pretrained": str(garbage)})

    other_channels = tmp_path / "rgb.pt"  # the same architecture built for 3 channels: the first conv differs
    torch.save(_build(name, "image", (3, 8, 8)).state_dict(), other_channels)
    with pytest.raises(UsageError, match=r"rgb\.pt does not fit .* differ in shape") as err:
        _build(name, "image", shape, {"pretrained": str(other_channels)})
    assert "\n" not in str(err.value)

    not_a_state_dict = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(UsageError, match=r"list\.pt holds a list, not a state_dict"):
        _build(name, "image", shape, {"pretrained": str(not_a_state_dict)})


@pytest.mark.parametrize("wrap", ["maasctl-checkpoint", "ddp-state_dict"])
def test_checkpoints_holding_a_state_dict_are_pretrained_files(wrap, tmp_path):
    """The "model" entry of a run's checkpoint (best.pt) warm-starts a new run with other classes; a "state_dict"
    saved from DistributedDataParallel ("module." keys) loads too."""
    source = _build("resnet18", "image", (1, 8, 8))
    if wrap == "maasctl-checkpoint":
        saved = {"model": source.state_dict(), "epoch": 3, "meta": {"model_name": "resnet18"}}
    else:
        saved = {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    torch.save(saved, tmp_path / "best.pt")
    model = _build("resnet18", "image", (1, 8, 8), {"pretrained": str(tmp_path / "best.pt")}, num_classes=3)
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight, rtol=0, atol=0)


# --- architecture choices ------------------------------------------------------------------------------------


def test_resnet_stem_follows_the_image_size():
    assert _build("resnet18", "image", (3, 32, 32)).conv1.kernel_size == (3, 3)  # auto: CIFAR-style below 64 px
    big = _build("resnet18", "image", (3, 64, 64))
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, torch.nn.MaxPool2d)
    assert _build("resnet18", "image", (3, 32, 32), {"stem": "imagenet"}).conv1.stride == (2, 2)
    with pytest.raises(UsageError, match="model.params.stem: resnet18 takes one of auto, imagenet, small"):
        _build("resnet18", "image", (3, 32, 32), {"stem": "tiny"})


def test_vit_takes_the_image_size_and_a_dividing_patch():
    assert _build("vit_b_16", "image", (3, 32, 32)).patch_size == 16
    assert _build("vit_b_16", "image", (1, 28, 28)).patch_size == 14
    with pytest.raises(UsageError, match="5 does not divide the image side 32"):
        _build("vit_b_16", "image", (3, 32, 32), {"patch_size": 5})
    with pytest.raises(UsageError, match="square images"):
        _build("vit_b_16", "image", (3, 32, 24))


def test_token_models_need_a_vocabulary_and_fit_max_len():
    with pytest.raises(UsageError, match="vocab_size"):
        create_model("gru", input_shape=(12,), num_classes=2, input_kind="tokens", vocab_size=None)
    with pytest.raises(UsageError, match="max_len"):
        _build("transformer", "tokens", (600,))
    with pytest.raises(UsageError, match="heads"):
        _build("transformer", "tokens", (12,), {"d_model": 30, "heads": 4})
