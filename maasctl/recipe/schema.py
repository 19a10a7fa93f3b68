"""The recipe schema: every key a recipe may hold, its type, its default and its meaning.

This file is the only place defaults live. `maasctl recipe show` prints them resolved;
`maasctl recipe schema` prints this as JSON Schema for editors.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, field_validator, model_validator


class Section(BaseModel):
    # Unknown keys are errors (with a "did you mean"), never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SplitConfig(Section):
    """Fractions of the dataset for each split; drawn stratified by class with the recipe's seed."""

    train: float = Field(0.7, gt=0, lt=1, description="fraction used to fit the model")
    validation: float = Field(0.15, gt=0, lt=1, description="fraction used to pick the best epoch")
    test: float = Field(0.15, gt=0, lt=1, description="fraction held out for the final metrics")

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1.0, got {total:g}")
        return self


class AugmentConfig(Section):
    """Training-time image augmentation, applied per batch (never at validation, test or serving time)."""

    random_crop_padding: int = Field(
        0, ge=0, description="pad by this many pixels, then crop back at a random offset; 0: off"
    )
    horizontal_flip: bool = Field(False, description="flip half of the images left-right")
    # Per-image augmentation with torchvision.transforms.v2, in the DataLoader workers: streamed image sources only.
    random_resized_crop: tuple[float, float] | None = Field(
        None,
        description="streamed images: crop a random area of this share range of the image (e.g. [0.08, 1.0]) at a "
        "random aspect ratio, resized to image_size; null: resize the shorter side and crop the centre, as evaluation",
    )
    color_jitter: float = Field(
        0.0, ge=0, le=1, description="streamed images: random brightness, contrast and saturation ±this; 0: off"
    )
    auto_augment: Literal["none", "trivial", "randaugment"] = Field(
        "none", description="streamed images: TrivialAugmentWide or RandAugment (torchvision defaults)"
    )
    random_erasing: float = Field(
        0.0, ge=0, le=1, description="streamed images: probability of erasing a random rectangle; 0: off"
    )
    # Batch-level, on the device: any image source.
    mixup: float = Field(0.0, ge=0, description="MixUp alpha (Beta(alpha, alpha) mixing of batch pairs); 0: off")
    cutmix: float = Field(0.0, ge=0, description="CutMix alpha; with mixup too, each batch gets one of the two")

    @property
    def per_image(self) -> list[str]:
        """The keys set that need decoded images (streamed sources), by name."""
        on = {
            "random_resized_crop": self.random_resized_crop is not None,
            "color_jitter": self.color_jitter > 0,
            "auto_augment": self.auto_augment != "none",
            "random_erasing": self.random_erasing > 0,
        }
        return [k for k, v in on.items() if v]


