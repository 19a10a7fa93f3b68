"""Recipes: defaults from one schema, every problem reported at once with key paths and suggestions."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import ROOT, run_cli

from maasctl.recipe import RecipeError, load_recipe


def test_misspelt_key_names_key_file_and_suggestion_exit_2(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train:\n  epocs: 3\n  optimizer: {name: adamw, lr: 0.01}\n")
    proc = run_cli("train", str(recipe), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "train.epocs" in proc.stderr and "did you mean 'epochs'" in proc.stderr
    assert str(recipe) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "artifacts").exists()  # nothing half-written


def test_every_problem_is_reported_at_once(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("modle: {}\ntrain:\n  epochs: 0\n  optimizer: {name: adamm}\ndata:\n  split: {train: 0.9}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    message = str(err.value)
    assert "4 problems" in message
    assert "modle: unknown key; did you mean 'model'?" in message
    assert "train.epochs" in message and "greater than or equal to 1" in message
    assert "train.optimizer.name" in message and "did you mean 'adam" in message
    assert "data.split" in message and "must be 1.0" in message


def test_overrides_are_typed_and_marked_in_errors(tmp_path):
    recipe = load_recipe(None, ["train.epochs=7", "model.params.width=8", "train.optimizer.lr=1e-3"])
    assert recipe.train.epochs == 7 and recipe.model.params == {"width": 8} and recipe.train.optimizer.lr == 0.001
    with pytest.raises(RecipeError, match=r"train.batch_size \(from --set\)"):
        load_recipe(None, ["train.batch_size=lots"])
    with pytest.raises(RecipeError, match="expected key.path=value"):
        load_recipe(None, ["train.epochs"])
    with pytest.raises(RecipeError, match=r"train.epochs \(from --set\): Input should be a valid integer"):
        load_recipe(None, ["train.epochs.x=1"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train: {epochs: 3}\n")
    with pytest.raises(RecipeError, match="train.epochs is a value, not a section"):
        load_recipe(recipe, ["train.epochs.x=1"])


def test_yaml_errors_and_non_mappings_are_clear(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(RecipeError, match=r"not valid YAML at line \d+"):
        load_recipe(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_recipe(listy)
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(evil)


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").rglob("*.yaml")), ids=lambda p: p.name)
def test_example_recipes_validate_and_say_how_to_run_them(path):
    load_recipe(path)
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# ") and f"maasctl train recipes/{path.relative_to(ROOT / 'recipes')}" in first_line


def test_recipe_show_prints_defaults_and_schema_is_json_schema():
    shown = yaml.safe_load(run_cli("recipe", "show", "--set", "train.epochs=4").stdout)
    assert shown["train"]["epochs"] == 4
    assert shown["train"]["optimizer"]["name"] == "adamw"  # a default, filled in
    assert shown == yaml.safe_load(
        run_cli("recipe", "show", str(ROOT / "recipes" / "digits_cnn.yaml"), "--set", "train.epochs=4").stdout
    )
    schema = json.loads(run_cli("recipe", "schema").stdout)
    assert schema["additionalProperties"] is False
    assert {"name", "data", "model", "train", "export"} <= set(schema["properties"])
