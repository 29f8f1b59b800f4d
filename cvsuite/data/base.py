"""The data contract every task's datamodule shares: what a trained model's data *was*, stored in its checkpoint.

A datamodule's ``state_dict()`` (Lightning saves it into every checkpoint under the class's qualified name) holds

- the task's data facts (class names, category ids, ``ignore_index``, ``value_map``, the eval pipeline, ...);
- ``root``: the data root the model was trained on;
- ``val_files``: the exact validation files, each as (path relative to ``root``, fingerprint).

Evaluating, predicting or resuming from a checkpoint builds the datamodule with that state (``stored=``): the
validation split is the stored list, not a fresh seeded split of whatever the folder holds now, so another seed or
images added later cannot change what is scored. The files are found by their path relative to ``data.root``, so a
copied or moved data set (``--data.root COPY``) scores the same files, checked by fingerprint. A stored file that is
gone or changed is a `DatasetError` naming it (``data.rederive_split: true`` re-derives the split instead); a
``data.root`` holding none of them is other data, scored on its own split with a warning. ``split="test"`` or
``data.val_root`` evaluate new data deliberately, and `describe()` says which was scored.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset, Subset

from cvsuite import augment
from cvsuite.config import ConfigError
from cvsuite.data.common import DatasetError, make_loader

log = logging.getLogger("cvsuite")

CONTRACT_VERSION = 1
SPLITS = ("val", "test")
# Bytes of each file hashed into its fingerprint (with its size): cheap, and survives copying the data set.
FINGERPRINT_BYTES = 1 << 16


def file_fingerprint(path: str | Path) -> str:
    """``"<size>:<blake2b of the first 64 KiB>"``; a file edited in place (or replaced) gets another one."""
    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(FINGERPRINT_BYTES)
    return f"{path.stat().st_size}:{hashlib.blake2b(head, digest_size=8).hexdigest()}"


def content_hash(*parts: Any) -> str:
    """A short hash of annotations (boxes, labels, ...) so a changed label file counts as a changed sample."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part.tobytes() if hasattr(part, "tobytes") else repr(part).encode())
    return h.hexdigest()


