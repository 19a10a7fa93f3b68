"""timm backbones (model.name timm/<architecture>): built for the data, pretrained weights from local files, runs and the
offline hub cache, fine-tuning controls, and the whole train → export → int8 → predict path per family.

The tests build and save tiny timm models themselves (timm's test_* architectures, a few hundred thousand weights);
nothing is downloaded. The export of every family but one runs with MAASCTL_SLOW_TESTS=1.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from helpers import colour_images, run_cli

from maasctl.errors import UsageError
from maasctl.models import create_model

timm = pytest.importorskip("timm")
slow = pytest.mark.skipif(
    os.environ.get("MAASCTL_SLOW_TESTS") != "1", reason="slow on CPU; MAASCTL_SLOW_TESTS=1 runs it"
)
# The families a user is likely to pick, as timm's tiny test variants (same code paths, few weights).
FAMILIES = ["test_resnet", "test_efficientnet", "mobilenetv3_small_050", "test_convnext", "test_vit"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    for folder_, i, image in colour_images(root, 10, lambda i: (40 + i, 36), noise=30):
        image.save(folder_ / f"{i}.jpg")
    return root


def _safetensors(model, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("arch", FAMILIES)
def test_pretrained_file_loads_with_a_new_head_and_adapted_channels(arch, tmp_path):
    torch.manual_seed(0)
    source = timm.create_model(arch, num_classes=1000)  # as published: ImageNet head, RGB input
    weights = _safetensors(source, tmp_path / "w.safetensors")
    model = create_model(f"timm/{arch}", input_shape=(1, 32, 32), num_classes=4, pretrained=str(weights)).eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    cfg = model.pretrained_cfg
    own, theirs = model.state_dict(), source.state_dict()
    first = f"{cfg['first_conv']}.weight"
    np.testing.assert_allclose(own[first], theirs[first].sum(1, keepdim=True), rtol=1e-6)  # 3 channels summed to 1
    body = [k for k in own if k != first and not k.startswith(cfg["classifier"]) and "pos_embed" not in k]
    assert body and all(torch.equal(own[k], theirs[k]) for k in body)
    head = f"{cfg['classifier']}.weight"
    assert own[head].shape[0] == 4  # re-initialised for this data's classes


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache of this test's own, offline; the real one is back afterwards."""
    import importlib

    import huggingface_hub.constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    importlib.reload(huggingface_hub.constants)
    yield cache
    monkeypatch.undo()
    importlib.reload(huggingface_hub.constants)


def test_pretrained_errors_name_the_file_and_where_to_put_it(tmp_path, hf_cache):
    with pytest.raises(UsageError, match=f"there is no file at {tmp_path / 'nope.safetensors'}"):
        create_model(
            "timm/test_resnet", input_shape=(3, 32, 32), num_classes=2, pretrained=str(tmp_path / "nope.safetensors")
        )
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(UsageError, match="junk.pt cannot be read as weights"):
        create_model("timm/test_resnet", input_shape=(3, 32, 32), num_classes=2, pretrained=str(tmp_path / "junk.pt"))
    other = _safetensors(timm.create_model("test_convnext"), tmp_path / "convnext.safetensors")
    with pytest.raises(UsageError, match="does not fit timm/test_resnet .* tensors"):
        create_model("timm/test_resnet", input_shape=(3, 32, 32), num_classes=2, pretrained=str(other))
    with pytest.raises(
        UsageError, match=f"timm/resnet18.a1_in1k\\) are not in the local Hugging Face cache {hf_cache}"
    ):
        create_model("timm/resnet18", input_shape=(3, 32, 32), num_classes=2, pretrained="hub")
    with pytest.raises(UsageError, match="timm has no architecture 'resnet181'; did you mean"):
        create_model("timm/resnet181", input_shape=(3, 32, 32), num_classes=2)


