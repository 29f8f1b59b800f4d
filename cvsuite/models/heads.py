"""New heads on top of the pretrained trunk, with the initialisation a new layer needs."""

from __future__ import annotations

from torch import nn

from cvsuite.config import ConfigError

INITS = ("xavier", "he", "default")


def init_new_layers(module: nn.Module, scheme: str = "xavier") -> None:
    """Xavier (Glorot) uniform or He (Kaiming) normal for conv/linear weights, zero biases."""
    if scheme not in INITS:
        raise ConfigError(f"model.head_init: unknown '{scheme}'. Choose one of {', '.join(INITS)}")
    if scheme == "default":
        return
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if scheme == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ClassifierHead(nn.Sequential):
    """Pooled features (N, in_features) -> dropout -> logits (N, num_classes)."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0, init: str = "xavier") -> None:
        super().__init__(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
        init_new_layers(self, init)
