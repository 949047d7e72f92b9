"""Load ``params.yaml`` once and validate it into typed objects.

Every error names the key path (``train.lr``) and what was expected, so a user can fix the file
without reading code. YAML is read with the safe loader only.

The defaults below are the values params.yaml ships (a key deleted from it falls back to the
documented value). What belongs to a model family (``models.<family>``, ``tune.space.<family>``,
``compress.distill.student.<family>``) is validated against that family's own declaration in the
family registry (``pipeline.models.family``): its typed params, default space and student.
"""
from __future__ import annotations

import functools
import importlib
import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from pipeline.data.source import get_source, sources
from pipeline.models.family import NOT_SCALABLE, Family, families, get_family


class ParamsError(ValueError):
    """A params file that cannot be used; the message names the file and the key path."""


class _Strict(BaseModel):
    # Misspelt keys are errors, not silently ignored defaults.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _registered(name: str) -> str:
    get_family(name)  # raises naming the known families
    return name


# The name of a registered model family.
FamilyName = Annotated[str, AfterValidator(_registered)]


class _PerEntry(RootModel[dict[str, Any]]):
    """A params block with one entry per registered family or data source (its default where the
    block has none) besides the fixed entries ``_fixed``; any other key is an error listing the
    known ones. Each entry is validated by a model built from the registry, so its errors keep
    their key path (``models.<family>.<key>``, ``data.<source>.<key>``)."""

    model_config = ConfigDict(frozen=True)
    # Entries that are not registered names: name -> (type, Field with its default).
    _fixed: ClassVar[dict[str, tuple[Any, Any]]] = {}
    # What the registered names are, for errors.
    _what: ClassVar[str] = ""

    @classmethod
    def _registered(cls) -> tuple[tuple[str, Any], ...]:
        """(name, registered object) of every entry the block may have."""
        raise NotImplementedError

    @classmethod
    def _entry(cls, registered: Any) -> tuple[Any, Any]:
        """(type, Field with its default) of a registered object's entry."""
        raise NotImplementedError

    @model_validator(mode="before")
    @classmethod
    def _by_entry(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            raise ValueError(f"must be a mapping with one entry per {cls._what}, got {type(raw).__name__}")
        registered = cls._registered()
        known = [*cls._fixed, *(name for name, _ in registered)]
        for key in raw:
            if key not in known:
                raise ValueError(f"@{key}: unknown {cls._what}; known keys: {', '.join(known)}")
        return dict(_schema(cls, registered).model_validate(raw))


class _PerFamily(_PerEntry):
    """One entry per registered model family."""

    _what: ClassVar[str] = "model family"

    @classmethod
    def _registered(cls) -> tuple[tuple[str, Family], ...]:
        return tuple((name, get_family(name)) for name in families())

    def for_family(self, family: str) -> Any:
        return self.root[family]


class _ValidatedDefaults(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


@functools.cache
def _schema(block: type[_PerEntry], registered: tuple[tuple[str, Any], ...]) -> type[BaseModel]:
    """The strict model of ``block`` for the families or sources registered now."""
    fields = {**block._fixed, **{name: block._entry(obj) for name, obj in registered}}
    return create_model(block.__name__, __base__=_ValidatedDefaults, **fields)


class BaseCfg(_Strict):
    seed: int = 42
    # The train stage trains each family this many times, seeds seed, seed + 1, ...: the mean and
    # 95 % interval of its accuracy and energy, and the noise that the reports' fronts allow for.
    # The model it keeps is the first (seed ``seed``), as with 1.
    repeats: int = Field(1, ge=1, le=100)


def _data_source(name: str) -> str:
    get_source(name)  # raises naming the known sources
    return name


class DataCfg(_PerEntry):
    """``data``: which source (``dataset``), how it is split and normalised, and one block of
    parameters per registered source (``data.<source>``, its ``Params``; see pipeline.data)."""

    _what: ClassVar[str] = "data source"
    _fixed: ClassVar[dict[str, tuple[Any, Any]]] = {
        "dataset": (Annotated[str, AfterValidator(_data_source)], Field("mnist1d")),
        # Of a pool: the shares of validation and test; of given train/test splits: val_fraction
        # of the train split is the validation split (test_fraction is not used).
        "val_fraction": (float, Field(0.15, gt=0, lt=1)),
        "test_fraction": (float, Field(0.15, gt=0, lt=1)),
        # From the training split only: channel | feature | none; auto: the source's default
        # (channel; feature for tables).
        "normalize": (Literal["auto", "channel", "feature", "none"], Field("auto")),
    }

    @classmethod
    def _registered(cls) -> tuple[tuple[str, Any], ...]:
        return tuple((name, get_source(name)) for name in sources())

    @classmethod
    def _entry(cls, source: Any) -> tuple[Any, Any]:
        return source.Params, Field(default_factory=source.Params)

    @model_validator(mode="after")
    def _check(self) -> DataCfg:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction + test_fraction must leave at least 10% for training, "
                f"got {self.val_fraction} + {self.test_fraction}"
            )
        try:
            get_source(self.dataset).check(self.source_params)
        except ValueError as err:
            msg = str(err)
            raise ValueError(f"@{self.dataset}.{msg[1:]}" if msg.startswith("@") else msg) from None
        return self

    @property
    def dataset(self) -> str:
        return self.root["dataset"]

    @property
    def val_fraction(self) -> float:
        return self.root["val_fraction"]

    @property
    def test_fraction(self) -> float:
        return self.root["test_fraction"]

    @property
    def normalize(self) -> str:
        return self.root["normalize"]

    @property
    def source_params(self) -> BaseModel:
        """The chosen source's parameters (``data.<dataset>``)."""
        return self.root[self.dataset]

    def for_source(self, name: str) -> BaseModel:
        return self.root[name]


class ModelsCfg(_PerFamily):
    """``models.<family>``: each family's typed hyperparameters (its ``Params``)."""

    @classmethod
    def _entry(cls, family: Family) -> tuple[Any, Any]:
        return family.Params, Field(default_factory=family.Params)


BUILTIN_OPTIMIZERS = ("sgd", "sgd_momentum", "adam", "adamw", "adagrad", "rmsprop")


def _import_spec(kind: str, base: str, first_arg: str):
    """A validator of ``{target: "module:Class", **keywords}``: the class imports, is a subclass of
    ``base`` (e.g. torch.optim.Optimizer) and takes the keywords."""

    def check(spec: Any) -> Any:
        if not isinstance(spec, dict) or "target" not in spec:
            raise ValueError(f"a {kind} is a mapping with 'target' (an import path like 'torch.optim:RMSprop') "
                             f"and its keyword arguments")
        from pipeline.imports import check_keywords, resolve

        cls = resolve(spec["target"], "@target")
        module, _, name = base.rpartition(".")
        base_cls = getattr(importlib.import_module(module), name)
        if not (isinstance(cls, type) and issubclass(cls, base_cls)):
            raise ValueError(f"@target: {spec['target']!r} is not a {base} subclass")
        kwargs = {k: v for k, v in spec.items() if k != "target"}
        try:
            check_keywords(cls, kwargs, "", positional=(first_arg, "lr") if kind == "optimizer" else (first_arg,))
        except ValueError as err:
            raise ValueError(f"@{str(err).lstrip('.')}") from None
        return spec

    return check


OptimizerSpec = Annotated[dict[str, Any], AfterValidator(_import_spec("optimizer", "torch.optim.Optimizer", "params"))]
SchedulerSpec = Annotated[dict[str, Any], AfterValidator(
    _import_spec("scheduler", "torch.optim.lr_scheduler.LRScheduler", "optimizer"))]


class TrainCfg(_Strict):
    # A built-in name, or any torch optimizer by import path with its keywords
    # ({target: "torch.optim:RMSprop", alpha: 0.9}; lr and weight_decay come from below).
    optimizer: Literal["sgd", "sgd_momentum", "adam", "adamw", "adagrad", "rmsprop"] | OptimizerSpec = "adam"
    # A learning-rate scheduler by import path with its keywords, stepped once per epoch
    # ({target: "torch.optim.lr_scheduler:CosineAnnealingLR", T_max: 30}); null: none.
    scheduler: SchedulerSpec | None = None
    lr: float = Field(0.003, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(64, ge=1)
    max_epochs: int = Field(30, ge=1)
    # Stop when val/acc has not improved for this many epochs; 0 turns early stopping off.
    early_stopping_patience: int = Field(8, ge=0)
    # Energy and time to first reach this validation accuracy are logged (absent if never reached).
    target_val_acc: float = Field(0.8, gt=0, le=1)
    # Where training computes (docs/scale-out.md): auto (a GPU when torch sees one, else the CPU) | cpu | gpu.
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    # GPUs (a count or a list of ids), or on the CPU a number of processes; more than one: DDP.
    devices: int | list[int] = Field(1)
    strategy: Literal["auto", "ddp", "ddp_find_unused_parameters_true"] = "auto"
    num_nodes: int = Field(1, ge=1)
    precision: Literal["32", "16-mixed", "bf16-mixed"] = "32"
    # torch threads of a training process; auto: this machine's cores shared among the pipeline
    # processes computing at the same time (dvc queue -j N, search workers, DDP ranks).
    threads: int | Literal["auto"] = "auto"

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"must be at least 1, got {v}")
        if isinstance(v, list) and (not v or min(v) < 0 or len(set(v)) != len(v)):
            raise ValueError(f"a list of distinct device ids >= 0, got {v}")
        return v

    @field_validator("threads")
    @classmethod
    def _threads(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 1024:
            raise ValueError(f"a number of threads from 1 to 1024, or auto; got {v}")
        return v

    @model_validator(mode="after")
    def _finite(self) -> TrainCfg:
        if not math.isfinite(self.lr):
            raise ValueError("lr must be a finite number")
        return self


class EnergyCfg(_Strict):
    # Who measures: CodeCarbon (CPU, RAM and GPUs), or zeus: the GPUs' energy from NVML's counters
    # read by Zeus (a CUDA GPU must be present), CPU and RAM still from CodeCarbon.
    backend: Literal["codecarbon", "zeus"] = "codecarbon"
    # ISO 3166-1 alpha-3 code of the grid whose carbon intensity converts kWh to CO2eq.
    country_iso_code: str = Field("USA", min_length=3, max_length=3)
    region: str | None = None
    # CodeCarbon's background sampling period; per-epoch readings are taken on top of it.
    measure_power_secs: float = Field(1.0, gt=0)


class EvaluateCfg(_Strict):
    # Where predictions are measured: train (where the model was trained), cpu, cuda, cuda:N or
    # mps. Quantized (int8) variants run on the CPU wherever this points, and say so.
    device: str = Field("train", pattern=r"^(train|cpu|cuda(:\d+)?|gpu|mps)$")
    batch_size: int = Field(256, ge=1)
    latency_samples: int = Field(200, ge=1)
    # Inference is repeated over the test split until at least this long, so its energy is
    # well above the meter's resolution.
    energy_min_duration_s: float = Field(2.0, gt=0)
    # ... split into this many readings; models compared with each other (the compress stage)
    # are measured in the same rounds, alternating, and compared round by round.
    energy_rounds: int = Field(8, ge=1, le=1000)
    # Torch intra-op threads while predicting (0: torch's default, one per core).
    num_threads: int = Field(1, ge=0, le=1024)
    # Fix glibc's mmap/trim thresholds before measuring, so activation buffers are reused as in a
    # long-running server instead of page-faulted anew depending on the process's history.
    steady_allocator: bool = True


class TrackingCfg(_Strict):
    experiment_name: str = Field("energy-pipeline", min_length=1)
    # Empty: the embedded store sqlite:///<repo>/mlruns/mlflow.db. MLFLOW_TRACKING_URI wins.
    tracking_uri: str = ""


class Range(_Strict):
    """A numeric search range; integers when both bounds are integers."""

    low: int | float
    high: int | float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("bounds must be finite numbers")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high}): bounds inverted or equal")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got {self.low}")
        return self

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)


