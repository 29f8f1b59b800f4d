"""Detectors on the shared backbone: timm multi-scale features -> FPN -> torchvision's FCOS, RetinaNet or
Faster R-CNN. The losses, matching, box coding and NMS are torchvision's; this module only assembles the parts.

Boxes everywhere are xyxy pixels; class labels are 0..K-1 (Faster R-CNN's background class 0 is handled here,
so callers never see it). Images come in already normalised (the datamodule ends its pipelines with the
backbone's normalisation), so torchvision's transform is set to mean 0 / std 1 and only pads the batch: to a fixed
image_size x image_size canvas, so an image's detections do not depend on the other images in its batch.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from cvsuite.config import ConfigError
from cvsuite.models.backbone import DEFAULT_BACKBONE, create_backbone, feature_channels, feature_reductions

ARCHITECTURES = ("fcos", "retinanet", "faster_rcnn")
# The box regression losses that model.box_loss_weight scales: GIoU (fcos), smooth L1 (retinanet, faster_rcnn's box
# head); the RPN's proposals keep weight 1.
BOX_LOSSES = ("bbox_regression", "loss_box_reg")


class Float32P6P7(LastLevelP6P7):
    """torchvision's P6/P7 levels, computed in float32 under mixed precision (same parameters and names).

    These stride-64/128 maps are 1-2 pixels wide at small input sizes; in bf16 their gradients went NaN on the
    CPU within two steps (tests/test_precision.py), in float32 they stay finite. Two small convolutions: no cost.
    """

    def forward(self, p: list[Tensor], c: list[Tensor], names: list[str]):
        with torch.autocast(p[0].device.type, enabled=False):
            return super().forward([x.float() for x in p], [x.float() for x in c], names)


class TimmFPN(nn.Module):
    """A timm ``features_only`` trunk followed by an FPN; ``out_channels`` is torchvision's backbone contract.

    Forward: (N, 3, H, W) -> OrderedDict of (N, out_channels, H/s, W/s) maps, one per trunk level plus the
    extra levels (P6/P7 for one-stage heads, a max-pooled level for Faster R-CNN).
    """

    def __init__(self, body: nn.Module, out_channels: int, extra: str) -> None:
        super().__init__()
        self.body = body
        channels = feature_channels(body)
        self.strides = feature_reductions(body)
        self.names = [str(i) for i in range(len(channels))]
        if extra == "p6p7":
            # P6/P7 from P5 (in = out channels), as torchvision's FCOS and RetinaNet v2 do.
            extra_block = Float32P6P7(out_channels, out_channels)
            self.strides = self.strides + [self.strides[-1] * 2, self.strides[-1] * 4]
        else:
            extra_block = LastLevelMaxPool()
            self.strides = self.strides + [self.strides[-1] * 2]
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=extra_block)
        self.out_channels = out_channels
        # Depthwise convolutions (EfficientNet, MobileNet) run about 2x faster channels-last on CPU (measured on
        # tf_efficientnet_lite0, training and inference); the FPN and heads were not faster, so they stay NCHW.
        self.body.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        features = self.body(x.contiguous(memory_format=torch.channels_last))
        return self.fpn(OrderedDict(zip(self.names, features)))


class FixedCanvasTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform, padding every image to the same image_size x image_size canvas.

    torchvision pads to the batch's largest image, so the same photo gets a different padded size (and so different
    features, anchors and scores) next to a portrait than alone. torchvision's resize with min_size = max_size =
    image_size brings the longest side of any image to image_size (the eval pipeline's output is left as it is);
    padding to one canvas then makes each image's result independent of its batch. An exported graph (traced) pads
    to the same canvas, so ONNX/TorchScript compute what eager mode does for every aspect ratio.
    """

    def __init__(self, image_size: int) -> None:
        # mean 0 / std 1: the datamodule has normalised already; don't do it twice
        super().__init__(image_size, image_size, image_mean=[0.0] * 3, image_std=[1.0] * 3)
        self.canvas = image_size

    def batch_images(self, images: list[Tensor], size_divisible: int = 32) -> Tensor:
        side = int(math.ceil(self.canvas / size_divisible) * size_divisible)
        if torchvision._is_tracing():
            # While tracing, sizes are tensors: F.pad records each image's own (dynamic) size, padded to the constant
            # canvas. Images were resized to fit it just before, as in eager mode.
            return torch.stack([F.pad(im, (0, side - im.shape[-1], 0, side - im.shape[-2])) for im in images])
        height = max([side, *(int(math.ceil(im.shape[-2] / size_divisible) * size_divisible) for im in images)])
        width = max([side, *(int(math.ceil(im.shape[-1] / size_divisible) * size_divisible) for im in images)])
        batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
        for canvas, image in zip(batch, images):
            canvas[:, : image.shape[-2], : image.shape[-1]].copy_(image)
        return batch