def test_hub_weights_come_from_the_local_cache(hf_cache):
    """A file in the Hugging Face cache layout is found offline."""
    cache = hf_cache
    snap = cache / "models--timm--resnet18.a1_in1k" / "snapshots" / "0"
    snap.mkdir(parents=True)
    (cache / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (cache / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text("0")
    _safetensors(timm.create_model("resnet18"), snap / "model.safetensors")
    model = create_model("timm/resnet18", input_shape=(3, 32, 32), num_classes=3, pretrained="hub")
    assert model.fc.out_features == 3


def _fit(folder, run_dir, *overrides):
    from maasctl.recipe import load_recipe
    from maasctl.train.trainer import Trainer

    keys = [
        "data.source=image_folder",
        f"data.root={folder}",
        "data.image_size=[32,32]",
        "train.device=cpu",
        "train.batch_size=8",
        "train.data_workers=1",
        "model.name=timm/test_resnet",
        *overrides,
    ]
    trainer = Trainer(load_recipe(None, keys))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    try:
        trainer.fit(run_dir)
    finally:
        trainer.close()
    return trainer, before


def test_frozen_backbone_keeps_its_weights_and_batchnorm_statistics(folder, tmp_path):
    weights = _safetensors(timm.create_model("test_resnet"), tmp_path / "w.safetensors")
    _, before = _fit(
        folder,
        tmp_path / "all",
        "train.epochs=2",
        f"model.params.pretrained={weights}",
        "train.finetune.freeze_backbone_epochs=all",
        "train.finetune.head_lr=0.05",
    )
    last = torch.load(tmp_path / "all" / "checkpoints" / "last.pt", weights_only=True)["model"]
    backbone = [k for k in last if not k.startswith("fc.")]
    assert all(torch.equal(last[k], before[k]) for k in backbone)  # weights and BatchNorm running statistics
    assert not torch.equal(last["fc.weight"], before["fc.weight"])


def test_backbone_unfreezes_after_n_epochs_and_layer_decay_orders_rates(folder, tmp_path):
    trainer, before = _fit(
        folder,
        tmp_path / "n",
        "train.epochs=2",
        "train.finetune.freeze_backbone_epochs=1",
        "train.finetune.layer_decay=0.5",
    )
    rates = [g["initial_lr"] for g in trainer.optimizer.param_groups]
    assert len(set(rates)) > 2 and max(rates) == trainer.recipe.train.optimizer.lr
    last = torch.load(tmp_path / "n" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert not torch.equal(last["conv1.0.weight"], before["conv1.0.weight"])  # the backbone learned in epoch 2


def test_recipe_takes_input_size_and_normalisation_from_timm(folder):
    from maasctl.recipe import load_recipe
    from maasctl.train.finetune import with_model_defaults

    r = with_model_defaults(
        load_recipe(None, ["data.source=image_folder", f"data.root={folder}", "model.name=timm/convnext_atto"])
    )
    assert r.data.image_size == (224, 224) and r.data.crop_fraction == 0.875 and r.data.interpolation == "bicubic"
    assert r.data.mean == [0.485, 0.456, 0.406]
    kept = with_model_defaults(
        load_recipe(
            None,
            [
                "data.source=image_folder",
                f"data.root={folder}",
                "model.name=timm/convnext_atto",
                "data.image_size=[64,64]",
            ],
        )
    )
    assert kept.data.image_size == (64, 64)  # what the recipe says wins


@pytest.mark.parametrize("arch", [FAMILIES[0], *(pytest.param(a, marks=slow) for a in FAMILIES[1:])])
def test_train_export_int8_and_predict(arch, folder, tmp_path):
    """Fine-tuned from a run of another dataset's classes (run:NAME), exported with parity, int8, predicted."""
    weights = _safetensors(timm.create_model(arch, num_classes=10), tmp_path / "w.safetensors")
    common = [
        "--set", "data.source=image_folder", "--set", f"data.root={folder}", "--set", "data.image_size=[32,32]",
        "--set", f"model.name=timm/{arch}", "--set", "train.data_workers=1", "--set", "train.batch_size=8",
    ]  # fmt: skip
    run_cli(
        "train",
        *common,
        "--set",
        f"model.params.pretrained={weights}",
        "--set",
        "train.epochs=1",
        "--name",
        "first",
        cwd=tmp_path,
    )
    out = run_cli(
        "train", *common, "--set", "model.params.pretrained=run:first", "--set", "train.epochs=1", "--name", "second", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert json.loads(out.stdout)["metrics"]["test_accuracy"] >= 0
    exported = json.loads(run_cli("export", "second", "--name", "m", "--json", cwd=tmp_path).stdout)
    assert exported["top1_agreement"] == 1.0
    manifest = json.loads((tmp_path / "artifacts" / "models" / "m" / "1" / "model.json").read_text())
    assert manifest["preprocessing"]["resize"] == "shorter_side_center_crop"
    run_cli("export", "second", "--name", "m", "--quantize", "int8", "--force", cwd=tmp_path)
    pred = run_cli("predict", "m:2", str(folder / "red"), "--json", cwd=tmp_path)
    rows = json.loads(pred.stdout)
    assert len(rows["predictions"] if isinstance(rows, dict) else rows) == 10


def test_the_fine_tuning_example_recipe_is_valid_and_resolves_from_timm():
    from helpers import ROOT

    from maasctl.recipe import load_recipe
    from maasctl.train.finetune import with_model_defaults

    path = ROOT / "recipes" / "photos_resnet50_finetune.yaml"
    assert path.read_text().startswith("# maasctl train recipes/photos_resnet50_finetune.yaml\n")
    r = with_model_defaults(load_recipe(path, []))
    assert r.data.image_size == (224, 224) and r.data.interpolation == "bicubic" and r.data.crop_fraction == 0.95
