"""Recipe schema, defaults, YAML + override merging, validation: all in one place.

A recipe is a YAML file that holds only what differs from the defaults below. The CLI turns
its flags into dotted overrides (``--T 4`` becomes ``{"student.T": 4}``; ``--set a.b=c`` any
field), which are merged over the file and validated here. Every mistake becomes one
:class:`~distill.errors.RecipeError` line naming the source (file or command line), the key,
and what is allowed.

Conventions kept here:
- ``alpha`` weighs the soft (teacher) term, ``1 - alpha`` the hard-label term;
- Lookahead's own settings are ``la_k`` and ``la_alpha``, never ``alpha``;
- ``data.data_seed`` fixes the validation split and the batch order, ``seed`` the
  initialisation and dropout.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distill.atomic import write_whole
from distill.errors import RecipeError

# a seed: what numpy accepts (torch and the per-epoch seeds derived from it fit too)
Seed = Annotated[int, Field(ge=0, lt=2**32)]


class _Strict(BaseModel):
    """Base for every recipe section: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Which dataset, where its files are, and how it is split and ordered."""

    name: str = "digits"  # digits | mnist | fashion-mnist | cifar10 | cifar100 | imagefolder:<path>
    data_dir: str | None = None  # folder holding the dataset's official files
    download: bool = True  # try torchvision's download when files are missing
    val_size: float = Field(0.1, ge=0)  # fraction of train if < 1, a count if >= 1; 0 = none
    data_seed: Seed = 0  # fixes the validation split and the order of batches in every epoch
    subset: int | None = Field(None, ge=1)  # keep this many training images (a fixed draw)
    test_subset: int | None = Field(None, ge=1)  # keep this many test images (a fixed draw)
    image_size: int | None = Field(None, ge=8)  # resize ImageFolder images to this square size
    # ImageFolder only: true = decode once into memory (cached on disk), false = leave on disk
    # and decode per batch with DataLoader workers; unset = in memory when it fits in a
    # quarter of this machine's RAM
    in_memory: bool | None = None


class ModelConfig(_Strict):
    """A model by registry name; unset options take the model's own defaults."""

    name: str = "mlp"  # see `distill models`; timm:<name> for any timm model
    hidden_sizes: list[int] | None = None
    activation: str | None = None
    dropout: float | None = Field(None, ge=0, lt=1)
    input_dropout: float | None = Field(None, ge=0, lt=1)
    init: str | None = None
    width: int | None = Field(None, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)  # passed to timm.create_model as is

    def build_options(self) -> dict[str, Any]:
        """The options the model builder receives: the fields that are set, plus ``options``."""
        fields = self.model_dump(exclude={"name", "options"}, exclude_none=True)
        return {**fields, **self.options}


class OptimConfig(_Strict):
    """Optimizer, weight decay and learning-rate schedule (see ``distill/optim.py``)."""

    name: str = "adam"  # sgd | momentum | nesterov | adam | adamw | lookahead_<inner> | timm name
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)  # not applied to biases and norm parameters
    momentum: float = Field(0.9, ge=0, lt=1)  # for momentum / nesterov
    betas: tuple[float, float] = (0.9, 0.999)  # for adam / adamw
    la_k: int = Field(5, ge=1)  # Lookahead: inner steps per outer step
    la_alpha: float = Field(0.5, gt=0, le=1)  # Lookahead: slow-weights step size
    schedule: Literal["none", "cosine", "step"] = "none"
    warmup_epochs: float = Field(0.0, ge=0)  # linear warmup from 0, in (fractional) epochs
    step_epochs: int = Field(30, ge=1)  # step schedule: multiply lr by gamma every step_epochs
    gamma: float = Field(0.1, gt=0, le=1)
    grad_clip: float | None = Field(None, gt=0)  # clip the global gradient norm
    max_norm: float | None = Field(None, gt=0)  # cap each unit's incoming weight L2 norm