def _one_stage_anchors(strides: Sequence[int], retina: bool) -> AnchorGenerator:
    if retina:
        # Three scales an octave apart and three aspect ratios per level, 4x the stride (RetinaNet's recipe).
        sizes = tuple((4 * s, int(4 * s * 2 ** (1 / 3)), int(4 * s * 2 ** (2 / 3))) for s in strides)
        return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))
    # FCOS uses one 'anchor' per location only as its centre and size (= stride) for the scale ranges.
    return AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))


class Detector(nn.Module):
    """One of torchvision's detectors on a `TimmFPN`, with labels 0..K-1 in and out.

    Training: ``forward(images, targets)`` -> dict of losses (the box regression loss times ``box_loss_weight``).
    Inference: ``forward(images)`` -> per image
    ``boxes`` (N, 4) xyxy pixels of the input image, ``scores`` (N,), ``labels`` (N,) in 0..K-1.
    images: list of (3, H, W) normalised tensors (sizes may differ); targets: per image ``boxes``, ``labels``.
    """

    def __init__(
        self,
        architecture: str,
        num_classes: int,
        backbone: str = DEFAULT_BACKBONE,
        pretrained: bool = True,
        weights: str | None = None,
        out_indices: Sequence[int] = (-3, -2, -1),
        fpn_channels: int = 128,
        head_convs: int = 4,
        image_size: int = 512,
        score_thresh: float = 0.05,
        nms_iou: float = 0.6,
        max_detections: int = 100,
        box_loss_weight: float = 1.0,
        center_sampling_radius: float = 1.5,
        frozen_levels: int = 0,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ConfigError(f"model.architecture: unknown '{architecture}'. Choose one of {', '.join(ARCHITECTURES)}")
        if architecture == "fcos" and (fpn_channels % 32 or fpn_channels < 64):
            # FCOS's head normalises with GroupNorm(32 groups), which needs 2+ values per group on a 1x1 P7 map.
            raise ConfigError(
                f"model.fpn_channels must be a multiple of 32 and at least 64 for fcos, got {fpn_channels}"
            )
        self.architecture = architecture
        self.box_loss_weight = float(box_loss_weight)
        # Faster R-CNN reserves label 0 for background; the one-stage heads use sigmoid scores over K classes.
        self.label_offset = 1 if architecture == "faster_rcnn" else 0
        body = create_backbone(
            backbone,
            pretrained=pretrained,
            weights=weights,
            features_only=True,
            out_indices=out_indices,
            **backbone_kwargs,
        )
        trunk = TimmFPN(body, fpn_channels, "pool" if architecture == "faster_rcnn" else "p6p7")
        # A plain list: the same modules, not registered twice (the checkpoint's keys stay those of the trunk).
        self.fixed: list[nn.Module] = early_layers(body, frozen_levels)
        common = {
            "min_size": image_size,
            "max_size": image_size,
            "image_mean": [0.0, 0.0, 0.0],  # the datamodule has normalised already; don't do it twice
            "image_std": [1.0, 1.0, 1.0],
        }
        if architecture == "fcos":
            anchors = _one_stage_anchors(trunk.strides, retina=False)
            head = FCOSHead(fpn_channels, 1, num_classes, num_convs=head_convs)
            self.model = FCOS(
                trunk,
                num_classes,
                anchor_generator=anchors,
                head=head,
                center_sampling_radius=center_sampling_radius,
                **common,
            )
        elif architecture == "retinanet":
            anchors = _one_stage_anchors(trunk.strides, retina=True)
            self.model = RetinaNet(trunk, num_classes, anchor_generator=anchors, **common)
        else:
            levels = trunk.strides[:-1]  # RoIAlign on the trunk's levels, not on the pooled extra one
            anchors = AnchorGenerator(
                tuple((4 * s, int(4 * s * 2 ** (1 / 3)), int(4 * s * 2 ** (2 / 3))) for s in trunk.strides),
                ((0.5, 1.0, 2.0),) * len(trunk.strides),
            )
            self.model = FasterRCNN(
                trunk,
                num_classes + 1,
                rpn_anchor_generator=anchors,
                rpn_head=RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]),
                box_roi_pool=MultiScaleRoIAlign(trunk.names[: len(levels)], output_size=7, sampling_ratio=2),
                **common,
            )
        self.model.transform = FixedCanvasTransform(image_size)
        self.set_postprocess(score_thresh, nms_iou, max_detections)
        # fp32 island under mixed precision: box decoding, focal/GIoU losses and NMS see float32 head outputs
        # (bf16's 8-bit mantissa moves a 500-pixel box edge by ~2 pixels; fp16 overflows exp() of box deltas).
        for part in _prediction_layers(self.model):
            part.register_forward_hook(_outputs_to_float)

    def fix_early_layers(self) -> None:
        """model.frozen_levels: the trunk's layers up to that feature level stay frozen for the whole run (after
        any freeze schedule has set the rest), their BatchNorm in eval; `train` keeps them so."""
        for m in self.fixed:
            m.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> Detector:
        super().train(mode)
        for m in (m for layer in self.fixed for m in layer.modules()):
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    @property
    def trunk(self) -> nn.Module:
        """The pretrained timm feature extractor (what freezing and the backbone lr apply to)."""
        return self.model.backbone.body

    def set_postprocess(self, score_thresh: float, nms_iou: float, max_detections: int) -> None:
        """Score threshold, NMS IoU and detections per image; changeable after loading a checkpoint."""
        m = self.model
        if self.architecture == "faster_rcnn":
            m.roi_heads.score_thresh, m.roi_heads.nms_thresh = score_thresh, nms_iou
            m.roi_heads.detections_per_img = max_detections
        else:
            m.score_thresh, m.nms_thresh, m.detections_per_img = score_thresh, nms_iou, max_detections

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if targets is not None and self.label_offset:
            targets = [{**t, "labels": t["labels"] + self.label_offset} for t in targets]
        out = self.model(images, targets)
        if isinstance(out, dict):  # losses
            return {k: v * self.box_loss_weight if k in BOX_LOSSES else v for k, v in out.items()}
        if self.label_offset:
            out = [{**d, "labels": d["labels"] - self.label_offset} for d in out]
        return out

    @torch.no_grad()
    def losses(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The training losses without changing the model: torchvision computes losses only in training mode,
        so switch to it with every normalisation and dropout layer held in eval (running statistics untouched)."""
        modes = {m: m.training for m in self.modules()}
        try:
            self.train()
            for m in self.modules():
                if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) or "Drop" in type(m).__name__:
                    m.eval()
            return self(images, targets)
        finally:
            for m, mode in modes.items():
                m.training = mode


def early_layers(body: nn.Module, levels: int) -> list[nn.Module]:
    """The modules of a timm ``features_only`` trunk that compute its first `levels` feature levels (all of them,
    listed in ``body.feature_info``, whatever ``out_indices`` keeps): for EfficientNet ``levels=2`` is the stem,
    ``blocks.0`` and ``blocks.1`` (strides 2 and 4), for ResNet the stem and ``layer1``. timm registers a trunk's
    layers in the order they run, so they are the modules listed before the end of that level's module."""
    info = body.feature_info.info
    if not 0 <= levels <= len(info):
        raise ConfigError(
            f"model.frozen_levels must be in [0, {len(info)}] (the backbone's feature levels), got {levels}"
        )
    if levels == 0:
        return []
    last = info[levels - 1]["module"]
    names = [n for n, _ in body.named_modules()]
    end = names.index(last) + 1
    while end < len(names) and names[end].startswith(last + "."):
        end += 1
    # The parents of that module hold later layers too: leave them out. Of the rest, the outermost modules only.
    inside = [n for n in names[1:end] if not last.startswith(n + ".")]
    chosen = [n for n in inside if not any(n.startswith(c + ".") for c in inside)]
    return [body.get_submodule(n) for n in chosen]


def _prediction_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose outputs feed box decoding and the losses (one-stage head; RPN head and box predictor)."""
    if hasattr(model, "roi_heads"):
        return [model.rpn.head, model.roi_heads.box_predictor]
    return [model.head]


def _to_float(x):
    if isinstance(x, Tensor):
        return x.float()
    if isinstance(x, dict):
        return {k: _to_float(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_float(v) for v in x)
    return x


def _outputs_to_float(module: nn.Module, inputs, outputs):
    return _to_float(outputs)
