"""One image, one answer: on a corpus of the shapes users bring (4:3, 3:4, 16:9, square, 100x75, 361x479,
2000x1500, EXIF-rotated, grey, RGBA, dim 16-bit; `cvsuite.testing.CORPUS`), every path computes the same thing for
every task: the validation step (``eval``), ``predict``, ``cvsuite.load(...)(image)`` one at a time or in a mixed
batch, and the exported ONNX and TorchScript files. And how it runs changes nothing: eval's batch size and workers,
training with 0 or 2 DataLoader workers, resumed with workers or not, 1 or 2 processes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import cvsuite
import cvsuite.api
from cvsuite.api import to_rgb
from cvsuite.config import from_dict
from cvsuite.data.common import list_images, read_image
from cvsuite.doctor import ground_truth_path
from cvsuite.export import export
from cvsuite.run import evaluate, load_run, predict, train
from cvsuite.tasks.detection import compare_detections
from cvsuite.testing import CORPUS, make_corpus
from cvsuite.trainer import TrainingInterrupted
from tests.conftest import TINY_BACKBONE

TASKS = ("classification", "detection", "segmentation", "regression")
QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0}


def corpus_recipe(task: str, root: Path, out: Path, **sections) -> dict:
    """A 1-epoch recipe of `task` on the tiny backbone at 64 px (the 2000x1500 image is resized like the others)."""
    data = {"root": str(root), "batch_size": 4, "num_workers": 0, "augment": "light"}
    model = {"backbone": TINY_BACKBONE, "pretrained": False}
    if task == "segmentation":
        data.update(image_size=64, crop_size=32)
        model.update(decoder_width=32)
    elif task == "detection":
        data.update(image_size=64)
        model.update(fpn_channels=64, head_convs=1, score_thresh=0.01)
    elif task == "regression":
        data.update(image_size=64, val_csv="val.csv")
    else:
        data.update(image_size=64)
    recipe = {
        "task": task,
        "data": data,
        "model": model,
        "optim": {"optimizer": "adam", "lr": 0.003, "weight_decay": 0.0, "scheduler": "none"},
        "run": {"plots": False},
        "trainer": {"max_epochs": 1, "default_root_dir": str(out), "log_every_n_steps": 1, **QUIET},
    }
    for section, values in sections.items():
        recipe[section] = {**recipe.get(section, {}), **values}
    return recipe


@pytest.fixture(scope="module", params=TASKS)
def trained(request, tmp_path_factory) -> tuple[str, Path, Path]:
    """(task, corpus root, best checkpoint) of a model trained one epoch on that task's corpus."""
    task = request.param
    tmp = tmp_path_factory.mktemp(task)
    root = make_corpus(tmp / "data", task)
    run = train(from_dict(corpus_recipe(task, root, tmp / "run")))
    return task, root, run / "checkpoints" / "best.ckpt"


def val_images(root: Path) -> list[Path]:
    return [p for p in list_images(root / "val") if "masks" not in p.parts]


# ---- reading images -----------------------------------------------------------------------------------------------
def test_every_way_of_handing_over_an_image_reads_the_same_pixels(tmp_path):
    root = make_corpus(tmp_path, "regression")
    paths = val_images(root)
    assert len(paths) == len(CORPUS)
    for path in paths:
        pixels = read_image(path)
        with Image.open(path) as img:
            assert np.array_equal(to_rgb(img), pixels), path.name
            assert np.array_equal(to_rgb(np.asarray(img)), pixels), path.name
        assert np.array_equal(to_rgb(path), pixels), path.name
    dim = read_image(root / "val" / "sixteen_bit.png")
    with Image.open(root / "val" / "sixteen_bit.png") as img:
        raw = np.asarray(img)
    assert raw.max() < 1000 and dim.max() == round(raw.max() / 257)  # 16 bits scaled by 257, not by its maximum
    with Image.open(root / "val" / "exif_rotated.jpg") as img:
        assert img.getexif()[0x0112] == 6 and read_image(root / "val" / "exif_rotated.jpg").shape == (90, 120, 3)


