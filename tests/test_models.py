"""Tests for distill.models: registry, builders, option checks and the dry-run shape check."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from distill.errors import RecipeError
from distill.models import build_model, check_model, count_parameters, list_models, register_model

REGISTERED = ["cnn", "mlp", "resnet20", "resnet32", "resnet32x4", "resnet56", "resnet8x4"]


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _forward(model: nn.Module, in_shape: tuple[int, int, int], n: int = 3) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(n, *in_shape))


# ----------------------------------------------------------------------------- registry


def test_list_models_sorted_with_descriptions() -> None:
    models = list_models()
    assert list(models) == REGISTERED
    assert all(isinstance(d, str) and d and "\n" not in d for d in models.values())
    assert not any(name.startswith("timm") for name in models)


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("in_shape", [(1, 28, 28), (3, 32, 32)])
def test_registered_models_build_and_output_logits(name: str, in_shape: tuple[int, int, int]) -> None:
    model = build_model(name, in_shape, 10)
    assert isinstance(model, nn.Module)
    assert _forward(model, in_shape, n=2).shape == (2, 10)


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet8x4"])
def test_small_8x8_inputs(name: str) -> None:
    model = build_model(name, (1, 8, 8), 4)
    assert _forward(model, (1, 8, 8)).shape == (3, 4)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("resnet20", 0.27e6), ("resnet56", 0.86e6), ("resnet8x4", 1.23e6), ("resnet32x4", 7.43e6)],
)
def test_resnet_parameter_counts(name: str, expected: float) -> None:
    # Reference counts (He et al. 2016 / CRD benchmark) are for CIFAR-100; the count does not
    # depend on the image size, so a small input keeps the dry run cheap.
    count = count_parameters(build_model(name, (3, 8, 8), 100))
    assert abs(count - expected) / expected < 0.05, count


def test_a_resnet_block_adds_its_identity_shortcut() -> None:
    """With its residual branch at zero (last BatchNorm's weight 0), a block passes relu(x)
    through: the shortcut is added before the final ReLU."""
    from distill.models import BasicBlock

    block = BasicBlock(4, 4).eval()
    nn.init.zeros_(block.bn2.weight)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        assert torch.equal(block(x), torch.relu(x))


@pytest.mark.parametrize(("name", "mmacs"), [("resnet20", 40.81), ("resnet56", 125.75)])
def test_resnet_stages_halve_the_map_and_cost_the_published_macs(name: str, mmacs: float
                                                                 ) -> None:
    """He et al.'s CIFAR ResNets: stages at 32x32 (16 ch), 16x16 (32), 8x8 (64), and the
    commonly quoted 40.81M and 125.75M multiply-accumulates per 32x32 image (a wrong stride
    changes both)."""
    from distill.metrics import profile_model

    model = build_model(name, (3, 32, 32), 10)
    shapes: dict[str, tuple[int, ...]] = {}
    for stage in ("layer1", "layer2", "layer3"):
        getattr(model, stage).register_forward_hook(
            lambda _m, _i, out, stage=stage: shapes.__setitem__(stage, tuple(out.shape[1:])))
    _forward(model, (3, 32, 32), n=1)
    assert shapes == {"layer1": (16, 32, 32), "layer2": (32, 16, 16), "layer3": (64, 8, 8)}
    macs = profile_model(model, (3, 32, 32), batch_size=1, repeats=1)["macs_per_image"]
    assert macs / 1e6 == pytest.approx(mmacs, abs=0.01)


def test_count_parameters_skips_frozen() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    assert count_parameters(model) == 4 * 3 + 3 + 3 * 2 + 2
    for p in model[0].parameters():
        p.requires_grad_(False)
    assert count_parameters(model) == 3 * 2 + 2


def test_register_model_adds_a_builder() -> None:
    from distill import models as models_module

    @register_model("_test_linear", "a test model")
    def _build(in_shape, num_classes, *, bias=True):  # type: ignore[no-untyped-def]
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), num_classes, bias=bias))

    try:
        assert list_models()["_test_linear"] == "a test model"
        model = build_model("_test_linear", (2, 3, 3), 5, bias=False)
        assert _linears(model)[0].bias is None
        with pytest.raises(ValueError, match="^model '_test_linear' is already registered$"):
            register_model("_test_linear", "again")(_build)
    finally:
        del models_module._REGISTRY["_test_linear"]


# ----------------------------------------------------------------------------- mlp


def test_mlp_structure() -> None:
    model = build_model("mlp", (1, 8, 8), 10, hidden_sizes=[7, 5], activation="tanh")
    shapes = [(m.in_features, m.out_features) for m in _linears(model)]
    assert shapes == [(64, 7), (7, 5), (5, 10)]
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 2
    assert not any(isinstance(m, (nn.ReLU, nn.Dropout)) for m in model.modules())


def test_mlp_default_is_two_relu_hidden_layers() -> None:
    model = build_model("mlp", (3, 4, 4), 2)
    assert [(m.in_features, m.out_features) for m in _linears(model)] == [(48, 256), (256, 256), (256, 2)]
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 2


def test_mlp_dropout_layout() -> None:
    model = build_model("mlp", (1, 8, 8), 10, hidden_sizes=[7, 5], dropout=0.3, input_dropout=0.1)
    layers = list(model)
    kinds = [type(m).__name__ for m in layers]
    assert kinds == ["Flatten", "Dropout", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert [m.p for m in layers if isinstance(m, nn.Dropout)] == [0.1, 0.3, 0.3]


def test_mlp_empty_hidden_is_linear() -> None:
    model = build_model("mlp", (1, 2, 3), 4, hidden_sizes=[])
    assert [(m.in_features, m.out_features) for m in _linears(model)] == [(6, 4)]


def _first_weight_std(init: str) -> float:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 32, 32), 10, hidden_sizes=[512], init=init)
    return _linears(model)[0].weight.std().item()


def test_mlp_init_changes_weight_std() -> None:
    fan_in, fan_out = 1024, 512
    default, xavier, he = (_first_weight_std(i) for i in ("default", "xavier", "he"))
    assert default == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.1)  # kaiming_uniform(a=sqrt(5))
    assert xavier == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.1)
    assert he == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
    assert default < xavier < he


@pytest.mark.parametrize("init", ["xavier", "he"])
def test_mlp_init_zeroes_biases(init: str) -> None:
    model = build_model("mlp", (1, 4, 4), 3, hidden_sizes=[8], init=init)
    assert all(torch.count_nonzero(m.bias) == 0 for m in _linears(model))


# ----------------------------------------------------------------------------- cnn / resnet


def test_cnn_options() -> None:
    model = build_model("cnn", (3, 32, 32), 10, width=8, dropout=0.25)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32]
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.25]
    assert _linears(model)[-1].in_features == 32


def test_resnet_accepts_any_channel_count_and_size() -> None:
    model = build_model("resnet20", (5, 20, 12), 7)
    assert _forward(model, (5, 20, 12)).shape == (3, 7)


def test_resnet_init() -> None:
    model = build_model("resnet20", (3, 32, 32), 10)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    conv = model.layer3[0].conv2  # 64 -> 64, 3x3: fan_out = 576
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.1)
    # 32 -> 64: fan_out (576) and fan_in (288) differ, so this one tells the modes apart
    conv = model.layer3[0].conv1
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.1)


# ----------------------------------------------------------------------------- errors


def test_unknown_model_message() -> None:
    with pytest.raises(RecipeError) as exc:
        build_model("resnet18", (3, 32, 32), 10)
    assert str(exc.value) == (
        "unknown model 'resnet18'; known models: cnn, mlp, resnet20, resnet32, resnet32x4, "
        "resnet56, resnet8x4, or timm:<name> for any timm model"
    )


def test_unknown_option_message() -> None:
    with pytest.raises(RecipeError) as exc:
        build_model("mlp", (1, 28, 28), 10, width=3, depth=2)
    assert str(exc.value) == (
        "model 'mlp' does not take option(s) depth, width; "
        "it takes: activation, dropout, hidden_sizes, init, input_dropout"
    )


def test_resnet_takes_no_options() -> None:
    with pytest.raises(RecipeError, match=re.escape("model 'resnet20' does not take option(s) dropout")):
        build_model("resnet20", (3, 32, 32), 10, dropout=0.1)


def test_bad_activation_message() -> None:
    with pytest.raises(RecipeError) as exc:
        build_model("mlp", (1, 28, 28), 10, activation="gelu")
    assert str(exc.value) == "model 'mlp': activation must be one of relu, tanh, sigmoid, got 'gelu'"


def test_bad_init_message() -> None:
    with pytest.raises(RecipeError) as exc:
        build_model("mlp", (1, 28, 28), 10, init="orthogonal")
    assert str(exc.value) == "model 'mlp': init must be one of default, xavier, he, got 'orthogonal'"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"dropout": 1.5}, "dropout must be a number in [0, 1), got 1.5"),
        ({"input_dropout": -0.1}, "input_dropout must be a number in [0, 1), got -0.1"),
        ({"hidden_sizes": [4, 0]}, "hidden_sizes must be a list of positive integers, got [4, 0]"),
    ],
)
def test_bad_mlp_values(options: dict, fragment: str) -> None:
    with pytest.raises(RecipeError, match=re.escape(f"model 'mlp': {fragment}")):
        build_model("mlp", (1, 8, 8), 10, **options)


def test_bad_shape_and_classes() -> None:
    with pytest.raises(RecipeError, match="input shape must be three positive integers"):
        build_model("mlp", (28, 28), 10)  # type: ignore[arg-type]
    with pytest.raises(RecipeError, match="num_classes must be a positive integer, got 0"):
        build_model("mlp", (1, 28, 28), 0)


@pytest.mark.parametrize("name", ["cnn", "resnet20"])
def test_too_small_input_refused(name: str) -> None:
    with pytest.raises(RecipeError) as exc:
        build_model(name, (1, 4, 4), 10)
    assert str(exc.value) == (
        f"model '{name}' cannot take input of shape (1, 4, 4) with 10 classes: "
        "it needs inputs of at least 8x8 pixels"
    )


def test_check_model_refuses_failing_forward() -> None:
    # An mlp built for 8x8 inputs genuinely fails on 28x28 (matmul shape mismatch).
    model = build_model("mlp", (1, 8, 8), 10)
    with pytest.raises(RecipeError) as exc:
        check_model(model, "mlp", (1, 28, 28), 10)
    message = str(exc.value)
    assert message.startswith("model 'mlp' cannot take input of shape (1, 28, 28) with 10 classes: ")
    assert "\n" not in message
    assert "shapes cannot be multiplied" in message


def test_check_model_refuses_wrong_output_shape() -> None:
    with pytest.raises(RecipeError) as exc:
        check_model(nn.Flatten(), "flat", (1, 2, 2), 10)
    assert str(exc.value) == (
        "model 'flat' cannot take input of shape (1, 2, 2) with 10 classes: "
        "it returned shape (2, 4) instead of (2, 10)"
    )


@pytest.mark.parametrize("mode", [True, False])
def test_check_model_restores_mode(mode: bool) -> None:
    model = build_model("cnn", (1, 8, 8), 3, dropout=0.5)
    model.train(mode)
    model[1].train(not mode)  # a submodule in the other mode must keep it too
    before = [m.training for m in model.modules()]
    check_model(model, "cnn", (1, 8, 8), 3)
    assert [m.training for m in model.modules()] == before


def test_check_model_restores_mode_after_failure() -> None:
    model = build_model("mlp", (1, 8, 8), 10).train()
    with pytest.raises(RecipeError):
        check_model(model, "mlp", (1, 9, 9), 10)
    assert all(m.training for m in model.modules())


def test_check_model_runs_in_eval_without_grad() -> None:
    seen: list[tuple[bool, bool]] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((self.training, torch.is_grad_enabled()))
            return x.flatten(1)[:, :3]

    check_model(Probe().train(), "probe", (1, 2, 2), 3)
    assert seen == [(False, False)]


# ----------------------------------------------------------------------------- timm


def test_timm_model_builds_offline() -> None:
    model = build_model("timm:resnet10t", (1, 28, 28), 10)
    assert model.training  # check_model inside build_model restored timm's train mode
    assert _linears(model)[-1].out_features == 10
    assert _forward(model, (1, 28, 28), n=2).shape == (2, 10)


def test_timm_options_pass_through() -> None:
    model = build_model("timm:resnet10t", (3, 32, 32), 5, drop_rate=0.2)
    assert model.drop_rate == 0.2


def test_timm_unknown_name_message() -> None:
    with pytest.raises(RecipeError) as exc:
        build_model("timm:not_a_real_model", (3, 32, 32), 10)
    assert str(exc.value) == "unknown timm model 'not_a_real_model'; timm.list_models() shows the valid names"


def test_timm_bad_option_refused() -> None:
    with pytest.raises(RecipeError, match=re.escape("model 'timm:resnet10t': timm could not build it: ")):
        build_model("timm:resnet10t", (3, 32, 32), 10, no_such_option=1)
    with pytest.raises(RecipeError, match=re.escape("model 'timm:resnet10t': option(s) pretrained are set")):
        build_model("timm:resnet10t", (3, 32, 32), 10, pretrained=True)


def test_timm_shape_refusal() -> None:
    # A ViT with a fixed 224x224 patch grid genuinely fails on 32x32 input.
    with pytest.raises(RecipeError) as exc:
        build_model("timm:vit_tiny_patch16_224", (3, 32, 32), 10)
    assert str(exc.value) == (
        "model 'timm:vit_tiny_patch16_224' cannot take input of shape (3, 32, 32) with 10 classes: "
        "Input height (32) doesn't match model (224)."
    )