# A dimension of the search space: a range, or a non-empty list of choices.
Dimension = Range | list[int | float | str | bool]

_TRAIN_SPACE: dict[str, Any] = {"lr": {"low": 3e-4, "high": 1e-2, "log": True}, "optimizer": ["adam", "adamw"],
                                 "batch_size": [32, 64, 128]}
# Training parameters a search may not choose: the search sets the epochs, the target is a measure.
_NOT_SEARCHED = ("max_epochs", "target_val_acc")


class SearchCfg(_Strict):
    """How a study runs. Study identity (and so resuming) depends on the space, objective, sampler,
    pruner and per-trial epochs, not on the budget (n_trials, timeout, energy) or the workers."""

    objective: Literal["accuracy", "accuracy+energy"] = "accuracy"
    n_trials: int = Field(4, ge=1)
    timeout_s: float | None = Field(None, gt=0)
    # Stop the study once its trials together (pruned and failed included) used this much energy.
    energy_budget_kwh: float | None = Field(0.0005, gt=0)
    max_epochs: int = Field(4, ge=1)
    n_workers: int = Field(1, ge=1, le=64)
    sampler: Literal["tpe", "random"] = "tpe"
    # target: prune a trial that cannot plausibly reach train.target_val_acc (pipeline.tuning.guard).
    pruner: Literal["median", "asha", "hyperband", "target", "none"] = "median"
    startup_trials: int = Field(2, ge=0)
    warmup_epochs: int = Field(1, ge=0)
    # Multi-objective choice: "knee" (Pareto point nearest the ideal of best accuracy at least
    # energy, both scaled to [0, 1] over the Pareto set) or "accuracy" (most accurate point).
    select: Literal["knee", "accuracy"] = "knee"
    # Start a new study with the configuration in params.yaml (train.* and models.<family>) as its
    # first trial, for the dimensions where that value lies inside the space: a known-good point
    # the sampler and the pruner can compare against from the first trial on.
    enqueue_baseline: bool = True
    # RDB storage heartbeat: a killed worker's trial is failed (and retried once) after 3 beats.
    heartbeat_s: float = Field(10.0, ge=1, le=600)
    # Empty: sqlite:///<repo>/optuna/studies.db. OPTUNA_STORAGE in the environment wins; a
    # postgresql://... URL lets workers on several machines share a study.
    storage: str = ""