# ---- every path, one answer -----------------------------------------------------------------------------------------
_PREDICTORS: dict[Path, cvsuite.api.Predictor] = {}


def _api(ckpt: Path, paths: list[Path], batch_size: int = 16, **options) -> list:
    """``cvsuite.load(ckpt)(paths)`` with `batch_size` images per forward (the checkpoint loaded once per test run)."""
    if ckpt not in _PREDICTORS:
        _PREDICTORS[ckpt] = cvsuite.load(ckpt, device="cpu")
    model = _PREDICTORS[ckpt]
    model.batch_size = batch_size
    return model([str(p) for p in paths], **options)


def _same_api_results(task: str, a: list, b: list) -> None:
    for x, y in zip(a, b, strict=True):
        if task == "classification":
            np.testing.assert_allclose(x.probs, y.probs, atol=1e-5)
        elif task == "regression":
            np.testing.assert_allclose(x.array, y.array, rtol=1e-5, atol=1e-5)
        elif task == "segmentation":
            np.testing.assert_allclose(x.probs, y.probs, atol=1e-4)
            assert (x.mask != y.mask).mean() < 1e-3
        else:
            assert compare_detections([x.boxes, x.scores, x.class_ids], [y.boxes, y.scores, y.class_ids]) < 1e-3


def test_api_alone_or_in_a_mixed_batch_gives_the_same_answer(trained):
    task, root, ckpt = trained
    paths = val_images(root)
    options = {"probs": True} if task == "segmentation" else {}
    together = _api(ckpt, paths, batch_size=16, **options)
    alone = [_api(ckpt, [p], batch_size=1, **options)[0] for p in paths]
    reversed_ = _api(ckpt, paths[::-1], batch_size=3, **options)[::-1]
    _same_api_results(task, together, alone)
    _same_api_results(task, together, reversed_)


def test_predict_command_gives_the_api_answer(trained, tmp_path):
    task, root, ckpt = trained
    paths = val_images(root)
    out = tmp_path / "pred"
    predict(ckpt, root / "val" / "images" if task in ("detection", "segmentation") else root / "val", out)
    api = dict(zip(paths, _api(ckpt, paths)))
    if task == "classification":
        rows = json.loads((out / "predictions.json").read_text())
        for row in rows:
            res = api[Path(row["path"])]
            assert [t["label"] for t in row["topk"]] == res.labels
            np.testing.assert_allclose([t["score"] for t in row["topk"]], res.scores, atol=2e-6)
    elif task == "regression":
        with (out / "predictions.csv").open() as fh:
            for row in csv.DictReader(fh):
                assert float(row["brightness"]) == pytest.approx(api[Path(row["path"])].values["brightness"], 1e-5)
    elif task == "segmentation":
        for path in paths:
            mask = np.asarray(Image.open(out / "masks" / f"{path.stem}.png"))
            assert mask.shape == read_image(path).shape[:2]
            assert (mask != api[path].mask).mean() < 1e-3, path.name
    else:
        for row in json.loads((out / "detections.json").read_text()):
            res = api[Path(row["path"])]
            ours = [np.asarray([d["box"] for d in row["detections"]], np.float32).reshape(-1, 4)]
            ours += [
                np.asarray([d["score"] for d in row["detections"]]),
                np.asarray([d["class_id"] for d in row["detections"]]),
            ]
            assert compare_detections(ours, [res.boxes, res.scores, res.class_ids]) < 1e-2, row["path"]


