"""Export: ONNX and TorchScript files for classification, segmentation and detection that onnxruntime / torch.jit
run to the same outputs as PyTorch on real images; a sidecar with what a runtime needs; a broken export is caught
by the parity check (exit 1, file kept); a task or format that cannot be exported is a named error."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cvsuite.commands import main
from cvsuite.data.common import read_image
from cvsuite.run import load_checkpoint

pytest_plugins = ["tests.surface_fixtures"]  # cls_run, seg_run, det_run


def test_classification_onnx_gives_the_checkpoint_scores(cls_run, tmp_path, capsys):
    data, run = cls_run
    ckpt = run / "checkpoints/best.ckpt"
    assert main(["export", "--ckpt", str(ckpt), "--output", str(tmp_path / "out")]) == 0
    assert "max |difference|" in capsys.readouterr().out
    meta = json.loads((tmp_path / "out/model.json").read_text())
    assert meta["class_names"] == ["blue", "red"] and meta["outputs"] == ["scores"]
    assert len(meta["mean"]) == len(meta["std"]) == 3
    # run the file the way a deployment would: sidecar preprocessing by hand, onnxruntime
    module, _, _ = load_checkpoint(ckpt)
    image = read_image(next((data / "val/red").glob("*.png")))
    x = (image.astype(np.float32) / 255 - np.array(meta["mean"], np.float32)) / np.array(meta["std"], np.float32)
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
    session = ort.InferenceSession(str(tmp_path / "out/model.onnx"), providers=["CPUExecutionProvider"])
    ours = session.run(None, {"images": np.concatenate([x, x])})[0]  # batch axis is dynamic
    with torch.no_grad():
        ref = module.eval()(torch.from_numpy(x)).softmax(-1).numpy()
    assert ours.shape == (2, 2)
    np.testing.assert_allclose(ours[0], ref[0], atol=1e-4)


def test_classification_torchscript(cls_run, tmp_path):
    _, run = cls_run
    assert main(["export", "--ckpt", str(run / "checkpoints/best.ckpt"), "--format", "torchscript",
                 "--output", str(tmp_path)]) == 0  # fmt: skip
    scripted = torch.jit.load(str(tmp_path / "model.pt"))
    out = scripted(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 2) and torch.allclose(out.sum(1), torch.ones(3), atol=1e-5)


def test_segmentation_onnx_any_size(seg_run, tmp_path):
    _, run = seg_run
    assert main(["export", "--ckpt", str(run / "checkpoints/best.ckpt"), "--output", str(tmp_path)]) == 0
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 64, 96)
    ours = session.run(None, {"images": x.numpy()})[0]
    module, _, _ = load_checkpoint(run / "checkpoints/best.ckpt")
    with torch.no_grad():
        ref = module.eval()(x).numpy()
    assert ours.shape == (1, 2, 64, 96)
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_detection_onnx_includes_postprocessing(det_run, tmp_path, capsys):
    _, run = det_run
    ckpt = str(run / "checkpoints/best.ckpt")
    assert main(["export", "--ckpt", ckpt, "--output", str(tmp_path), "--model.score_thresh", "0.0"]) == 0
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["outputs"] == ["boxes", "scores", "labels"] and meta["postprocess"]["score_thresh"] == 0.0
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {"images": np.random.default_rng(0).normal(size=(1, 3, 64, 64))
                                               .astype(np.float32)})  # fmt: skip
    assert boxes.shape == (len(scores), 4) and len(labels) == len(scores) > 0


def test_a_broken_export_fails_the_parity_check_and_keeps_the_file(cls_run, tmp_path, capsys, monkeypatch):
    import cvsuite.export as ex

    real = ex._write_onnx

    def broken(net, example, path, outputs, dynamic):
        with torch.no_grad():
            net.net[1][1].bias[0] += 2.0  # the written file no longer matches the checkpoint
        real(net, example, path, outputs, dynamic)
        with torch.no_grad():
            net.net[1][1].bias[0] -= 2.0

    monkeypatch.setattr(ex, "_write_onnx", broken)
    _, run = cls_run
    code = main(["export", "--ckpt", str(run / "checkpoints/best.ckpt"), "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "differs from PyTorch" in err and "file is kept" in err
    assert (tmp_path / "model.onnx").is_file()


def test_what_cannot_be_exported_is_named(cls_run, tmp_path, capsys):
    _, run = cls_run
    ckpt = str(run / "checkpoints/best.ckpt")
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", ckpt, "--output", str(tmp_path), "--format", "tflite"])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    assert main(["export", "--ckpt", ckpt, "--output", str(tmp_path), "--images", str(tmp_path / "none")]) == 2
    assert "none: no such file or folder" in capsys.readouterr().err


def test_a_task_without_an_export_is_named():
    from cvsuite.export import _network

    with pytest.raises(ValueError, match="generation checkpoints cannot be exported"):
        _network(object(), "generation")