class ContractDataModule(L.LightningDataModule):
    """Base of the task datamodules: the stored contract, the choice of validation files and the loaders.

    Subclasses implement ``contract()`` (their data facts) and call `choose_val` in ``setup``.

    Args:
        cfg: the recipe's ``data`` section (needs ``root``, ``batch_size``, ``num_workers``).
        seed: run.seed, for seeded splits and augmentation.
        stored: the datamodule state from a checkpoint; its facts win over the data and its file list is the
            validation split.
        split: ``val`` (the validation split) or ``test`` (``ROOT/test`` scored as a whole).
    """

    def __init__(self, cfg: Any, seed: int = 42, stored: dict[str, Any] | None = None, split: str = "val") -> None:
        super().__init__()
        if split not in SPLITS:
            raise DatasetError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.cfg = cfg
        self.seed = seed
        self.stored = dict(stored) if stored else None
        self.split = split
        self.val_files: list[tuple[str, str]] = []
        self.split_source = "derived"  # stored | derived | test | val_root
        self.split_lists: str | None = None  # the data's own split lists used ("data.yaml", "splits/{...}.txt")

    # ---- what subclasses provide -------------------------------------------------------------------------
    class_names: list[str] | None = None

    def contract(self) -> dict[str, Any]:
        """The data facts a trained model depends on (JSON-able); subclasses add their own to this."""
        return {"class_names": list(self.class_names or []), "eval_pipeline": augment.to_dict(self.eval_pipeline())}

    def preset_train(self):
        """The task's augmentation preset for ``data.augment`` (an albumentations Compose)."""
        raise NotImplementedError

    def preset_eval(self):
        """The task's deterministic validation/predict preprocessing."""
        raise NotImplementedError

    # A custom pipeline from the recipe, made fit for the task (detection: box-aware); None = used as written.
    adapt_train = adapt_eval = None

    def train_pipeline(self):
        return augment.choose(
            None, self.cfg.train_transforms, "data.train_transforms", self.preset_train, self.adapt_train
        )

    def eval_pipeline(self):
        """Checkpoint -> custom -> preset (`augment.choose`): a trained model is evaluated as it was."""
        return augment.choose(
            self.fact("eval_pipeline"),
            self.cfg.val_transforms,
            "data.val_transforms",
            self.preset_eval,
            self.adapt_eval,
        )

    # ---- the checkpoint ------------------------------------------------------------------------------------
    @property
    def root(self) -> Path | None:
        return Path(self.cfg.root).expanduser().resolve() if getattr(self.cfg, "root", None) else None

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": CONTRACT_VERSION,
            "root": str(self.root) if self.root else None,
            "val_files": [list(v) for v in self.val_files],
            **self.contract(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Lightning calls this when resuming, after setup: run.py already built this datamodule from the same state.
        if self.stored is None:
            self.stored = dict(state)

    def fact(self, key: str, default: Any = None) -> Any:
        """A stored data fact, or `default` for a new run (or a checkpoint older than the contract)."""
        return self.stored.get(key, default) if self.stored else default

    # ---- which files are validated -------------------------------------------------------------------------
    def eval_folder(self) -> Path | None:
        """The folder evaluated as a whole split instead of the validation split, if one was asked for."""
        val_root = getattr(self.cfg, "val_root", None)
        if val_root:
            folder = Path(val_root).expanduser()
            self.split_source = "val_root"
        elif self.split == "test":
            if self.root is None:
                raise DatasetError("--split test needs data.root (its test list or ROOT/test is evaluated)")
            self.split_source = "test"
            if self.has_test_list():
                return None  # the data's own test list (data.yaml test:, splits/test.txt): the subclass reads it
            folder = self.root / "test"
            if not folder.is_dir():
                raise DatasetError(
                    f"--split test: {self.root} has no test split: no test/ folder and no test list (data.yaml "
                    "'test:', splits/test.txt, ImageSets/Main/test.txt). Add one, or evaluate other data with "
                    "--data.val_root FOLDER."
                )
        else:
            return None
        if not folder.is_dir():
            raise DatasetError(f"{folder}: folder not found (asked for by data.val_root)")
        return folder

    def has_test_list(self) -> bool:
        """True when the data declares its own test split in a list (data.yaml, splits/test.txt); tasks that
        read such lists override this."""
        return False

    def _relative(self, path: Path) -> str:
        path = Path(path).resolve()
        root = self.root
        if root is not None and path.is_relative_to(root):
            return path.relative_to(root).as_posix()
        return str(path)

    def uses_stored_split(self) -> bool:
        """True when the stored validation files are looked for (under data.root, wherever it now is)."""
        if not self.stored or not self.stored.get("val_files") or self.eval_folder_requested():
            return False
        return not getattr(self.cfg, "rederive_split", False)

    def eval_folder_requested(self) -> bool:
        return bool(getattr(self.cfg, "val_root", None)) or self.split == "test"

    def choose_val(
        self,
        pool: Sequence[Any],
        derived_val: Sequence[int],
        key: Callable[[Any], Path],
        fingerprint: Callable[[Any], str],
        never_train: Sequence[int] = (),
    ) -> tuple[list[int], list[int]]:
        """(train, val) indices into `pool` (all samples read from the data): the stored validation files when
        the checkpoint has them, else `derived_val` (a val/ folder, a val list or the seeded split). Records the
        choice, so the checkpoint stores exactly the files validated. `never_train`: samples of the pool that are
        found as stored validation files but never trained on (the data's test list)."""
        val = list(derived_val)
        if self.uses_stored_split():
            # By path relative to data.root: a copied or moved data set finds the same files (fingerprints tell).
            index = {self._relative(key(item)): i for i, item in enumerate(pool)}
            missing, changed, found = [], [], []
            for rel, fp in self.stored["val_files"]:
                i = index.get(rel)
                if i is None:
                    missing.append(rel)
                elif fingerprint(pool[i]) != fp:
                    changed.append(rel)
                else:
                    found.append(i)
            stored_root = self.stored.get("root")
            moved = bool(stored_root) and self.root is not None and Path(stored_root) != self.root
            if moved and not found and not changed:
                # Another data set altogether (none of the stored files is here): its own split, deliberately.
                log.warning(
                    "data.root %s holds none of the checkpoint's validation files (trained on %s): evaluating its "
                    "own validation split",
                    self.root,
                    stored_root,
                )
            elif missing or changed:
                raise DatasetError(_stale_message(str(self.root if moved else stored_root), missing, changed))
            else:
                val = found
                self.split_source = "stored"
        subset_size(len(val), getattr(self.cfg, "val_subset", None))  # a bad data.val_subset fails at setup
        chosen = set(val) | set(never_train)
        train = [i for i in range(len(pool)) if i not in chosen]
        self.val_files = [(self._relative(key(pool[i])), fingerprint(pool[i])) for i in val]
        return train, val

    def keep_val_files(self, paths: Sequence[Path]) -> None:
        """Drop from the stored list the files `paths` no longer holds (unreadable ones skipped at setup)."""
        keep = {self._relative(p) for p in paths}
        self.val_files = [v for v in self.val_files if v[0] in keep]

    def describe(self) -> dict[str, Any]:
        """What an evaluation scored, for its JSON."""
        folder = getattr(self.cfg, "val_root", None)
        if not folder and self.split == "test" and not self.has_test_list():
            folder = str(self.root / "test")
        return {
            "split": "test" if self.split == "test" else "val",
            "split_files": self.split_source,
            "data_root": str(folder or self.root),
            "num_samples": len(self.val_set) if getattr(self, "val_set", None) is not None else 0,
            **({"split_lists": self.split_lists} if self.split_lists else {}),
        }

    # ---- loaders --------------------------------------------------------------------------------------------
    collate_fn: Callable | None = None

    def loader(self, dataset: Dataset, train: bool, sampler: torch.utils.data.Sampler | None = None) -> DataLoader:
        loader = make_loader(
            dataset, self.cfg.batch_size, train, self.cfg.num_workers, self.collate_fn, sampler=sampler, seed=self.seed
        )
        return self.at_epoch(loader) if train else loader

    def at_epoch(self, loader: DataLoader) -> DataLoader:
        """The training sampler set to the trainer's epoch as the loader is made: a resumed run iterates (and DataLoader
        workers prefetch) its first epoch before Lightning calls ``set_epoch``."""
        if self.trainer is not None and hasattr(loader.sampler, "set_epoch"):
            # Lightning may make the loader before it restores the loops (to count steps): the stored epoch then.
            loader.sampler.set_epoch(max(self.trainer.current_epoch, int(self.fact("resume_epoch", 0))))
        return loader

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        fitting = self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        return self.loader(self.training_val_set() if fitting else self.val_set, train=False)

    def training_val_set(self) -> Dataset:
        """What the validations inside training score: ``data.val_subset`` of the validation samples (a seeded
        choice, the same every epoch, so the curves stay comparable), else all of them. The final evaluation of the
        best checkpoint (metrics.json) and eval.py always score the whole split."""
        n = subset_size(len(self.val_set), getattr(self.cfg, "val_subset", None))
        if n >= len(self.val_set):
            return self.val_set
        # Samples keep their own ``index``, so metrics that count each sample once still do under DDP.
        chosen = np.random.default_rng(self.seed).choice(len(self.val_set), n, replace=False)
        return Subset(self.val_set, sorted(chosen.tolist()))

    def val_batches(self, training: bool = True) -> int:
        """Validation batches per pass: inside training (`training_val_set`) or of the whole split."""
        return len(self.loader(self.training_val_set() if training else self.val_set, train=False))


def subset_size(total: int, subset: float | int | None) -> int:
    """Samples that ``data.val_subset`` keeps of `total`: a fraction (0 < x <= 1.0) or a count (>= 1)."""
    if subset is None:
        return total
    if isinstance(subset, float):
        if not 0 < subset <= 1:
            raise ConfigError(f"data.val_subset: a fraction must be in (0, 1], got {subset}; or give a count")
        return max(1, round(total * subset))
    if subset < 1:
        raise ConfigError(f"data.val_subset: a count must be at least 1, got {subset}; or give a fraction")
    return min(total, subset)


def inference_pipeline(module: Any, default: Callable[[], Any]):
    """The preprocessing a loaded model predicts with: its checkpoint's data contract (``module.data_contract``,
    attached by `cvsuite.run.load_run`), else an older checkpoint's ``eval_pipeline`` hparam, else `default()`
    (the task's preset for the model's backbone)."""
    stored = getattr(module, "data_contract", None) or {}
    serialised = stored.get("eval_pipeline") or module.hparams.get("eval_pipeline")
    return A.from_dict(serialised) if serialised else default()


def class_weights(spec: list[float] | str | None, counts: np.ndarray, power: float = 1.0) -> list[float] | None:
    """``model.class_weights``: a list as given, or "balanced" = inverse frequency of each class in `counts`
    (images or pixels), normalised so a perfectly balanced data set gets all ones, raised to `power`: below 1 a
    milder lift (0.5: a class 100x rarer weighs 10x, not 100x, as much)."""
    if spec is None:
        return None
    if spec == "balanced":
        return ((counts.sum() / (len(counts) * np.maximum(counts, 1))) ** power).tolist()
    return [float(x) for x in spec]


def _stale_message(root: str | None, missing: list[str], changed: list[str]) -> str:
    parts = []
    for what, files in (("missing", missing), ("changed since training", changed)):
        if files:
            more = f" (+{len(files) - 5} more)" if len(files) > 5 else ""
            parts.append(f"{len(files)} {what}: {', '.join(files[:5])}{more}")
    return (
        f"The checkpoint's validation files under {root} are not as they were at training time: {'; '.join(parts)}. "
        "Restore them to score the same split, evaluate other data deliberately (--data.root, --data.val_root or "
        "--split test), or pass --data.rederive_split true to derive a new split from the folder as it is now."
    )
