"""Tests for distill.recipe: defaults, shipped recipes, --set parsing, the deep-merge rule,
and the exact one-line RecipeError messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.errors import DistillError, RecipeError
from distill.recipe import (
    CMDLINE,
    Recipe,
    apply_overrides,
    deep_merge,
    dump_recipe,
    load_recipe,
    parse_set,
    resolve_recipe_path,
    shipped_recipes,
)

SHIPPED = ["cifar10_jpeg_resnet", "cifar10_resnet", "digits", "mnist_hinton"]


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty folder so a stray recipe file in the checkout cannot shadow a name."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def recipe_error(spec, overrides=None) -> str:
    with pytest.raises(RecipeError) as exc:
        load_recipe(spec, overrides)
    message = str(exc.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- defaults

def test_defaults() -> None:
    r = load_recipe(None)
    assert r == Recipe()
    assert r.name is None
    assert r.seed == 0
    assert r.device == "auto"
    assert r.output_dir == "outputs"
    assert r.data.name == "digits"
    assert r.data.val_size == 0.1
    assert r.data.data_seed == 0
    assert r.data.download is True
    assert r.data.subset is None
    assert r.teacher.model.name == "mlp"
    assert r.teacher.model.hidden_sizes == [512, 512]
    assert r.teacher.model.dropout == 0.2
    assert r.teacher.epochs == 30
    assert r.teacher.batch_size == 64
    assert r.teacher.optim.name == "adam"
    assert r.teacher.optim.lr == 1e-3
    assert r.student.model.name == "mlp"
    assert r.student.model.hidden_sizes == [32]
    assert r.student.model.dropout is None
    assert r.student.epochs == 30
    assert r.student.T == 4.0
    assert r.student.alpha == 0.9
    assert r.student.teacher is None
    assert r.wandb.mode == "auto"
    assert r.teacher.model.build_options() == {"hidden_sizes": [512, 512], "dropout": 0.2}


def test_overrides_on_defaults() -> None:
    r = load_recipe(None, {"student.T": 2})
    assert r.student.T == 2.0
    assert r.student.alpha == 0.9
    assert r.teacher == Recipe().teacher
    assert r.fingerprint() != Recipe().fingerprint()
    assert load_recipe(None, {"student.T": 2}).fingerprint() == r.fingerprint()


def test_a_null_override_resets_an_optional_field(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "student: {teacher: outputs/some-run}\n")
    assert load_recipe(path).student.teacher == "outputs/some-run"
    assert load_recipe(path, {"student.teacher": None}).student.teacher is None
    with pytest.raises(RecipeError, match="command line: seed: Input should be a valid integer"):
        load_recipe(None, {"seed": None})


@pytest.mark.parametrize(("override", "message"), [
    ({"data.data_seed": 2**40}, "data.data_seed: Input should be less than 4294967296, got "
                                "1099511627776"),
    ({"seed": -1}, "seed: Input should be greater than or equal to 0, got -1"),
    ({"sweep.seeds": [0, 2**32]}, "sweep.seeds.1: Input should be less than 4294967296, got "
                                  "4294967296"),
])
def test_a_seed_numpy_cannot_take_is_refused_by_the_recipe(override, message) -> None:
    """Not torch's bare "Overflow" at the first epoch (or numpy's error mid-setup)."""
    with pytest.raises(RecipeError) as exc:
        load_recipe(None, override)
    assert str(exc.value) == f"command line: {message}"
    assert load_recipe(None, {"seed": 2**32 - 1, "data.data_seed": 2**32 - 1}).seed == 2**32 - 1


def test_dump_and_reload_round_trip(tmp_path: Path) -> None:
    r = load_recipe("mnist_hinton", {"seed": 3, "student.T": 7.5})
    path = tmp_path / "recipe.yaml"
    dump_recipe(r, path)
    again = load_recipe(path)
    assert again == r
    assert again.fingerprint() == r.fingerprint()


# ----------------------------------------------------------------------------- shipped

def test_shipped_recipe_names() -> None:
    found = shipped_recipes()
    assert sorted(found) == SHIPPED
    for name in SHIPPED:
        assert name in found
        assert found[name].is_file()
        assert resolve_recipe_path(name) == found[name]
        assert resolve_recipe_path(f"{name}.yaml") == found[name]


def test_the_recipe_flag_help_names_every_shipped_recipe() -> None:
    from distill.cli import RecipeOpt

    named = RecipeOpt.help.split("(")[1].split(")")[0].split(", ")
    assert sorted(named) == sorted(shipped_recipes())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_validate(name: str) -> None:
    r = load_recipe(name)
    assert isinstance(r, Recipe)


def test_shipped_digits_is_the_defaults() -> None:
    assert load_recipe("digits") == Recipe()


def test_shipped_mnist_hinton() -> None:
    r = load_recipe("mnist_hinton")
    assert r.name == "mnist-hinton"
    assert r.data.name == "mnist"
    assert r.data.val_size == 5000
    assert r.teacher.model.hidden_sizes == [1200, 1200]
    assert r.teacher.model.input_dropout == 0.0  # both chosen on validation (docs/RESULTS.md)
    assert r.teacher.model.dropout == 0.5
    assert (r.teacher.optim.name, r.teacher.optim.lr) == ("nesterov", 0.02)
    assert r.teacher.optim.schedule == "cosine"
    assert r.student.model.hidden_sizes == [800, 800]
    assert r.student.model.dropout is None  # not inherited from anywhere
    assert r.student.T == 20.0
    assert r.student.alpha == 0.5  # chosen on validation (docs/results/mnist_hinton_val_sweep.csv)
    assert r.student.epochs == 100


def test_shipped_cifar10_resnet() -> None:
    r = load_recipe("cifar10_resnet")
    assert r.data.name == "cifar10"
    assert r.teacher.model.name == "resnet56"
    assert r.student.model.name == "resnet20"
    # the default MLP options do not leak into the ResNets
    assert r.teacher.model.build_options() == {}
    assert r.student.model.build_options() == {}
    assert r.teacher.optim.weight_decay == 0.0005
    assert r.student.batch_size == 128


def test_unknown_recipe_name() -> None:
    assert recipe_error("nope") == (
        "recipe 'nope' not found: no such file, and no shipped recipe of that name "
        "(shipped: cifar10_jpeg_resnet, cifar10_resnet, digits, mnist_hinton)")


def test_missing_recipe_path_in_a_folder_is_not_a_shipped_name(tmp_path: Path) -> None:
    spec = str(tmp_path / "digits.yaml")  # not a file; a path, so never the shipped 'digits'
    assert recipe_error(spec) == (
        f"recipe '{spec}' not found: no such file, and no shipped recipe of that name "
        "(shipped: cifar10_jpeg_resnet, cifar10_resnet, digits, mnist_hinton)")


def test_a_file_wins_over_a_shipped_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "digits", "seed: 42\n")
    assert load_recipe("digits").seed == 42


# ----------------------------------------------------------------------------- --set

def test_parse_set_scalars_and_lists() -> None:
    assert parse_set("student.optim.lr=0.01") == ("student.optim.lr", 0.01)
    assert parse_set("teacher.model.hidden_sizes=[8,8]") == ("teacher.model.hidden_sizes", [8, 8])
    assert parse_set("student.T=4") == ("student.T", 4)
    assert parse_set("data.download=false") == ("data.download", False)
    assert parse_set("name=my run") == ("name", "my run")
    assert parse_set(" seed = 3") == ("seed", 3)
    assert parse_set("name=a=b") == ("name", "a=b")
    assert parse_set("student.teacher=") == ("student.teacher", None)


def test_parse_set_missing_equals() -> None:
    with pytest.raises(RecipeError) as exc:
        parse_set("student.T")
    assert str(exc.value) == ("--set 'student.T': expected key.path=value, "
                              "e.g. --set student.T=4")
    with pytest.raises(RecipeError) as exc:
        parse_set("=4")
    assert str(exc.value) == "--set '=4': expected key.path=value, e.g. --set student.T=4"


def test_set_values_reach_the_recipe() -> None:
    key, value = parse_set("teacher.model.hidden_sizes=[8,8]")
    k2, v2 = parse_set("student.optim.lr=0.01")
    r = load_recipe(None, {key: value, k2: v2})
    assert r.teacher.model.hidden_sizes == [8, 8]
    assert r.teacher.model.dropout == 0.2  # the rest of the default model stays
    assert r.student.optim.lr == 0.01


# ----------------------------------------------------------------------------- deep merge

def test_other_model_does_not_inherit_default_mlp_options(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "teacher:\n  model: {name: resnet20}\n")
    r = load_recipe(path)
    assert r.teacher.model.name == "resnet20"
    assert r.teacher.model.hidden_sizes is None
    assert r.teacher.model.dropout is None
    assert r.teacher.model.build_options() == {}
    assert r.student.model.hidden_sizes == [32]  # the other role is untouched
    assert r.teacher.epochs == 30  # only the model section is replaced


def test_same_model_keeps_the_defaults_it_does_not_override(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "teacher:\n  model: {name: mlp, dropout: 0.3}\n")
    r = load_recipe(path)
    assert r.teacher.model.hidden_sizes == [512, 512]
    assert r.teacher.model.dropout == 0.3
    no_name = write(tmp_path, "s.yaml", "teacher:\n  model: {hidden_sizes: [64]}\n")
    r = load_recipe(no_name)
    assert r.teacher.model.hidden_sizes == [64]
    assert r.teacher.model.dropout == 0.2


def test_model_override_on_the_command_line_replaces_the_model() -> None:
    r = load_recipe("mnist_hinton", {"teacher.model.name": "cnn"})
    assert r.teacher.model.name == "cnn"
    assert r.teacher.model.hidden_sizes is None
    assert r.teacher.model.dropout is None
    assert r.teacher.model.input_dropout is None
    kept = load_recipe("mnist_hinton", {"teacher.model.dropout": 0.1})
    assert kept.teacher.model.hidden_sizes == [1200, 1200]
    assert kept.teacher.model.dropout == 0.1


def test_deep_merge_unit() -> None:
    base = {"a": {"b": 1, "c": 2}, "model": {"name": "mlp", "x": 1}, "l": [1, 2]}
    assert deep_merge(base, {"a": {"c": 3}}) == {**base, "a": {"b": 1, "c": 3}}
    assert deep_merge(base, {"model": {"x": 5}})["model"] == {"name": "mlp", "x": 5}
    assert deep_merge(base, {"model": {"name": "mlp", "y": 2}})["model"] == {
        "name": "mlp", "x": 1, "y": 2}
    assert deep_merge(base, {"model": {"name": "cnn"}})["model"] == {"name": "cnn"}
    assert deep_merge(base, {"l": [3]})["l"] == [3]  # lists are replaced, not merged
    assert base == {"a": {"b": 1, "c": 2}, "model": {"name": "mlp", "x": 1}, "l": [1, 2]}


def test_apply_overrides_unit() -> None:
    data = {"student": {"T": 4, "optim": {"lr": 1}}}
    out = apply_overrides(data, {"student.optim.lr": 2, "student.alpha": None, "seed": 1})
    assert out == {"student": {"T": 4, "optim": {"lr": 2}, "alpha": None}, "seed": 1}
    assert data == {"student": {"T": 4, "optim": {"lr": 1}}}


# ----------------------------------------------------------------------------- errors

def test_unknown_key_with_close_match(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "student: {alpah: 0.5}\n")
    assert recipe_error(path) == (
        f"{path}: unknown key 'student.alpah' (did you mean 'student.alpha'?)")


def test_unknown_nested_key_with_close_match(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "teacher:\n  optim: {lrr: 0.1}\n")
    assert recipe_error(path) == (
        f"{path}: unknown key 'teacher.optim.lrr' (did you mean 'teacher.optim.lr'?)")


def test_unknown_key_without_close_match(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "student: {zzzqqq: 1}\n")
    assert recipe_error(path) == (
        f"{path}: unknown key 'student.zzzqqq' (allowed under 'student': model, optim, epochs, "
        "batch_size, label_smoothing, augment, T, alpha, teacher, teacher_model, baseline, "
        "teacher_cache)")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "bogus: 1\n")
    assert recipe_error(path) == (
        f"{path}: unknown key 'bogus' (allowed under 'top level': name, seed, device, "
        "output_dir, deterministic, amp, channels_last, checkpoint, data, teacher, student, "
        "sweep, wandb)")


@pytest.mark.parametrize("value", ["0", "-1"])
def test_temperature_must_be_positive(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, "r.yaml", f"student: {{T: {value}}}\n")
    assert recipe_error(path) == (
        f"{path}: student.T: Input should be greater than 0, got {value}")


def test_alpha_at_most_one(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "student: {alpha: 1.5}\n")
    assert recipe_error(path) == (
        f"{path}: student.alpha: Input should be less than or equal to 1, got 1.5")
    assert load_recipe(write(tmp_path, "ok.yaml", "student: {alpha: 1}\n")).student.alpha == 1.0


def test_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "teacher: {epochs: ten}\n")
    assert recipe_error(path) == (
        f"{path}: teacher.epochs: Input should be a valid integer, unable to parse string as "
        "an integer, got 'ten'")


def test_bad_choice_lists_the_allowed_values(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "teacher:\n  optim: {schedule: linear}\n")
    assert recipe_error(path) == (
        f"{path}: teacher.optim.schedule: Input should be 'none', 'cosine' or 'step', "
        "got 'linear'")


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "student:\n  T: 4\n a: b: c\n")
    message = recipe_error(path)
    assert message.startswith(f"{path}: not valid YAML at line 3: ")
    path2 = write(tmp_path, "r2.yaml", "a: b: c\n")
    assert recipe_error(path2) == f"{path2}: not valid YAML at line 1: mapping values are not allowed here"


def test_recipe_that_is_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "- student\n- teacher\n")
    assert recipe_error(path) == (
        f"{path}: a recipe must be a mapping of keys to values, got list")


def test_empty_recipe_file_is_the_defaults(tmp_path: Path) -> None:
    assert load_recipe(write(tmp_path, "r.yaml", "# nothing\n")) == Recipe()


def test_override_errors_name_the_command_line(tmp_path: Path) -> None:
    assert recipe_error(None, {"student.T": -1}) == (
        f"{CMDLINE}: student.T: Input should be greater than 0, got -1")
    assert CMDLINE == "command line"
    assert recipe_error(None, {"student.alpah": 0.5}) == (
        "command line: unknown key 'student.alpah' (did you mean 'student.alpha'?)")
    path = write(tmp_path, "ok.yaml", "student: {T: 3}\n")
    assert recipe_error(path, {"teacher.optim.lr": 0}) == (
        "command line: teacher.optim.lr: Input should be greater than 0, got 0")


def test_file_errors_name_the_file_even_with_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "teacher: {epochs: 0}\n")
    assert recipe_error(path, {"student.T": 2}) == (
        f"{path}: teacher.epochs: Input should be greater than or equal to 1, got 0")


def test_override_can_fix_a_file_value(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", "student: {T: 0}\n")
    assert load_recipe(path, {"student.T": 2}).student.T == 2.0


def test_recipe_error_is_a_distill_error() -> None:
    assert issubclass(RecipeError, DistillError)
    assert RecipeError.exit_code == 2
