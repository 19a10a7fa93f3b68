"""Recipes: the YAML that says what to train. `schema` is the one place defaults live; `load` reads,
overrides and validates. Nothing here imports torch."""

from maasctl.recipe.load import RecipeError, dump_recipe, load_recipe, recipe_sha256
from maasctl.recipe.schema import Recipe

__all__ = ["Recipe", "RecipeError", "dump_recipe", "load_recipe", "recipe_sha256"]