class SpaceCfg(_PerFamily):
    """``tune.space``: ``train`` (the training parameters) and one space per family (its
    ``search_space()`` by default). A dimension is a list of choices or a range."""

    _fixed: ClassVar[dict[str, tuple[Any, Any]]] = {
        "train": (dict[str, Dimension], Field(default_factory=lambda: dict(_TRAIN_SPACE)))}

    @classmethod
    def _entry(cls, family: Family) -> tuple[Any, Any]:
        return dict[str, Dimension], Field(default_factory=family.search_space)

    @property
    def train(self) -> dict[str, Dimension]:
        return self.root["train"]

    @model_validator(mode="after")
    def _keys_exist(self) -> SpaceCfg:
        for section, dims in self.root.items():
            cfg_cls = TrainCfg if section == "train" else get_family(section).Params
            searchable = sorted(k for k in cfg_cls.model_fields if section != "train" or k not in _NOT_SEARCHED)
            for key, dim in dims.items():
                if key not in searchable:
                    raise ValueError(f"@{section}.{key}: not a searchable parameter of {section}; "
                                     f"choose from {searchable}")
                if isinstance(dim, list) and not dim:
                    raise ValueError(f"@{section}.{key}: empty list of choices")
                # Every value the sampler may pick must be a valid value of that parameter.
                values = list(dim) if isinstance(dim, list) else [dim.low, dim.high]
                for value in values:
                    try:
                        cfg_cls.model_validate({**cfg_cls().model_dump(), key: value})
                    except ValidationError as err:
                        raise ValueError(f"@{section}.{key}: {value!r} is not a valid value "
                                         f"({err.errors()[0]['msg']})") from None
        return self