class AugmentConfig(_Strict):
    """Training-time augmentation, done on the device on whole uint8 batches
    (``distill/augment.py``). Evaluation never augments. All off by default."""

    jitter: int = Field(0, ge=0)  # random translation by up to N pixels (zero fill)
    crop_padding: int = Field(0, ge=0)  # random crop after padding N pixels (zero fill)
    flip: bool = False  # random horizontal flip (not for digits!)
    rotation: float = Field(0.0, ge=0, le=180)  # random rotation in [-deg, +deg]
    color_jitter: float = Field(0.0, ge=0, lt=1)  # brightness/contrast/saturation in 1 +- x

    def active(self) -> bool:
        return bool(self.jitter or self.crop_padding or self.flip or self.rotation
                    or self.color_jitter)


class RoleConfig(_Strict):
    """What one training run (teacher or student) trains and for how long."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # on the hard-label term only
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class StudentConfig(RoleConfig):
    """A student: a role plus the distillation settings and where its teacher comes from."""

    T: float = Field(4.0, gt=0)  # temperature of both softmaxes in the soft term
    alpha: float = Field(0.9, ge=0, le=1)  # weight of the soft term; 1 - alpha on hard labels
    teacher: str | None = None  # run folder, weights file or timm:<name>; default: newest run
    teacher_model: str | None = None  # model name when `teacher` is a bare weights file
    baseline: str | None = None  # a baseline student run, for the share of the gap closed
    teacher_cache: bool = True  # reuse the teacher's stored logits (distill/teacher_cache.py)


class SweepConfig(_Strict):
    """The grid of `distill sweep` (its --T / --alpha / --seeds flags override these)."""

    T: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [1.0, 2.0, 4.0, 8.0, 16.0], min_length=1)
    alpha: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9], min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    mode: Literal["auto", "batched", "sequential"] = "auto"
    chunk_size: int | None = Field(None, ge=1)  # students per batched chunk; None: automatic


class WandbConfig(_Strict):
    """Experiment tracking. ``auto``: online when logged in, offline otherwise."""

    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "distill"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)


class CheckpointConfig(_Strict):
    """When to write ``checkpoint-last.pt`` (atomically; the best epoch's is kept too)."""

    every_steps: int | None = Field(None, ge=1)  # also every N optimizer steps inside an epoch
    every_epoch: bool = True  # at the end of each epoch


def _default_teacher() -> RoleConfig:
    return RoleConfig(
        model=ModelConfig(name="mlp", hidden_sizes=[512, 512], dropout=0.2),
        epochs=30,
    )


def _default_student() -> StudentConfig:
    return StudentConfig(model=ModelConfig(name="mlp", hidden_sizes=[32]), epochs=30)


class Recipe(_Strict):
    """A whole experiment. The defaults are the embedded `digits` experiment."""

    name: str | None = None  # run-name prefix; default: <role>-<dataset>
    seed: Seed = 0  # initialisation and dropout (batch order is data.data_seed's)
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:1 | mps
    output_dir: str = "outputs"
    deterministic: bool = False  # torch's deterministic algorithms (bitwise repeatable on GPU)
    amp: bool | None = None  # bf16 autocast (loss in float32); None: on where the GPU has native bf16
    channels_last: bool | None = None  # channels-last memory for conv nets; None: on CUDA and CPU
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: RoleConfig = Field(default_factory=_default_teacher)
    student: StudentConfig = Field(default_factory=_default_student)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)

    def fingerprint(self, exclude: set[str] | None = None) -> str:
        """A short sha256 of the resolved recipe (stable key order), without the top-level
        sections in ``exclude``."""
        text = json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- loading

CMDLINE = "command line"


def shipped_recipes() -> dict[str, Path]:
    """Recipes shipped with the package (installed) or beside it (source checkout)."""
    found: dict[str, Path] = {}
    candidates = [Path(__file__).resolve().parent.parent / "recipes"]
    try:
        candidates.insert(0, Path(str(resources.files("distill.recipes"))))
    except (ModuleNotFoundError, TypeError):
        pass
    for folder in candidates:
        if folder.is_dir():
            for path in sorted(folder.glob("*.yaml")):
                found.setdefault(path.stem, path)
    return found