def test_eval_scores_what_predict_predicts(trained, tmp_path):
    """The validation step's answers are predict's: eval's metrics recomputed from the API's outputs."""
    task, root, ckpt = trained
    paths = val_images(root)
    api = _api(ckpt, paths)
    if task == "detection":
        metrics = evaluate(ckpt, output=str(tmp_path / "m.json"), predictions=str(tmp_path / "p.json"))
        results = json.loads((tmp_path / "p.json").read_text())
        gt = json.loads(ground_truth_path(tmp_path / "p.json").read_text())  # written beside the predictions
        assert metrics["num_images"] == len(paths)
        names = {im["id"]: Path(im["file_name"]).name for im in gt["images"]}
        by_name = {p.name: r for p, r in zip(paths, api)}
        for iid, name in names.items():
            mine = [r for r in results if r["image_id"] == iid]
            boxes = np.asarray([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in mine)], np.float32)
            labels = np.asarray([r["category_id"] - 1 for r in mine])
            res = by_name[name]
            ours = [boxes.reshape(-1, 4), np.asarray([r["score"] for r in mine]), labels]
            assert compare_detections(ours, [res.boxes, res.scores, res.class_ids]) < 1e-2, name
        return
    metrics = evaluate(ckpt, output=str(tmp_path / "m.json"))
    if task == "classification":
        truth = [p.parent.name for p in paths]
        accuracy = np.mean([r.labels[0] == t for r, t in zip(api, truth)])
        assert metrics["accuracy"] == pytest.approx(accuracy)
    elif task == "regression":
        with (root / "val.csv").open() as fh:
            truth = {row["path"]: float(row["brightness"]) for row in csv.DictReader(fh)}
        errors = [abs(r.values["brightness"] - truth[p.relative_to(root).as_posix()]) for p, r in zip(paths, api)]
        assert metrics["mae"] == pytest.approx(np.mean(errors), rel=1e-4, abs=1e-6)
    else:
        cm = np.zeros((3, 3), np.int64)
        for path, res in zip(paths, api):
            truth = np.asarray(Image.open(root / "val" / "masks" / f"{path.stem}.png")).astype(np.int64)
            cm += np.bincount(3 * truth.ravel() + res.mask.ravel(), minlength=9).reshape(3, 3)
        assert np.array_equal(np.asarray(metrics["confusion_matrix"]), cm)


def _runner(path: Path, fmt: str):
    """(1, 3, H, W) tensor -> list of numpy outputs of the exported file, as a deployment runs it."""
    if fmt == "onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"images": x.numpy()})
    scripted = torch.jit.load(str(path))

    def run(x: torch.Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            out = scripted(x)
        return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]

    return run


# TorchScript is checked on odd sizes by export's own parity check in every run; against the API, in the slow tier.
@pytest.mark.parametrize("fmt", ["onnx", pytest.param("torchscript", marks=pytest.mark.slow)])
def test_exported_files_give_the_api_answer_on_every_shape(trained, tmp_path, fmt):
    task, root, ckpt = trained
    result = export(ckpt, tmp_path, fmt)
    meta = json.loads(result.sidecar.read_text())
    # the check ran odd, non-square images whatever the validation images are; their inputs too where the
    # preprocessing keeps the aspect ratio (detection, segmentation)
    for key in ("checked_images", "checked_sizes") if task in ("detection", "segmentation") else ("checked_images",):
        assert any(h != w and (h % 32 or w % 32) for h, w in meta["input"][key]), key
    assert {"sizes", "padding", "reading", "preprocessing"} <= set(meta["input"])
    run = _runner(result.path, fmt)
    module = load_run(ckpt)[0]
    paths = val_images(root)
    for path, res in zip(paths, _api(ckpt, paths, probs=True) if task == "segmentation" else _api(ckpt, paths)):
        image = read_image(path)
        x = module.preprocess(image)[None]
        outs = run(x)
        if task == "classification":
            np.testing.assert_allclose(outs[0][0], res.probs, atol=1e-4)
        elif task == "regression":
            np.testing.assert_allclose(outs[0][0], res.array, rtol=1e-4, atol=1e-4)
        elif task == "segmentation":
            logits = torch.from_numpy(outs[0])
            logits = torch.nn.functional.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
            np.testing.assert_allclose(logits.softmax(1)[0].numpy(), res.probs, atol=1e-3)
        else:
            boxes, scores, labels = outs
            scale = np.array([image.shape[1] / x.shape[-1], image.shape[0] / x.shape[-2]] * 2, np.float32)
            assert compare_detections([boxes * scale, scores, labels], [res.boxes, res.scores, res.class_ids]) < 1e-3


