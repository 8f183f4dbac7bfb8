"""Dataset sources, torch-free: the ``data`` section's keys, and what a source holds (class sizes,
image shape) before anything is prepared, so that a config asking for more poisons than a class
has stops at ``snakemake -n``. ``augdefense.data`` loads the images themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from augdefense.errors import ConfigError, DataError
from augdefense.params import OPTIONAL, Param, complete

SOURCES = ("cifar10", "cifar100", "digits", "imagefolder")
DATA_PARAMS = {
    "source": Param(
        "string",
        "cifar10 or cifar100 (torchvision download), digits (scikit-learn, offline) or an imagefolder tree",
        enum=SOURCES,
    ),
    "root": Param("string", "download/cache folder (cifar10, cifar100)", default="resources"),
    "path": Param("string", "folder with train/ and test/ class folders (imagefolder)", default=OPTIONAL),
    "image_size": Param(
        "integer", "resize to this square size (required for imagefolder)", default=OPTIONAL, minimum=4
    ),
    "split_seed": Param("integer", "digits: seed of the stratified 80/20 split", default=0),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
# CIFAR-10's training set: 5000 images of each of 10 classes, 3 x 32 x 32; CIFAR-100's: 500 of each of 100.
CIFAR10_TRAIN_CLASS_SIZES = (5000,) * 10
CIFAR100_TRAIN_CLASS_SIZES = (500,) * 100
CIFAR10_SHAPE = (3, 32, 32)
DIGITS_SHAPE = (1, 8, 8)


def check(spec: dict) -> dict:
    """The data entry with its defaults, refused naming the key when it cannot work."""
    spec = complete(spec, DATA_PARAMS, "data")
    if spec["source"] == "imagefolder":
        for key, what in (("path", "a folder with train/ and test/"), ("image_size", "images are resized to it")):
            if key not in spec:
                raise ConfigError(f"data.{key}: required for source 'imagefolder' ({what})")
    return spec


@dataclass(frozen=True)
class SourceFacts:
    train_class_sizes: tuple[int, ...]
    image_shape: tuple[int, int, int]

    @property
    def num_train(self) -> int:
        return sum(self.train_class_sizes)


def facts(spec: dict) -> SourceFacts:
    """Class sizes of the training split and the prepared image shape, without loading images."""
    spec = check(spec)
    size = spec.get("image_size")
    if spec["source"] in ("cifar10", "cifar100"):
        sizes = CIFAR10_TRAIN_CLASS_SIZES if spec["source"] == "cifar10" else CIFAR100_TRAIN_CLASS_SIZES
        shape = CIFAR10_SHAPE
    elif spec["source"] == "digits":
        import numpy as np

        targets, train, _ = digits_split(spec["split_seed"])
        sizes, shape = tuple(np.bincount(targets[train]).tolist()), DIGITS_SHAPE
    else:
        root = Path(spec["path"])
        classes = imagefolder_classes(root)
        sizes = tuple(sum(1 for _ in class_images(root / "train" / name)) for name in classes)
        shape = (3, size, size)
    if size is not None:
        shape = (shape[0], size, size)
    return SourceFacts(sizes, shape)


def digits_split(split_seed: int):
    """scikit-learn's digits: (targets, train indices, test indices) of the stratified 80/20 split."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    targets = load_digits().target
    train, test = train_test_split(np.arange(len(targets)), test_size=0.2, stratify=targets, random_state=split_seed)
    return targets, np.sort(train), np.sort(test)


def imagefolder_classes(root: Path) -> list[str]:
    """The class folders shared by ``root/train`` and ``root/test`` (an error lists any mismatch)."""
    splits = {}
    for split in ("train", "test"):
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(
                f"{split_dir}: missing; an imagefolder dataset needs {root}/train/<class>/ and {root}/test/<class>/"
            )
        splits[split] = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if splits["train"] != splits["test"]:
        only_train = sorted(set(splits["train"]) - set(splits["test"]))
        only_test = sorted(set(splits["test"]) - set(splits["train"]))
        raise DataError(
            f"{root}: train/ and test/ have different classes; only in train: {only_train}; only in test: {only_test}"
        )
    return splits["train"]


def class_images(class_dir: Path):
    """The image files of one class folder (recursively), in a stable order."""
    return sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def pretrain_count(class_size: int, share: float) -> int:
    """How many of a class's training images pretrain a transfer recipe's extractor in the offline
    fallback (no ``pretrain_data``); the rest are the fine-tuning pool, where the attacks put their poisons."""
    return int(round(share * class_size))


def finetune_class_sizes(train_class_sizes: tuple[int, ...], transfer: dict) -> tuple[int, ...]:
    """Each class's share of a transfer recipe's fine-tuning set: the pool (the whole class when the
    extractor pretrains on ``pretrain_data``, else what the split leaves), capped at
    ``finetune_size // classes`` when the recipe sets a fine-tuning set size."""
    if transfer.get("pretrain_data") is None:
        share = transfer["pretrain_share"]
        sizes = tuple(n - pretrain_count(n, share) for n in train_class_sizes)
    else:
        sizes = tuple(train_class_sizes)
    if transfer.get("finetune_size") is not None:
        per_class = transfer["finetune_size"] // len(sizes)
        sizes = tuple(min(n, per_class) for n in sizes)
    return sizes


def dataset_name(spec: dict) -> str:
    """The prepared artifact's name of a data entry: its source, and its size where it resizes."""
    return spec["source"] + (f"-{spec['image_size']}px" if spec.get("image_size") is not None else "")