class DigitsData(Section):
    source: Literal["digits"] = Field("digits", description="the 8x8 handwritten digits embedded in maasctl")
    split: SplitConfig = Field(default_factory=SplitConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class TorchvisionData(Section):
    """A torchvision dataset by name; its official test split is the test split here."""

    source: Literal["torchvision"]
    name: Literal["MNIST", "FashionMNIST", "KMNIST", "CIFAR10", "CIFAR100"]
    root: str = Field("data", description="folder holding the dataset files (torchvision's layout)")
    download: bool = Field(False, description="fetch the files when missing (needs internet)")
    validation: float = Field(0.1, gt=0, lt=1, description="fraction of the training split held out for validation")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class StreamedImages(Section):
    """Keys shared by the image sources read from files: listed and split up front, decoded per sample while training."""

    image_size: tuple[int, int] | None = Field(
        None, description="[height, width] of the model input; null: the model's pretrained size (timm), else [32, 32]"
    )
    channels: Literal[1, 3] = Field(3, description="1: greyscale, 3: RGB")
    crop_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="evaluation and serving: resize the shorter side to image_size / crop_fraction, then crop the "
        "centre; null: the model's pretrained value (timm), else 1.0",
    )
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"] | None = Field(
        None, description="resampling filter (Pillow); null: the model's pretrained one (timm), else bilinear"
    )
    mean: list[float] | None = Field(
        None, description="per-channel mean of pixels in [0, 1]; null: the model's pretrained one, else ImageNet's"
    )
    std: list[float] | None = Field(None, description="per-channel std; null: as mean")
    max_unreadable: float = Field(
        0.01,
        ge=0,
        le=1,
        description="share of image files that may be unreadable (skipped, listed in skipped.csv); above it training "
        "refuses to start",
    )
    cache: Literal["none", "ram", "disk"] = Field(
        "none",
        description="keep each image after decoding and the deterministic resize (the shorter side to image_size / "
        "crop_fraction, as evaluation resizes; augmentation then starts from it) as uint8, so later epochs skip the "
        "decode: ram = shared memory of the training process and its workers; disk = memory-mapped files under "
        "cache_dir, reused by later runs while the files (path, size, mtime) and the resize are the same; refused "
        "when the estimate exceeds the available memory or disk",
    )
    cache_dir: str | None = Field(
        None, description="data.cache disk: where the cache lives; null: $XDG_CACHE_HOME/maasctl/images (~/.cache)"
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class ImageFolderData(StreamedImages):
    """`root/<class>/<image>`: one sub-folder per class, any format Pillow reads."""

    source: Literal["image_folder"]
    root: str


class ImageCsvData(StreamedImages):
    """A CSV index of images, one row per image: a path (relative to the CSV's folder, or absolute) and a label, as
    Kaggle and labelling tools export. Other columns are ignored."""

    source: Literal["image_csv"]
    path: str = Field(description="the CSV file")
    path_column: str = "path"
    label_column: str = "label"


class CsvData(Section):
    """A table (CSV, or Parquet when pyarrow is installed): numeric and categorical feature columns and a label column.

    Numeric columns: blanks (empty, NA, NaN, null) get the training median plus a missing-indicator input, then
    standardisation with training statistics. Categorical columns (declared, or holding any non-number) are
    one-hot over a vocabulary from the training split, with <unk> and <missing> levels. Columns that cannot help
    (all blank, constant, an identifier) are dropped with a warning unless listed in keep_columns."""

    source: Literal["csv"]
    path: str = Field(description="a .csv file, or .parquet (needs pyarrow)")
    label_column: str = "label"
    feature_columns: list[str] | None = Field(None, description="null: every column but the label and drop_columns")
    categorical_columns: list[str] = Field(
        default_factory=list, description="columns to treat as categories even when they hold numbers (codes)"
    )
    drop_columns: list[str] = Field(default_factory=list, description="columns never used as features")
    keep_columns: list[str] = Field(
        default_factory=list, description="columns kept even when they look useless (constant, an identifier)"
    )
    min_category_count: int = Field(1, ge=1, description="a category seen fewer times in the training split is <unk>")
    max_categories: int = Field(50, ge=1, description="most frequent categories kept per column; the rest are <unk>")
    split: SplitConfig = Field(default_factory=SplitConfig)


class NpzData(Section):
    """Arrays in .npz: x and y, optionally x_test/y_test (then the test split is given) and label names in `labels`."""

    source: Literal["npz"]
    path: str
    kind: Literal["auto", "image", "features", "sequence", "tokens"] = Field(
        "auto", description="auto: 4-D x is images (N,C,H,W), 3-D sequences (N,T,F), 2-D features (N,F)"
    )
    split: SplitConfig = Field(default_factory=SplitConfig)


class TextData(Section):
    """Text classification from CSV or JSONL; the vocabulary is built from the training split and kept with the run."""

    source: Literal["text"]
    path: str
    format: Literal["auto", "csv", "jsonl"] = Field("auto", description="auto: by the file's suffix")
    text_column: str = "text"
    label_column: str = "label"
    max_len: int = Field(128, ge=1, description="tokens kept per text")
    vocab_size: int = Field(20000, ge=10, description="most frequent training tokens kept; the rest map to <unk>")
    min_freq: int = Field(1, ge=1)
    lowercase: bool = True
    tokenizer: str = Field(
        "words",
        description="words: a word vocabulary from the training split; wordpiece or bpe: a subword tokenizer trained "
        "on the training split (vocab_size, lowercase apply); otherwise a pretrained model's folder or hub id, whose "
        "tokenizer.json is used (hf_encoder models set this from model.params.pretrained)",
    )
    text_pair_column: str | None = Field(None, description="a second text column, for pair classification (subword)")
    split: SplitConfig = Field(default_factory=SplitConfig)
    # Not a recipe key: export and evaluate set the subword preprocessing the model was trained with, so the splits
    # are encoded with that tokenizer (trainers of `tokenizers` are not deterministic; a model folder may be gone).
    _subword_spec: dict[str, Any] | None = PrivateAttr(None)


DATA_SOURCES: dict[str, type[Section]] = {
    "digits": DigitsData,
    "torchvision": TorchvisionData,
    "image_folder": ImageFolderData,
    "image_csv": ImageCsvData,
    "csv": CsvData,
    "npz": NpzData,
    "text": TextData,
}


def _source_of(value: Any) -> str:
    # A data section without `source` is the default digits set, so `--set data.split.train=0.8` just works.
    if isinstance(value, dict):
        return value.get("source", "digits")
    return getattr(value, "source", "digits")


DataConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(tag)] for tag, cls in DATA_SOURCES.items())],  # type: ignore[misc]  # noqa: UP007 (a union built from a tuple)
    Discriminator(_source_of),
]


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
    nesterov: bool = Field(False, description="SGD only: Nesterov momentum")
    layer_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="hf_encoder: layer-wise lr decay (the head gets lr, each layer below this times the one above); "
        "hf_encoder models also get no weight decay on biases and norms",
    )