# ---- how it runs changes nothing -------------------------------------------------------------------------------------
def _numbers(metrics: dict, prefix: str = "") -> dict:
    """Every number of a metrics dict, nested dicts flattened to ``a.b`` keys (None -> nan)."""
    skip = {"checkpoint", "data_root", "split", "split_files", "backend", "class_names"}
    out = {}
    for key, value in metrics.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], str)):
            continue
        else:
            out[prefix + key] = np.asarray(value if value is not None else np.nan, dtype=float)
    return out


def _assert_same_metrics(a: dict, b: dict) -> None:
    a, b = _numbers(a), _numbers(b)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)  # a pixel in 10^5 may flip


def test_eval_does_not_depend_on_batch_size_or_workers(trained, tmp_path):
    task, root, ckpt = trained
    one = evaluate(ckpt, overrides=["--data.batch_size", "1"], output=str(tmp_path / "a.json"))
    mixed = evaluate(
        ckpt, overrides=["--data.batch_size", "5", "--data.num_workers", "2"], output=str(tmp_path / "b.json")
    )
    _assert_same_metrics(one, mixed)


def test_training_is_the_same_with_0_or_2_workers_and_a_resume_with_workers_is_exact(tmp_path, monkeypatch):
    """Augmentation (random crops, flips) drawn from (seed, epoch, sample): a run with 2 DataLoader workers,
    interrupted after epoch 1 and resumed, ends exactly where the uninterrupted run without workers ends."""
    import cvsuite.run
    from tests.test_resume import StopAt, assert_same_run

    root = make_corpus(tmp_path / "data", "classification", train_copies=2, names=SMALL)
    recipe = corpus_recipe("classification", root, tmp_path / "w0", trainer={"max_epochs": 3}, data={"image_size": 32})
    in_process = train(from_dict(recipe))
    recipe["data"]["num_workers"] = 2
    recipe["trainer"]["default_root_dir"] = str(tmp_path / "w2")
    build = cvsuite.run.build_trainer

    def build_stopping(*args, **kwargs):
        trainer, best, last = build(*args, **kwargs)
        trainer.callbacks.append(StopAt(epoch=2, batch=1))
        return trainer, best, last

    monkeypatch.setattr(cvsuite.run, "build_trainer", build_stopping)
    with pytest.raises(TrainingInterrupted):
        train(from_dict(recipe))
    monkeypatch.setattr(cvsuite.run, "build_trainer", build)
    resumed = train(from_dict(recipe), resume=tmp_path / "w2" / "checkpoints" / "last.ckpt")
    assert_same_run(in_process, resumed)


# ---- 1 or 2 processes ------------------------------------------------------------------------------------------------
SMALL = ("landscape_4x3", "portrait_3x4", "odd_100x75", "odd_361x479", "grey", "sixteen_bit")


def test_segmentation_under_ddp_scores_mixed_shapes_as_one_process(tmp_path):
    """2 processes, batches of 2 images of different shapes (rank 0 pairs 4:3 with 361x479): the logged mIoU is
    one process's with batches of 1."""
    from tests.test_distributed import _check_run, _train_ddp

    root = make_corpus(tmp_path / "data", "segmentation", names=SMALL)
    recipe = corpus_recipe("segmentation", root, tmp_path / "run", data={"batch_size": 2})
    _check_run(_train_ddp(recipe, tmp_path), "segmentation", 1)


