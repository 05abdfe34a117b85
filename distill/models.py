"""Model registry: the networks a recipe can name, built for a dataset's input shape.

Every model takes images as a float tensor of shape ``[N, C, H, W]`` and returns raw
(unnormalised) logits of shape ``[N, num_classes]``.

A recipe names a model by its registered name (``mlp``, ``cnn``, ``resnet20``, ...) or as
``timm:<name>`` for any model in the timm library (always built with ``pretrained=False``,
so nothing is downloaded). :func:`build_model` builds the model and then runs
:func:`check_model`, a dry forward pass, so a model that cannot take the dataset's input is
refused with a one-line :class:`~distill.errors.RecipeError` before training starts.

New models are added with the :func:`register_model` decorator::

    @register_model("tiny", "a single linear layer")
    def _build_tiny(in_shape, num_classes, *, bias=True):
        ...

The builder's keyword-only parameters are the options a recipe may pass; any other option
is refused by name.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from distill.errors import RecipeError

__all__ = ["register_model", "list_models", "build_model", "check_model", "count_parameters"]

InShape = tuple[int, int, int]
Builder = Callable[..., nn.Module]

TIMM_PREFIX = "timm:"
_TIMM_RESERVED = ("in_chans", "num_classes", "pretrained")


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """A registered model: its builder and a one-line description."""

    builder: Builder
    description: str


_REGISTRY: dict[str, _Entry] = {}


class _OptionValueError(Exception):
    """Raised by a builder for a bad option value; build_model prefixes the model name."""


class _InputShapeError(Exception):
    """Raised by a builder for an input shape the model cannot take (before building)."""


def register_model(name: str, description: str) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(in_shape, num_classes, **options) -> nn.Module``.

    The builder's keyword-only parameters are the options it accepts. ``name`` must be new
    and must not start with ``timm:``. Returns the builder unchanged.
    """
    if not name or name.startswith(TIMM_PREFIX):
        raise ValueError(f"invalid model name {name!r}")

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = _Entry(builder=builder, description=description)
        return builder

    return decorator