class EarlyStoppingConfig(Section):
    patience: int | None = Field(None, ge=1, description="stop after this many epochs without improvement; null: never")
    min_delta: float = Field(0.0, ge=0, description="smallest change of the best metric that counts as improvement")


class FinetuneConfig(Section):
    """Adapting pretrained weights (model.params.pretrained): which layers learn, and how fast."""

    freeze_backbone_epochs: int | Literal["all"] = Field(
        0,
        description="train only the classifier head for this many epochs, then everything; all: never unfreeze (a "
        "linear probe); 0: no freezing",
    )
    head_lr: float | None = Field(
        None, gt=0, description="peak learning rate of the classifier head; null: as the rest"
    )
    layer_decay: float | None = Field(
        None,
        gt=0,
        le=1,
        description="layer-wise learning-rate decay (timm models): each layer below the head learns at this factor "
        "times the layer above; null: one rate",
    )
    freeze_bn: bool = Field(
        True, description="BatchNorm running statistics of frozen layers stay as loaded while they are frozen"
    )

    @field_validator("freeze_backbone_epochs")
    @classmethod
    def _epochs(cls, value: Any) -> Any:
        if isinstance(value, int) and value < 0:
            raise ValueError("Input should be 0 or more, or all")
        return value


class TrainConfig(Section):
    epochs: int = Field(20, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1)
    seed: int = Field(0, description="seeds the split, the initial weights and the batch order")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU")
    schedule: Literal["cosine", "linear", "constant", "step", "onecycle"] = Field(
        "cosine",
        description="learning-rate schedule over all steps: cosine decay to 0; linear decay to 0; constant; step (times step_gamma "
        "every step_epochs); onecycle (rise to the peak over the first 30%, then cosine down to 0)",
    )
    step_epochs: float = Field(10, gt=0, description="schedule step: epochs between learning-rate drops")
    step_gamma: float = Field(0.1, gt=0, le=1, description="schedule step: factor applied at each drop")
    warmup_epochs: float = Field(
        0.0, ge=0, description="linear learning-rate warm-up from 0, in epochs (fractions allowed)"
    )
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    grad_accumulation: int = Field(
        1, ge=1, le=1024, description="micro-batches whose gradients add up before each optimizer step"
    )
    grad_clip: float | None = Field(
        None, gt=0, description="clip the gradient's global norm to this; null: no clipping"
    )
    loss: Literal["auto", "cross_entropy", "mse", "l1", "huber"] = Field(
        "auto",
        description="auto: cross_entropy for classification, mse for regression; l1 and huber are regression losses "
        "(on standardised targets)",
    )
    huber_delta: float = Field(
        1.0, gt=0, description="huber loss: where it turns from quadratic to linear (standard units)"
    )
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="classification: balanced weighs each class by n / (classes x its training count)"
    )
    best_metric: Literal[
        "auto", "val_accuracy", "val_loss", "val_macro_f1", "val_roc_auc", "val_mae", "val_rmse", "val_r2"
    ] = Field(
        "auto",
        description="picks best.pt and drives early stopping; auto: val_accuracy for classification, val_rmse for "
        "regression; val_roc_auc needs two classes (ties on accuracy/F1/AUC go to lower loss)",
    )
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    tensorboard: bool = Field(True, description="write TensorBoard event files to the run folder's tensorboard/")
    mlflow: bool = Field(
        False,
        description="log params, metrics and the run folder to MLflow (needs the mlflow package; MLFLOW_TRACKING_URI "
        "picks the server, default ./mlruns); the environment variable MAASCTL_MLFLOW=1 turns it on too",
    )
    # How training runs, not what it trains: these may change on --resume. Explicit values are honoured or refused
    # (never silently ignored); auto picks what is fast and safe on the device.
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto",
        description="mixed precision (torch.autocast): auto = bf16 on CUDA (fp16 with loss scaling where the GPU lacks "
        "bf16), off on CPU; bf16 also runs on CPU; fp16 needs CUDA",
    )
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto", description="NHWC memory format for image (N,C,H,W) inputs and model: auto = on with CUDA, off on CPU"
    )
    compile: bool = Field(
        False,
        description="torch.compile the training step: slower start, faster steps (on CPU it needs a C++ compiler)",
    )
    data_placement: Literal["auto", "device", "host"] = Field(
        "auto",
        description="where each data split lives while training: device = copied to the device once, batches indexed "
        "there (fastest; the split must fit in GPU memory); host = kept in CPU memory, each batch sliced by a DataLoader "
        "and copied over (pinned memory, non_blocking) for datasets larger than the GPU; auto = device on CPU, and on CUDA "
        "for the splits that fit together in half of the free GPU memory, host for the others",
    )
    max_batches_per_epoch: int | None = Field(
        None,
        ge=1,
        description="train on at most this many batches per epoch and process (the first of the epoch's shuffled "
        "order; validation and test stay whole); null: the whole training split. For smoke runs and benchmarks",
    )
    data_workers: int | Literal["auto"] = Field(
        "auto",
        description="DataLoader worker processes per training process (0 to 64, or auto): for streamed images "
        "(decoding) auto = the CPU cores divided among the processes, at most 8; for in-memory splits placed on the "
        "host (slicing batches) auto = 0, slicing in the training process, which suits in-memory tensors",
    )

    @field_validator("data_workers", mode="plain")
    @classmethod
    def _auto_or_count(cls, value: Any) -> Any:
        # One message for both branches (a plain union would report one error per branch).
        if value == "auto":
            return value
        try:
            count = int(value) if not isinstance(value, (bool, float)) else None
        except ValueError:
            count = None
        if count is None:
            raise ValueError("Input should be auto or a whole number of worker processes")
        if not 0 <= count <= 64:
            raise ValueError("Input should be greater than or equal to 0 and at most 64, or auto")
        return count

    @field_validator("amp", "channels_last", mode="before")
    @classmethod
    def _yaml_switches(cls, value: Any, info: Any) -> Any:
        # YAML 1.1 reads a bare `on`/`off` as true/false: take them back as the words the user wrote.
        if isinstance(value, bool) and (info.field_name == "channels_last" or value is False):
            return "on" if value else "off"
        return value