def test_a_validation_split_smaller_than_the_processes_does_not_hang(tmp_path):
    """One validation image, two processes: rank 1 scores a flagged copy, joins every gather, counts nothing."""
    from tests.test_distributed import _check_run, _train_ddp

    root = make_corpus(tmp_path / "data", "segmentation", train_copies=4, names=("odd_100x75",))
    recipe = corpus_recipe("segmentation", root, tmp_path / "run", data={"batch_size": 2})
    run = _train_ddp(recipe, tmp_path)
    _check_run(run, "segmentation", 1)
    assert json.loads((run / "metrics.json").read_text())["num_pixels"] == 75 * 100


# ---- a copied data set, stored COCO categories ----------------------------------------------------------------------
def test_a_copied_data_set_is_scored_on_the_stored_files(tmp_path):
    import shutil

    from cvsuite.data.common import DatasetError
    from tests.conftest import tiny_recipe, write_class_folders

    root = write_class_folders(tmp_path / "data", per_class=6, splits=("train",))  # a seeded split: 2 + 2 val
    ckpt = train(from_dict(tiny_recipe(root, tmp_path / "run", trainer={"max_epochs": 1}, run={"plots": False})))
    ckpt = ckpt / "checkpoints" / "best.ckpt"
    original = evaluate(ckpt, output=str(tmp_path / "a.json"))
    copy = Path(shutil.copytree(root, tmp_path / "moved" / "data"))
    for p in (copy / "train" / "red").glob("*.png"):  # more images in the copy: a fresh split would differ
        shutil.copy(p, p.with_name(f"extra_{p.name}"))
    moved = evaluate(ckpt, overrides=["--data.root", str(copy)], output=str(tmp_path / "b.json"))
    assert moved["split_files"] == "stored" and moved["data_root"] == str(copy.resolve())
    _assert_same_metrics({k: v for k, v in original.items() if k != "data_root"}, moved)
    derived = evaluate(ckpt, overrides=["--data.root", str(copy), "--data.rederive_split", "true"],
                       output=str(tmp_path / "c.json"))  # fmt: skip
    assert derived["split_files"] == "derived" and derived["num_samples"] != moved["num_samples"]
    for f in copy.rglob("*.png"):  # every file of the copy changed: the stored ones are among them
        Image.fromarray(np.asarray(Image.open(f)) // 2).save(f)
    with pytest.raises(DatasetError, match="changed since training"):
        evaluate(ckpt, overrides=["--data.root", str(copy)], output=str(tmp_path / "d.json"))


def test_segmentation_stores_its_coco_categories(tmp_path):
    """Category id -> class id is stored; evaluating COCO files that list other categories keeps the model's."""
    from cvsuite.data.segmentation import SegmentationDataConfig, SegmentationDataModule

    def coco(folder: Path, cats: list[int]) -> None:
        (folder / "images").mkdir(parents=True)
        images, anns = [], []
        for i in range(3):
            Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(folder / "images" / f"{i}.png")
            images.append({"id": i, "file_name": f"{i}.png", "height": 20, "width": 30})
            square = [[2, 2, 12, 2, 12, 12, 2, 12]]
            anns.append({"id": i, "image_id": i, "category_id": cats[-1], "segmentation": square, "area": 100,
                         "iscrowd": 0})  # fmt: skip
        categories = [{"id": c, "name": f"cat{c}"} for c in cats]
        (folder / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))

    coco(tmp_path / "a" / "train", [7, 9])
    cfg = SegmentationDataConfig(root=str(tmp_path / "a"), train_annotations="train/ann.json", val_fraction=0.34)
    dm = SegmentationDataModule(cfg, TINY_BACKBONE)
    dm.setup("fit")
    state = dm.state_dict()
    assert state["category_ids"] == [[7, 1], [9, 2]] and dm.class_names == ["background", "cat7", "cat9"]
    coco(tmp_path / "b" / "train", [9])  # another file: only category 9, which it alone would make class 1
    cfg_b = SegmentationDataConfig(root=str(tmp_path / "b"), train_annotations="train/ann.json", val_fraction=0.34)
    fresh = SegmentationDataModule(cfg_b, TINY_BACKBONE)
    fresh.setup("fit")
    assert fresh.decoder.category_ids == {9: 1}
    stored = SegmentationDataModule(cfg_b, TINY_BACKBONE, stored=state)
    stored.setup("validate")
    assert stored.decoder.category_ids == {7: 1, 9: 2}
    assert set(np.unique(stored.val_set[0]["mask"].numpy())) == {0, 2}  # the object is class 2, as trained


