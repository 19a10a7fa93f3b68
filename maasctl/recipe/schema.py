"""The recipe schema: every key a recipe may hold, its type, its default and its meaning.

This file is the only place defaults live. `maasctl recipe show` prints them resolved;
`maasctl recipe schema` prints this as JSON Schema for editors.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    # Unknown keys are errors (with a "did you mean"), never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SplitConfig(Section):
    """Fractions of the dataset for each split; drawn stratified by class with the recipe's seed."""

    train: float = Field(0.7, gt=0, lt=1, description="fraction used to fit the model")
    validation: float = Field(0.15, gt=0, lt=1, description="fraction used to pick the best epoch")
    test: float = Field(0.15, gt=0, lt=1, description="fraction held out for the final metrics")

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> "SplitConfig":
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1.0, got {total:g}")
        return self


class DataConfig(Section):
    source: Literal["digits"] = Field(
        "digits", description="dataset: 'digits' is the 8x8 handwritten digits set embedded in maasctl"
    )
    split: SplitConfig = Field(default_factory=SplitConfig)


class ModelConfig(Section):
    name: str = Field("cnn_small", description="a name from the model registry (`maasctl models`)")
    params: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments for the model factory, e.g. {width: 32, dropout: 0.1}"
    )


class OptimizerConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(3e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")


class EarlyStoppingConfig(Section):
    patience: int | None = Field(None, ge=1, description="stop after this many epochs without improvement; null: never")
    min_delta: float = Field(0.0, ge=0, description="smallest change of the best metric that counts as improvement")


class TrainConfig(Section):
    epochs: int = Field(20, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1)
    seed: int = Field(0, description="seeds the split, the initial weights and the batch order")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="learning-rate schedule over all steps")
    warmup_epochs: float = Field(0.0, ge=0, description="linear learning-rate warm-up from 0, in epochs (fractions allowed)")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient's global norm to this; null: no clipping")
    best_metric: Literal["val_accuracy", "val_loss", "val_macro_f1"] = Field(
        "val_accuracy", description="picks best.pt and drives early stopping (ties on accuracy/F1 go to lower loss)"
    )
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)


class ExportConfig(Section):
    opset: int = Field(18, ge=13, le=23, description="ONNX opset of the exported model")
    atol: float = Field(1e-4, gt=0, description="largest |onnx - torch| difference the parity check accepts")


class Recipe(Section):
    """A training recipe. Omitted keys take the defaults below; the resolved recipe is saved with each run."""

    name: str = Field(
        "digits-cnn", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="default run and model name"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