def resolve_recipe_path(spec: str) -> Path:
    """A recipe path, or the name of a shipped recipe (``digits``, ``mnist_hinton``, ...)."""
    path = Path(spec)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    name = path.stem if path.suffix in (".yaml", ".yml") else spec
    if name in shipped and path.parent == Path("."):
        return shipped[name]
    names = ", ".join(shipped) or "none"
    raise RecipeError(f"recipe '{spec}' not found: no such file, and no shipped recipe of that "
                      f"name (shipped: {names})")


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a recipe file into a dict (an empty file is an empty recipe)."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys to values, "
                          f"got {type(data).__name__}")
    return data


def parse_set(assignment: str) -> tuple[str, Any]:
    """``"student.T=4"`` -> ``("student.T", 4)``; the value is read as YAML (numbers, lists)."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"--set '{assignment}': expected key.path=value, e.g. --set student.T=4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` merged into a copy of ``base``, mapping by mapping.

    One exception: a ``model`` mapping that names another model replaces the base's whole
    ``model`` section, so options of the default model never leak into another one.
    """
    merged = json.loads(json.dumps(base))
    for key, value in update.items():
        old = merged.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            if key == "model" and value.get("name", old.get("name")) != old.get("name"):
                merged[key] = json.loads(json.dumps(value))
            else:
                merged[key] = deep_merge(old, value)
        else:
            merged[key] = value
    return merged


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge dotted overrides (``{"student.T": 4}``) into a nested dict (``None`` sets null)."""
    merged = json.loads(json.dumps(data))
    for dotted, value in overrides.items():
        nested: Any = value
        for part in reversed(dotted.split(".")):
            nested = {part: nested}
        merged = deep_merge(merged, nested)
    return merged


def load_recipe(spec: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read a recipe (path, shipped name, or None for the defaults) and apply overrides.

    Raises RecipeError with one line naming the file or the command line, and the key.
    """
    overrides = dict(overrides or {})
    source = "defaults"
    data: dict[str, Any] = {}
    if spec is not None:
        path = resolve_recipe_path(str(spec))
        source = str(path)
        data = read_yaml(path)
    defaults = Recipe().model_dump(mode="json")
    return validate_recipe(apply_overrides(deep_merge(defaults, data), overrides), source,
                           overrides)


def validate_recipe(data: dict[str, Any], source: str, overrides: dict[str, Any]) -> Recipe:
    """Validate a merged recipe dict; errors name ``source`` or the command line."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_explain(exc, source, overrides)) from None


def _explain(exc: ValidationError, source: str, overrides: dict[str, Any]) -> str:
    """Turn pydantic's first error into one line: source, dotted key, what is wrong."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    dotted = ".".join(loc)
    src = CMDLINE if any(dotted == k or dotted.startswith(k + ".") for k in overrides) else source
    if err["type"] == "extra_forbidden":
        return f"{src}: unknown key '{dotted}'{_suggest(loc)}"
    value = err.get("input")
    return f"{src}: {dotted}: {err['msg']}, got {value!r}"


def _suggest(loc: list[str]) -> str:
    """' (did you mean 'x.y'?)' or ' (allowed: ...)' for an unknown key at ``loc``."""
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    allowed = list(model.model_fields)
    prefix = ".".join(loc[:-1] + [""])
    close = difflib.get_close_matches(loc[-1], allowed, n=1)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    return f" (allowed under '{prefix.rstrip('.') or 'top level'}': {', '.join(allowed)})"


def dump_recipe(recipe: Recipe, path: Path) -> None:
    """Write the resolved recipe (every field, defaults included) as YAML, atomically (a
    sweep's processes all write its recipe.yaml; a reader sees one whole version)."""
    text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    write_whole(path, lambda tmp: tmp.write_text(text))