def test_an_export_with_tta_computes_the_mirrored_mean(tmp_path):
    """model.tta at export: the file averages each image and its mirror, as eval and predict do with it."""
    from tests.conftest import tiny_recipe, write_class_folders

    root = write_class_folders(tmp_path / "data", per_class=4)
    ckpt = train(from_dict(tiny_recipe(root, tmp_path / "run", trainer={"max_epochs": 1}, run={"plots": False})))
    ckpt = ckpt / "checkpoints" / "best.ckpt"
    result = export(ckpt, tmp_path / "out", "onnx", overrides=["--model.tta", "true"])
    assert json.loads(result.sidecar.read_text())["tta"] is True
    path = next((root / "val").rglob("*.png"))
    run = _runner(result.path, "onnx")
    module = load_run(ckpt, overrides=["--model.tta", "true"])[0]
    scores = run(module.preprocess(read_image(path))[None])[0][0]
    with_tta = cvsuite.load(ckpt, device="cpu", overrides={"model.tta": True})(path)
    np.testing.assert_allclose(scores, with_tta.probs, atol=1e-5)
    # The test photos are one colour each, nearly their own mirror: an input with a left third unlike the rest tells
    # the mirrored mean of the logits from a single pass.
    x = module.preprocess(read_image(path))[None]
    x[..., : x.shape[-1] // 3], x[..., x.shape[-1] // 3 :] = 3.0, -1.0
    net = torch.nn.Sequential(module.backbone, module.head).eval()
    with torch.no_grad():
        logits, mirrored = net(x), net(x.flip(-1))
        expected, single = module.scores((logits + mirrored) / 2)[0].numpy(), module.scores(logits)[0].numpy()
    assert np.abs(expected - single).max() > 1e-4  # ten times the tolerance below
    np.testing.assert_allclose(run(x)[0][0], expected, atol=1e-5)


@pytest.mark.slow  # three 2-process runs
def test_a_resumed_ddp_run_continues_every_ranks_random_stream(tmp_path):
    """2 processes, dropout and random crops: 1 epoch then --resume to 2 ends where 2 epochs straight end (each
    rank's stream comes from (seed, rank, epoch), not restarted from the initial seed after the restore)."""
    import yaml

    from tests.test_distributed import DDP, PYTHON, _run, _train_ddp
    from tests.test_resume import assert_same_run

    root = make_corpus(tmp_path / "data", "classification", train_copies=2, names=SMALL)
    recipe = corpus_recipe("classification", root, tmp_path / "full", data={"image_size": 32, "batch_size": 2},
                           model={"dropout": 0.5}, trainer={"max_epochs": 2})  # fmt: skip
    full = _train_ddp(recipe, tmp_path)
    recipe["trainer"].update(max_epochs=1, default_root_dir=str(tmp_path / "cut"))
    cut = _train_ddp(recipe, tmp_path)
    recipe["trainer"]["max_epochs"] = 2
    (tmp_path / "resume.yaml").write_text(yaml.safe_dump(recipe))
    last = cut / "checkpoints" / "last.ckpt"
    _run([PYTHON, "tools/train.py", "--config", str(tmp_path / "resume.yaml"), "--resume", str(last), *DDP])
    assert_same_run(full, cut)