class TuneCfg(_Strict):
    search: SearchCfg = SearchCfg()
    space: SpaceCfg = Field(default_factory=lambda: SpaceCfg.model_validate({}))


def _no_repeats(name: str, values: list) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat a value, got {values}")


def _unique_list(values: list) -> list:
    """A field validator: the error lands on the field's own key path."""
    if len(set(values)) != len(values):
        raise ValueError(f"must not repeat a value, got {values}")
    return values


# A sparsity or a fraction of neurons/channels removed: strictly between 0 and 1.
Level = Annotated[float, Field(gt=0, lt=1)]


class QuantizeCfg(_Strict):
    """Post-training int8 quantization (PyTorch's eager ``torch.ao.quantization``, see README).

    ``dynamic``: int8 weights of Linear and GRU/LSTM layers, activations quantized per batch at
    run time; every family. ``static``: int8 weights and activations, scales calibrated on
    training batches; the families whose layers all have eager int8 CPU kernels (each family
    says whether it has, or why not).
    """

    modes: list[Literal["dynamic", "static"]] = Field(default_factory=lambda: ["dynamic", "static"])
    engine: Literal["x86", "fbgemm", "qnnpack", "onednn"] = "x86"
    calibration_batches: int = Field(8, ge=1)
    # Also quantize the smaller models other techniques make (each mode above that the family
    # supports): prune -> the structured-pruned models, distill -> both students. Their variants
    # are named <variant>+quant_<mode>-int8 and carry the cost of both steps.
    stack: list[Literal["prune", "distill"]] = Field(default_factory=list)

    _unique = field_validator("modes", "stack")(_unique_list)


