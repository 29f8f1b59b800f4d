"""What every task's data needs: reading images with errors that name the file, checking a dataset before
training starts, seeded splits and worker counts."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from cvsuite.distributed import global_rank
from cvsuite.errors import DatasetError, UserError  # noqa: F401  (DatasetError importable from here too)

log = logging.getLogger("cvsuite")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in Path(folder).glob(pattern) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


# Pillow modes of one-channel images with more than 8 bits (16-bit PNG/TIFF: microscopy, medical, depth).
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def read_image(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """HWC uint8 array; raises DatasetError naming the file when it cannot be decoded.

    The pixels as stored (`image_to_rgb`): 16-bit images scaled from their full range (value / 257), alpha dropped,
    grey repeated; an EXIF orientation tag is not applied, as annotation files count pixels as stored. Masks are not
    read here (`cvsuite.data.segmentation.read_mask_raw` keeps their raw values).
    """
    try:
        with Image.open(path) as img:
            return image_to_rgb(img, path, mode)
    except DatasetError:
        raise
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read image ({err}). Replace or delete the file.") from err


def image_to_rgb(img: Image.Image, name: str | Path = "image", mode: str = "RGB") -> np.ndarray:
    """A PIL image as HWC uint8 RGB: the one conversion training, eval, predict and the Python API share.

    High-bit modes go through `_to_8bit` (value / 257, whatever the image's own maximum); floating-point files
    (mode F) have no agreed range and are refused."""
    if img.mode in HIGH_BIT_MODES or img.mode == "F":
        img = _to_8bit(img, name)
    return np.asarray(img.convert(mode))


def array_to_rgb(arr: np.ndarray) -> np.ndarray:
    """An array as HWC uint8 RGB, by the rules `read_image` applies to files: HW or HWC with 1, 3 or 4 channels;
    uint8 as is; other integers (16-bit data) value / 257 like a 16-bit file; floats must lie in [0, 1] (x 255);
    grey repeated, alpha dropped."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"an image array must be HW or HWC with 1, 3 or 4 channels, got shape {arr.shape}")
    arr = arr[:, :, :3] if arr.shape[2] == 4 else np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr.astype(np.uint8) * 255)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1):
            raise ValueError("a float image array must hold values in [0, 1]")
        return np.ascontiguousarray((arr.astype(np.float64) * 255).round().astype(np.uint8))
    if np.issubdtype(arr.dtype, np.integer):
        return np.ascontiguousarray(_scale_16bit(arr, "image array"))
    raise ValueError(f"unsupported image dtype {arr.dtype}")


def _scale_16bit(values: np.ndarray, name: str | Path) -> np.ndarray:
    """0..65535 -> 0..255 (value / 257, rounded): a dim 16-bit image stays dim, as it is on disk."""
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise DatasetError(
            f"{name}: values {values.min()}..{values.max()}, outside 16 bits; convert it to an 8- or 16-bit image "
            "with the scaling you intend."
        )
    return np.round(values.astype(np.float32) / 257.0).astype(np.uint8)


def _to_8bit(img: Image.Image, path: str | Path) -> Image.Image:
    if img.mode == "F":
        raise DatasetError(
            f"{path}: floating-point image (mode F); its value range is not defined, so it cannot be scaled to 8 "
            "bits without guessing. Convert it to an 8- or 16-bit PNG/TIFF with the scaling you intend."
        )
    return Image.fromarray(_scale_16bit(np.asarray(img), f"{path} ({img.mode} image)"), "L")


def max_image_pixels() -> int:
    """The largest image (width x height) cvsuite reads: Pillow's decompression-bomb limit, twice
    ``PIL.Image.MAX_IMAGE_PIXELS`` (178,956,970 pixels by default, about 13,400 x 13,400). A larger file is refused
    before it is decoded: a tiny PNG can declare a size whose pixels fill the memory. Raise
    ``PIL.Image.MAX_IMAGE_PIXELS`` in your own code to accept larger images (None lifts the limit)."""
    limit = Image.MAX_IMAGE_PIXELS
    return 2 * limit if limit else 0


def check_image(path: Path, decode: bool = True) -> str | None:
    """Why `path` is not an image cvsuite can read, or None when it is.

    Without `decode` only the header is read (format, mode, size: cheap, for the check before training); with it
    the file is read as training reads it (`read_image`), so truncated files and 16-bit values out of range are
    caught too. Floating-point (mode F) images and images above `max_image_pixels` are refused either way.
    """
    reason = _header_problem(path, allow_float=False)
    if reason is not None or not decode:
        return reason
    try:
        _decode(path)
        return None
    except DatasetError as err:
        return str(err).removeprefix(f"{path}: ")
    except (OSError, ValueError, MemoryError) as err:
        return str(err) or type(err).__name__