def list_models() -> dict[str, str]:
    """Registered model names (sorted) mapped to their one-line descriptions; timm excluded."""
    return {name: _REGISTRY[name].description for name in sorted(_REGISTRY)}


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``) of ``model``; shared ones once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def input_format(model: nn.Module) -> torch.memory_format:
    """The layout to feed ``model``'s [B, C, H, W] inputs in: ``channels_last`` where its
    convolution weights are laid out so (a conv net placed channels-last), else NCHW.
    Weights whose strides fit both layouts (one input channel, 1 x 1 kernels) say nothing."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            w = module.weight
            cl, nchw = w.is_contiguous(memory_format=torch.channels_last), w.is_contiguous()
            if cl != nchw:
                return torch.channels_last if cl else torch.contiguous_format
    return torch.contiguous_format


# --------------------------------------------------------------------------------------
# Building and checking
# --------------------------------------------------------------------------------------


def build_model(name: str, in_shape: tuple[int, int, int], num_classes: int, **options: Any) -> nn.Module:
    """Build model ``name`` for inputs ``[N, *in_shape]`` and ``num_classes`` output logits.

    ``name`` is a registered name or ``timm:<timm model name>``. ``options`` go to the
    builder; unknown ones are refused (timm passes them through to ``timm.create_model``).
    The model is built on the CPU and checked with :func:`check_model`.

    Raises:
        RecipeError: unknown model or option, bad option value, or an input shape or class
            count the model cannot take.
    """
    in_shape = _validate_in_shape(name, in_shape)
    _validate_num_classes(name, num_classes)
    builder = _lookup(name)
    _check_option_names(name, builder, options)
    try:
        model = builder(in_shape, num_classes, **options)
    except _OptionValueError as exc:
        raise RecipeError(f"model {name!r}: {exc}") from None
    except _InputShapeError as exc:
        raise RecipeError(_shape_message(name, in_shape, num_classes, str(exc))) from None
    check_model(model, name, in_shape, num_classes)
    return model


def check_model(model: nn.Module, name: str, in_shape: tuple[int, int, int], num_classes: int) -> None:
    """Dry-run ``model`` on ``torch.zeros(2, *in_shape)`` and require ``[2, num_classes]`` out.

    Runs in eval mode under ``torch.no_grad`` on the device of the model's first parameter
    (the CPU for a freshly built model); every submodule's train/eval mode is restored
    afterwards.

    Raises:
        RecipeError: ``model 'NAME' cannot take input of shape (C, H, W) with NUM classes:
            REASON`` where REASON is the first line of the forward's exception or the
            shape the model returned instead.
    """
    shape = tuple(int(d) for d in in_shape)
    modes = {module: module.training for module in model.modules()}
    x = torch.zeros(2, *shape, device=_model_device(model))
    try:
        model.eval()
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - any failure of the forward is the user's input
        raise RecipeError(_shape_message(name, shape, num_classes, _first_line(exc))) from None
    finally:
        for module, training in modes.items():
            module.training = training
    expected = (2, num_classes)
    if not isinstance(out, torch.Tensor):
        reason = f"it returned a {type(out).__name__} instead of a tensor of shape {expected}"
        raise RecipeError(_shape_message(name, shape, num_classes, reason))
    if tuple(out.shape) != expected:
        reason = f"it returned shape {tuple(out.shape)} instead of {expected}"
        raise RecipeError(_shape_message(name, shape, num_classes, reason))


def _lookup(name: str) -> Builder:
    """The builder for ``name``; timm names get a builder bound to the timm model name."""
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        return _timm_builder(name[len(TIMM_PREFIX):])
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name].builder
    known = ", ".join(sorted(_REGISTRY))
    raise RecipeError(f"unknown model {name!r}; known models: {known}, or timm:<name> for any timm model")


def _check_option_names(name: str, builder: Builder, options: dict[str, Any]) -> None:
    """Refuse options that are not keyword-only parameters of ``builder`` (unless ``**``)."""
    params = inspect.signature(builder).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = sorted(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no options"
        sep = ": " if accepted else " "
        raise RecipeError(f"model {name!r} does not take option(s) {', '.join(unknown)}; it takes{sep}{takes}")


def _validate_in_shape(name: str, in_shape: Sequence[int]) -> InShape:
    """``in_shape`` as a tuple of three positive ints, or a RecipeError."""
    ok = (
        isinstance(in_shape, (tuple, list))
        and len(in_shape) == 3
        and all(_is_int(d) and d > 0 for d in in_shape)
    )
    if not ok:
        raise RecipeError(f"model {name!r}: input shape must be three positive integers (C, H, W), got {in_shape!r}")
    c, h, w = (int(d) for d in in_shape)
    return (c, h, w)


def _validate_num_classes(name: str, num_classes: int) -> None:
    """Refuse a class count that is not a positive int."""
    if not (_is_int(num_classes) and num_classes > 0):
        raise RecipeError(f"model {name!r}: num_classes must be a positive integer, got {num_classes!r}")


def _shape_message(name: str, in_shape: Sequence[int], num_classes: int, reason: str) -> str:
    """The one-line refusal for an input shape / class count the model cannot take."""
    return f"model {name!r} cannot take input of shape {tuple(in_shape)} with {num_classes} classes: {reason}"


def _first_line(exc: BaseException) -> str:
    """First non-empty line of an exception's message, or its type name if it has none."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer; the CPU if it has neither."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


# --------------------------------------------------------------------------------------
# Option validation helpers (raise _OptionValueError / _InputShapeError)
# --------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    """True for ints that are not bools."""
    return isinstance(value, int) and not isinstance(value, bool)