class PruneCfg(_Strict):
    """Magnitude pruning with ``torch.nn.utils.prune``. ``global``: the smallest weights of all
    prunable layers together (unstructured); ``structured``: whole neurons/channels of each hidden
    layer by L1 norm, then removed from the architecture. ``sparsity``: fraction of weights
    (global) or of neurons/channels (structured) pruned, each in (0, 1)."""

    kinds: list[Literal["global", "structured"]] = Field(default_factory=lambda: ["global", "structured"])
    sparsity: list[Level] = Field(default_factory=lambda: [0.5])
    finetune_epochs: int = Field(1, ge=0)  # 0: no fine-tuning after pruning
    lr: float = Field(1e-3, gt=0)

    _unique = field_validator("kinds", "sparsity")(_unique_list)


Override = dict[str, int | float | str | bool]


class StudentCfg(_PerFamily):
    """Per student family: hyperparameters that override the teacher's (student of the teacher's
    family) or that family's defaults (student of another family); each family's
    ``student_overrides()`` by default."""

    @classmethod
    def _entry(cls, family: Family) -> tuple[Any, Any]:
        return Override, Field(default_factory=family.student_overrides)

    @model_validator(mode="after")
    def _known_keys(self) -> StudentCfg:
        for family, over in self.root.items():
            cfg_cls = get_family(family).Params
            for key in over:
                if key not in cfg_cls.model_fields:
                    raise ValueError(f"{family}.{key}: not a parameter of models.{family}; "
                                     f"choose from {sorted(cfg_cls.model_fields)}")
            try:
                cfg_cls.model_validate({**cfg_cls().model_dump(), **over})
            except ValidationError as err:
                e = err.errors()[0]
                loc = ".".join(str(p) for p in e["loc"])
                raise ValueError(f"{family}{'.' + loc if loc else ''}: {e['msg'].removeprefix('Value error, ')}") from None
        return self

    def for_family(self, family: str) -> dict:
        return dict(self.root[family])