def _decode(path: Path) -> None:
    """Decode the whole file as training will, as cheaply as its format allows: a JPEG at 1/8 scale (libjpeg still
    reads and entropy-decodes every byte, so a truncated or corrupt file fails just as a full decode does, in a
    fraction of the time); any other format through `read_image`."""
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft(None, (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
                return
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read image ({err}). Replace or delete the file.") from err
    read_image(path)


def _header_problem(path: Path, allow_float: bool) -> str | None:
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                mode = img.mode
    except Image.DecompressionBombError as err:  # Pillow refuses at open, before the size can be read
        return _too_large(str(err).split(",")[0], limit)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        return str(err) or type(err).__name__
    if limit and width * height > limit:
        return _too_large(f"{width}x{height} = {width * height:,} pixels", limit)
    if width == 0 or height == 0:
        return f"empty image ({width}x{height} pixels)"
    if mode == "F" and not allow_float:
        return "floating-point image (mode F): its value range is not defined; convert it to 8 or 16 bits"
    return None


def _too_large(size: str, limit: int) -> str:
    return (
        f"image too large ({size}; the limit is {limit:,} pixels, against decompression bombs): tile or "
        "downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS"
    )


def drop_unreadable(
    paths: Iterable[Path], what: str = "image", decode: bool = True
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Split `paths` into readable ones and (path, reason) for the others (`check_image`), warning once per bad
    file (a ``UserWarning`` naming the file and why, shown without a source line by the CLI)."""
    good, bad = [], []
    for p in paths:
        reason = check_image(p, decode)
        if reason is None:
            good.append(p)
        else:
            bad.append((p, reason))
            warnings.warn(f"Skipping unreadable {what} {p}: {reason}", stacklevel=2)
    return good, bad


def check_array(image: np.ndarray) -> None:
    """Raise a UserError naming the problem when `image` (an HW/HWC array given to the Python API) holds no pixels
    or, as floats, NaN or infinite values: the model would predict on them without a word."""
    if image.size == 0 or 0 in image.shape[:2]:
        raise UserError(f"an image array of shape {tuple(image.shape)} holds no pixels")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise UserError(
            f"an image array holds {bad} NaN or infinite value(s) of {image.size}; float images must hold values "
            "in [0, 1]"
        )


def check_image_input(image: Any) -> None:
    """The API's input check before reading (`cvsuite.api.to_rgb`): a path whose header is not an image or declares
    too many pixels (`max_image_pixels`) is a DatasetError naming it; an array is checked by `check_array`."""
    if isinstance(image, (str, Path)) and Path(image).is_file():
        reason = _header_problem(Path(image), allow_float=True)  # the API reads float images in [0, 1]
        if reason is not None:
            raise DatasetError(f"{image}: {reason}")
    elif isinstance(image, np.ndarray):
        check_array(image)
    elif isinstance(image, Image.Image) and 0 in image.size:
        raise UserError(f"a PIL image of size {image.size} holds no pixels")


def seeded_split(n: int, val_fraction: float, seed: int, groups: Sequence[int] | None = None) -> tuple[list, list]:
    """Indices (train, val) of a seeded split; stratified by `groups` (e.g. class ids) when given."""
    if not 0 < val_fraction < 1:
        raise DatasetError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    if groups is None:
        groups = [0] * n
    train, val = [], []
    groups_arr = np.asarray(groups)
    for g in sorted(set(groups_arr.tolist())):
        idx = np.flatnonzero(groups_arr == g)
        rng.shuffle(idx)
        k = int(round(len(idx) * val_fraction))
        if len(idx) > 1:
            k = min(max(k, 1), len(idx) - 1)
        val += idx[:k].tolist()
        train += idx[k:].tolist()
    return sorted(train), sorted(val)


def default_workers(requested: int | None) -> int:
    """-1/None = as many as there are cores to spare (at most 8); the model should never wait on data. Results do
    not depend on it: augmentation draws come from (seed, epoch, sample), not from a worker's stream."""
    if requested is not None and requested >= 0:
        return requested
    return max(0, min(8, (os.cpu_count() or 1) - 1)) or 0


class SeedWorker:
    """``worker_init_fn``: each DataLoader worker reseeds the dataset's pipelines from its torch seed (run seed +
    worker id, drawn per epoch) plus the rank, so workers and DDP ranks augment differently from each other and a
    seeded run augments the same way twice. Datasets seeded per sample (`SampleSeeds`) reseed at every sample
    anyway. Picklable for spawned workers."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        from cvsuite.augment import seed_pipelines

        info = torch.utils.data.get_worker_info()
        seed_pipelines(info.dataset, info.seed + RANK_STRIDE * self.rank)


RANK_STRIDE = 1_000_003  # ranks' seeds far apart, so rank r's worker w never meets rank r+1's


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample `index` in `epoch` of a run seeded `seed` (32 bits)."""
    return int(np.random.SeedSequence([seed % 2**63, epoch, index]).generate_state(1)[0])


def seeded_index(dataset: Dataset, key: int | tuple[int, int]) -> int:
    """A dataset's ``__getitem__`` key -> the sample index; a ``(index, seed)`` key from `SampleSeeds` first seeds
    the dataset's pipelines with that seed, so the sample's augmentation is the same in any worker, process or
    resumed run."""
    if isinstance(key, tuple):
        from cvsuite.augment import seed_pipelines

        index, seed = key
        seed_pipelines(dataset, seed)
        return int(index)
    return int(key)


class SampleSeeds(DistributedSampler):
    """The training sampler: order and augmentation draws derived from (run seed, epoch, sample index) alone.

    The order is `DistributedSampler`'s (a permutation seeded by seed + epoch, rank r taking every W-th entry);
    each index comes with its `sample_seed` as ``(index, seed)``, which the dataset applies before transforming
    (`seeded_index`). So a run is the same with 0 or N DataLoader workers, on any machine, and a resumed run draws
    what the uninterrupted one drew; Lightning calls ``set_epoch`` every epoch and, as it is a DistributedSampler
    already, leaves it in place under DDP. Datasets that do not take seeds (``seeded_by_sample`` unset) get plain
    indices."""

    def __init__(self, dataset: Dataset, seed: int, shuffle: bool = True) -> None:
        dist = torch.distributed
        distributed = dist.is_available() and dist.is_initialized()
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.seeded = bool(getattr(dataset, "seeded_by_sample", False))

    def __iter__(self):
        for index in super().__iter__():
            yield (index, sample_seed(self.seed, self.epoch, index)) if self.seeded else index


class EvalSampler(UnrepeatedDistributedSampler):
    """Validation under DDP: rank r scores samples r, r + W, ... (none twice, none padded). A rank left without
    any (a split smaller than the number of processes) scores sample 0 as a flagged copy (``copies``), so every
    rank runs the validation hooks and joins the metric gathers; the tasks leave copies out of their sums
    (`cvsuite.tasks.base.TaskModule.padded_samples`)."""

    def __init__(self, dataset: Dataset) -> None:
        # DistributedSampler's own setup (world, rank): UnrepeatedDistributedSampler's asserts a rank has samples
        DistributedSampler.__init__(self, dataset, shuffle=False)
        self.indices = list(range(self.rank, len(dataset), self.num_replicas))
        self.copies = not self.indices and len(dataset) > 0
        if self.copies:
            self.indices = [0]
        self.num_samples = len(self.indices)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    num_workers: int | None,
    collate_fn: Callable | None = None,
    sampler: Sampler | None = None,
    seed: int | None = None,
) -> DataLoader:
    """The DataLoader of every task: default workers, persistent between epochs, pinned memory on GPUs, the last
    incomplete batch dropped when training (BatchNorm dislikes a batch of one). Training: `SampleSeeds` (order and
    augmentation from seed, epoch and sample index; `seed` default: the run's, from seed_everything) with its own
    generator, so the worker count changes no random stream. Validation under DDP: `EvalSampler`, so no image is
    scored twice and every rank has work."""
    from cvsuite.augment import seed_pipelines

    workers = default_workers(num_workers)
    rank = global_rank()
    seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed())) if seed is None else seed
    if workers == 0:
        # No worker processes: seed the pipelines here, from the run's seed and the rank (datasets seeded per sample
        # reseed at every sample).
        seed_pipelines(dataset, seed + RANK_STRIDE * rank)
    dist = torch.distributed
    if sampler is None and train:
        sampler = SampleSeeds(dataset, seed)
    if sampler is None and not train and dist.is_available() and dist.is_initialized():
        sampler = EvalSampler(dataset)
    size = len(sampler) if sampler is not None else len(dataset)
    # The loader draws its workers' base seed every epoch (or once, with persistent workers) from this generator,
    # not from torch's global one, which dropout and mixup share.
    generator = torch.Generator().manual_seed(seed % 2**63 + RANK_STRIDE * rank)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        drop_last=train and size > batch_size,
        collate_fn=collate_fn,
        worker_init_fn=SeedWorker(rank),
        generator=generator,
    )