def _choice(option: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else an option error listing them."""
    if value not in choices:
        raise _OptionValueError(f"{option} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _probability(option: str, value: Any) -> float:
    """``value`` as a float in [0, 1), else an option error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise _OptionValueError(f"{option} must be a number in [0, 1), got {value!r}")
    return float(value)


def _positive_int(option: str, value: Any) -> int:
    """``value`` if it is a positive int, else an option error."""
    if not (_is_int(value) and value > 0):
        raise _OptionValueError(f"{option} must be a positive integer, got {value!r}")
    return value


def _positive_int_list(option: str, value: Any) -> list[int]:
    """``value`` as a list of positive ints (may be empty), else an option error."""
    if not isinstance(value, (list, tuple)) or not all(_is_int(v) and v > 0 for v in value):
        raise _OptionValueError(f"{option} must be a list of positive integers, got {value!r}")
    return list(value)


def _require_min_size(in_shape: InShape, min_size: int) -> None:
    """Refuse inputs whose height or width is below ``min_size`` pixels."""
    _, h, w = in_shape
    if h < min_size or w < min_size:
        raise _InputShapeError(f"it needs inputs of at least {min_size}x{min_size} pixels")


# --------------------------------------------------------------------------------------
# mlp
# --------------------------------------------------------------------------------------

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
_INITS = ("default", "xavier", "he")


def _init_linear(model: nn.Module, init: str) -> None:
    """Re-initialise every Linear of ``model``: xavier_normal_ or kaiming_normal_, biases 0."""
    if init == "default":
        return
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if init == "xavier":
                nn.init.xavier_normal_(module.weight)
            else:
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


@register_model("mlp", "multi-layer perceptron on flattened pixels")
def _build_mlp(
    in_shape: InShape,
    num_classes: int,
    *,
    hidden_sizes: Sequence[int] = (256, 256),
    activation: str = "relu",
    dropout: float = 0.0,
    input_dropout: float = 0.0,
    init: str = "default",
) -> nn.Module:
    """Flatten ``[N, C, H, W]`` -> [input dropout] -> (Linear, act, dropout)* -> Linear.

    Returns logits ``[N, num_classes]``.
    """
    sizes = _positive_int_list("hidden_sizes", hidden_sizes)
    act = _ACTIVATIONS[_choice("activation", activation, tuple(_ACTIVATIONS))]
    p_hidden = _probability("dropout", dropout)
    p_input = _probability("input_dropout", input_dropout)
    _choice("init", init, _INITS)

    layers: list[nn.Module] = [nn.Flatten()]
    if p_input > 0:
        layers.append(nn.Dropout(p_input))
    width = math.prod(in_shape)
    for size in sizes:
        layers += [nn.Linear(width, size), act()]
        if p_hidden > 0:
            layers.append(nn.Dropout(p_hidden))
        width = size
    layers.append(nn.Linear(width, num_classes))
    model = nn.Sequential(*layers)
    _init_linear(model, init)
    return model


# --------------------------------------------------------------------------------------
# cnn
# --------------------------------------------------------------------------------------


def _conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """conv3x3 (pad 1) -> BatchNorm -> ReLU -> 2x2 max pool: ``[N, in, H, W]`` -> ``[N, out, H/2, W/2]``."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class GlobalAvgPool(nn.Module):
    """``[N, C, H, W]`` -> ``[N, C, 1, 1]``, the mean over H and W.

    The same as ``nn.AdaptiveAvgPool2d(1)``, written as a mean because ``torch.func.vmap``
    (batched sweeps) has a batching rule for it, while adaptive pooling's backward falls
    back to a slow per-student loop.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


@register_model("cnn", "small 3-block conv net (conv-BN-ReLU-maxpool) for 28x28/32x32 images")
def _build_cnn(in_shape: InShape, num_classes: int, *, width: int = 32, dropout: float = 0.0) -> nn.Module:
    """Three conv blocks (width, 2*width, 4*width channels), global average pool, dropout, Linear.

    Takes ``[N, C, H, W]`` with H, W >= 8; returns logits ``[N, num_classes]``.
    """
    width = _positive_int("width", width)
    p = _probability("dropout", dropout)
    _require_min_size(in_shape, 8)
    channels = [in_shape[0], width, 2 * width, 4 * width]
    blocks = [_conv_block(channels[i], channels[i + 1]) for i in range(3)]
    return nn.Sequential(
        *blocks,
        GlobalAvgPool(),
        nn.Flatten(),
        nn.Dropout(p),
        nn.Linear(channels[-1], num_classes),
    )


# --------------------------------------------------------------------------------------
# CIFAR ResNets (He et al. 2016; filter layout as in the CRD benchmark)
# --------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU.

    ``[N, in_ch, H, W]`` -> ``[N, out_ch, H/stride, W/stride]``; the shortcut is a 1x1
    conv + BN projection when the stride or channel count changes, else the identity.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in_ch, H, W]`` -> ``[N, out_ch, H', W']``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images: stem conv3x3, three stages of BasicBlocks, GAP, Linear.

    ``filters`` = [stem, stage1, stage2, stage3] channels; each stage has
    ``(depth - 2) // 6`` blocks, strides 1, 2, 2. ``[N, C, H, W]`` -> ``[N, num_classes]``.
    """

    def __init__(self, depth: int, filters: Sequence[int], in_channels: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, filters[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(filters[0]),
            nn.ReLU(inplace=True),
        )
        self.layer1 = self._stage(filters[0], filters[1], n, stride=1)
        self.layer2 = self._stage(filters[1], filters[2], n, stride=2)
        self.layer3 = self._stage(filters[2], filters[3], n, stride=2)
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(filters[3], num_classes)
        self._init_weights()

    @staticmethod
    def _stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
        """``blocks`` BasicBlocks; the first one changes channels/stride."""
        layers = [BasicBlock(in_ch, out_ch, stride)]
        layers += [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        """Kaiming-normal convs (fan_out, relu); BatchNorm weight 1, bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` -> logits ``[N, num_classes]``."""
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _register_resnet(name: str, depth: int, filters: Sequence[int]) -> None:
    """Register a CIFAR ResNet builder (no options; inputs of at least 8x8)."""
    description = f"CIFAR ResNet, depth {depth}, filters {list(filters)}"

    @register_model(name, description)
    def _build(in_shape: InShape, num_classes: int) -> nn.Module:
        _require_min_size(in_shape, 8)
        return CifarResNet(depth, filters, in_shape[0], num_classes)

    _build.__doc__ = f"{description}: ``[N, C, H, W]`` (H, W >= 8) -> ``[N, num_classes]``."


for _name, _depth, _filters in (
    ("resnet20", 20, (16, 16, 32, 64)),
    ("resnet32", 32, (16, 16, 32, 64)),
    ("resnet56", 56, (16, 16, 32, 64)),
    ("resnet8x4", 8, (32, 64, 128, 256)),
    ("resnet32x4", 32, (32, 64, 128, 256)),
):
    _register_resnet(_name, _depth, _filters)


# --------------------------------------------------------------------------------------
# timm
# --------------------------------------------------------------------------------------


def _timm_builder(timm_name: str) -> Builder:
    """A builder for ``timm:<timm_name>`` that passes options through to timm (no download)."""
    import timm  # slow import; only when a timm model is asked for

    if not timm_name or not timm.is_model(timm_name):
        raise RecipeError(f"unknown timm model {timm_name!r}; timm.list_models() shows the valid names")

    def build(in_shape: InShape, num_classes: int, **options: Any) -> nn.Module:
        reserved = sorted(set(options) & set(_TIMM_RESERVED))
        if reserved:
            raise _OptionValueError(
                f"option(s) {', '.join(reserved)} are set by distill "
                "(in_chans and num_classes from the data, pretrained is always False)"
            )
        try:
            return timm.create_model(
                timm_name, pretrained=False, num_classes=num_classes, in_chans=in_shape[0], **options
            )
        except Exception as exc:  # noqa: BLE001 - bad timm options are the user's mistake
            raise _OptionValueError(f"timm could not build it: {_first_line(exc)}") from None

    return build