def _student_family(name: str) -> str:
    if name != "same" and name not in families():
        raise ValueError(f"{name!r} is neither 'same' (the teacher's family) nor a model family ({', '.join(families())})")
    return name


class DistillCfg(_Strict):
    """Knowledge distillation: a smaller student trained on the teacher's softened outputs
    (loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy), next to the
    same student trained from labels alone with the same seed and budget."""

    # "same": the teacher's family; else the name of another family.
    student_family: Annotated[str, AfterValidator(_student_family)] = "same"
    student: StudentCfg = Field(default_factory=lambda: StudentCfg.model_validate({}))
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)
    epochs: int = Field(10, ge=1)
    lr: float = Field(3e-3, gt=0)


class CompressCfg(_Strict):
    """The compress stage: variants of each family's trained model(s), measured like originals."""

    # The trained models to compress: the train stage's (baseline) and/or the search's (tuned).
    sources: list[Literal["baseline", "tuned"]] = Field(default_factory=lambda: ["baseline"], min_length=1)
    techniques: list[Literal["quantize", "prune", "distill"]] = Field(
        default_factory=lambda: ["quantize", "prune", "distill"])
    quantize: QuantizeCfg = QuantizeCfg()
    prune: PruneCfg = PruneCfg()
    distill: DistillCfg = Field(default_factory=DistillCfg)
    # Mini-batches of the pruning fine-tune and of distillation (optimizer: Adam).
    batch_size: int = Field(64, ge=1)

    _unique = field_validator("sources", "techniques")(_unique_list)


