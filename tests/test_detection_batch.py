"""Detections do not depend on batch composition: an image predicted alone and next to images of other sizes (one
portrait) gets the same boxes and scores, for every head, so predict and validation mAP do not either."""

from __future__ import annotations

import pytest
import torch

from cvsuite.models.detection import Detector

TINY = dict(backbone="test_efficientnet", pretrained=False, fpn_channels=64, image_size=96)


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, h, w, generator=g) * 0.4 - 1
    image[:, h // 4 : h // 2, w // 4 : w // 2] = 0.8  # something box-like to score
    return image


@pytest.mark.parametrize("architecture", ["fcos", "retinanet", "faster_rcnn"])
def test_an_image_gets_the_same_detections_alone_and_in_a_mixed_batch(architecture):
    torch.manual_seed(0)
    det = Detector(architecture, num_classes=2, score_thresh=0.0, max_detections=20, **TINY).eval()
    if architecture == "retinanet":  # its prior-initialised head scores every anchor alike; spread them out
        torch.nn.init.normal_(det.model.head.classification_head.cls_logits.weight, std=0.1)
    # Sizes as the eval pipeline gives them: longest side = image_size (96), any aspect.
    landscape, portrait, square = _image(40, 96, 1), _image(96, 36, 2), _image(96, 96, 3)
    with torch.no_grad():
        alone = det([landscape])[0]
        batched = det([portrait, landscape, square])[1]
        reordered = det([square, landscape])[1]
    assert len(alone["boxes"]) > 0
    for other in (batched, reordered):
        torch.testing.assert_close(other["boxes"], alone["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(other["scores"], alone["scores"], rtol=1e-4, atol=1e-5)
        assert torch.equal(other["labels"], alone["labels"])
    # The boxes stay on the image itself, not on the padding.
    assert float(alone["boxes"][:, 2].max()) <= 96 and float(alone["boxes"][:, 3].max()) <= 40