class ExportConfig(Section):
    opset: int = Field(18, ge=13, le=23, description="ONNX opset of the exported model")
    atol: float = Field(
        1e-4,
        gt=0,
        description="largest |onnx - torch| difference the parity check accepts, per unit of logit scale (max |logit|, at least 1)",
    )


class DistillConfig(Section):
    """Knowledge distillation: the model learns from a teacher's temperature-softened outputs beside the labels.
    The teacher must have been trained on the same data (labels, input kind and shape, preprocessing); checked before
    anything is written."""

    teacher: str | None = Field(
        None,
        description="null: no distillation; a maasctl run folder (its best checkpoint, run in PyTorch), or a "
        "repository model name[:version] or model folder (its ONNX file, run in onnxruntime)",
    )
    repository: str = Field(
        "artifacts/models", description="the model repository a name[:version] teacher is read from"
    )
    temperature: float = Field(
        4.0, gt=0, description="softmax temperature of teacher and student logits (classification)"
    )
    alpha: float = Field(
        0.5,
        ge=0,
        le=1,
        description="weight of the teacher's term: (1 - alpha) x loss on labels + alpha x T^2 x KL(teacher || student); "
        "regression: alpha x MSE to the teacher's values",
    )


class Recipe(Section):
    """A training recipe. Omitted keys take the defaults below; the resolved recipe is saved with each run."""

    name: str = Field("digits-cnn", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="default run and model name")
    task: Literal["auto", "classification", "regression"] = Field(
        "auto",
        description="auto: regression when every label is a number and either some label is not whole or there are "
        "more than 20 distinct values, classification otherwise (image folders and torchvision: classification)",
    )
    data: DataConfig = Field(default_factory=DigitsData, description="the dataset: pick one `source`")
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)

    @model_validator(mode="after")
    def _pretrained_text_uses_its_tokenizer(self) -> Recipe:
        # A pretrained encoder reads token ids of its own tokenizer: data.tokenizer follows model.params.pretrained.
        if self.model.name != "hf_encoder" or not isinstance(self.data, TextData):
            return self
        pretrained = self.model.params.get("pretrained")
        if self.data.tokenizer in ("wordpiece", "bpe"):
            raise ValueError(f"data.tokenizer {self.data.tokenizer}: hf_encoder reads its pretrained model's tokenizer")
        if self.data.tokenizer == "words" and pretrained:
            self.data.tokenizer = str(pretrained)
        return self