class SweepCfg(_Strict):
    """The model-size sweep: the ``sweep`` stage is a DVC matrix over ``families`` x ``widths`` x
    ``depths``. Each point trains the family's model (``models.<family>``) with its width and
    depth multiplied by the point's factors (the family's ``scale``: which parameters those are is
    the family's to say), with the baseline's training budget, then tests it. Factor 1 is the
    baseline's size: the train stage has it already."""

    # At least one point: the report stage depends on metrics/sweep (drop both from dvc.yaml to
    # run without a sweep). The default: the first two registered families.
    families: list[FamilyName] = Field(default_factory=lambda: list(families()[:2]), min_length=1)
    widths: list[Annotated[float, Field(gt=0, le=64)]] = Field(default_factory=lambda: [0.5, 2.0], min_length=1)
    depths: list[Annotated[float, Field(gt=0, le=16)]] = Field(default_factory=lambda: [1.0], min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> SweepCfg:
        _no_repeats("families", self.families)
        _no_repeats("widths", self.widths)
        _no_repeats("depths", self.depths)
        for i, name in enumerate(self.families):
            family = get_family(name)
            if family.scale(family.Params(), 1.0, 1.0) is None:
                raise ValueError(f"@families.{i}: family {name!r} cannot be swept: {NOT_SCALABLE}")
            for w in self.widths:
                for d in self.depths:
                    if family.scale(family.Params(), w, d) is None:
                        raise ValueError(f"@families.{i}: family {name!r} cannot be swept to width x{w}, depth x{d}: "
                                         f"it declares {'no width_param' if family.width_param is None else 'no depth_param'}")
        return self


class Params(_Strict):
    families: list[FamilyName] = Field(default_factory=lambda: list(families()), min_length=1)
    base: BaseCfg = BaseCfg()
    data: DataCfg = Field(default_factory=lambda: DataCfg.model_validate({}))
    models: ModelsCfg = Field(default_factory=lambda: ModelsCfg.model_validate({}))
    train: TrainCfg = TrainCfg()
    energy: EnergyCfg = EnergyCfg()
    evaluate: EvaluateCfg = EvaluateCfg()
    tracking: TrackingCfg = TrackingCfg()
    tune: TuneCfg = Field(default_factory=TuneCfg)
    compress: CompressCfg = Field(default_factory=CompressCfg)
    sweep: SweepCfg = Field(default_factory=SweepCfg)

    @model_validator(mode="after")
    def _unique_families(self) -> Params:
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families must not repeat a family, got {self.families}")
        for family in self.families:
            if not self.tune.space.train and not self.tune.space.for_family(family):
                raise ValueError(f"tune.space: empty search space for {family} (tune.space.train and "
                                 f"tune.space.{family} are both empty)")
        return self


def _format_validation_error(path: Path, err: ValidationError) -> str:
    by_loc: dict[str, list[tuple[str, bool]]] = {}
    for e in err.errors():
        # Drop pydantic's own location parts (union branches such as "list[...]" or "function-after[...]").
        loc = ".".join(str(p) for p in e["loc"] if "[" not in str(p)) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        # A model-level check names the key below its model as "@key.path: message".
        if msg.startswith("@") and ": " in msg:
            sub, msg = msg[1:].split(": ", 1)
            loc = sub if loc == "(top level)" else f"{loc}.{sub}"
        if e["type"] == "extra_forbidden":
            msg = "unknown key (misspelt?)"
        elif "input" in e and e["type"] not in ("missing", "value_error") and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        by_loc.setdefault(loc, []).append((msg, e["type"] == "value_error"))
    lines = [f"{path}: invalid parameters:"]
    for loc, msgs in by_loc.items():
        # Of a union's alternatives, our own check says more than "should be a valid list".
        if any(specific for _, specific in msgs):
            msgs = [m for m in msgs if m[1]]
        for msg, _ in dict.fromkeys(msgs):
            lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_params(raw: object, source: Path | str = "params.yaml") -> Params:
    """Validate an already-loaded mapping. Model families named by import path
    (``models.<name>.target``) are registered first, so the rest validates against them."""
    source = Path(source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: top level must be a mapping of sections, got {type(raw).__name__}")
    models = raw.get("models")
    if isinstance(models, dict) and any(isinstance(b, dict) and "target" in b for b in models.values()):
        from pipeline.errors import FamilyError
        from pipeline.models.user_family import register_from_params

        try:
            register_from_params(models)
        except FamilyError as err:
            raise ParamsError(f"{source}: invalid parameters:\n  {err}") from None
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_validation_error(source, err)) from None


def _read_yaml(path: Path) -> object:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except OSError as err:
        raise ParamsError(f"{path}: cannot be read ({err.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ParamsError(f"{path}: YAML syntax error{where}: {problem}") from None


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` on top of ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _merged(path: Path, profiles: tuple[Path | str, ...]) -> tuple[object, Path]:
    """The params file's mapping with the profiles merged on top, and the name errors give it."""
    raw = _read_yaml(path)
    source = path
    for profile in map(Path, profiles):
        extra = _read_yaml(profile)
        if extra is None:
            continue
        if not isinstance(extra, dict):
            raise ParamsError(f"{profile}: a profile must be a mapping of params sections, got {type(extra).__name__}")
        raw = deep_merge(raw if isinstance(raw, dict) else {}, extra)
        source = Path(f"{path} + {profile}")
    return raw, source


def load_params(path: Path | str = "params.yaml", profiles: tuple[Path | str, ...] = ()) -> Params:
    """Read and validate a params file, with optional profiles (partial params files, e.g.
    ``profiles/search-large.yaml``) merged on top in order; raise ParamsError naming the file,
    line or key."""
    raw, source = _merged(Path(path), tuple(profiles))
    return parse_params(raw, source)


def apply_profiles(path: Path | str, profiles: tuple[Path | str, ...] | list) -> dict:
    """The params file with the profiles merged on top, validated (ParamsError naming the key
    where the result is not valid params), every key spelt out, defaults included: what
    ``apply-profile`` writes back (a family's default search space, declared by the family,
    included)."""
    raw, source = _merged(Path(path), tuple(profiles))
    return parse_params(raw, source).model_dump(mode="json")
