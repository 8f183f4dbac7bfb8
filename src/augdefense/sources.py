"""Dataset sources, torch-free: the ``data`` section's keys, and what a source holds (class sizes,
image shape) before anything is prepared, so that a config asking for more poisons than a class
has stops at ``snakemake -n``. ``augdefense.data`` loads the images themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from augdefense.errors import ConfigError, DataError
from augdefense.params import OPTIONAL, Param, complete


def normalisation_params(mean: str, std: str) -> dict[str, Param]:
    """An optional per-channel ``mean``/``std`` pair in [0, 1] units, with each one's description."""
    return {
        "mean": Param("array", mean, default=OPTIONAL, items=Param("number", minimum=0, maximum=1)),
        "std": Param("array", std, default=OPTIONAL, items=Param("number", exclusive_minimum=0)),
    }


SOURCES = ("cifar10", "cifar100", "digits", "imagefolder")
STORAGES = ("memory", "stream")
RESIZES = ("imagenet", "none")
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
    **normalisation_params(
        "per-channel normalisation mean in [0, 1] units (with std); absent: computed from the training set",
        "per-channel normalisation std in [0, 1] units (with mean); absent: computed from the training set",
    ),
    "train_per_class": Param(
        "integer",
        "a class-balanced subset: the first N training images of each class in the source's own order "
        "(torchvision's for cifar10/cifar100, the stratified split's for digits, sorted file names for "
        "imagefolder); absent: every image",
        default=OPTIONAL,
        minimum=1,
    ),
    "test_per_class": Param(
        "integer",
        "the first N test images of each class, as train_per_class; absent: every image",
        default=OPTIONAL,
        minimum=1,
    ),
    "resize": Param(
        "string",
        "imagefolder: imagenet, forest's ImageNet decoding (shorter side to image_size x 256/224, centre crop); "
        "none, images that already measure image_size x image_size taken as they are (resizing would blur them)",
        default="imagenet",
        enum=RESIZES,
    ),
    "storage": Param(
        "string",
        "memory: every image decoded once into one uint8 artifact (CIFAR-sized data); stream: an imagefolder "
        "tree indexed by file and decoded batch by batch by DataLoader workers (sets that do not fit in memory)",
        default="memory",
        enum=STORAGES,
    ),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
# CIFAR-10's training set: 5000 images of each of 10 classes, 3 x 32 x 32; CIFAR-100's: 500 of each of 100.
CIFAR10_TRAIN_CLASS_SIZES = (5000,) * 10
CIFAR100_TRAIN_CLASS_SIZES = (500,) * 100
CIFAR10_SHAPE = (3, 32, 32)
CIFAR_TEST_SIZE = 10000
DIGITS_SHAPE = (1, 8, 8)


def check(spec: dict) -> dict:
    """The data entry with its defaults, refused naming the key when it cannot work."""
    spec = complete(spec, DATA_PARAMS, "data")
    if spec["source"] == "imagefolder":
        for key, what in (("path", "a folder with train/ and test/"), ("image_size", "images are resized to it")):
            if key not in spec:
                raise ConfigError(f"data.{key}: required for source 'imagefolder' ({what})")
    if ("mean" in spec) != ("std" in spec) or len(spec.get("mean", ())) != len(spec.get("std", ())):
        raise ConfigError("data.mean, data.std: give both, one value per channel, or neither")
    if spec["resize"] != "imagenet" and spec["source"] != "imagefolder":
        raise ConfigError(
            f"data.resize: applies to imagefolder files; source '{spec['source']}' is resized as a tensor to image_size"
        )
    if spec["storage"] == "stream" and spec["source"] != "imagefolder":
        raise ConfigError(
            f"data.storage: 'stream' reads an imagefolder tree file by file; source '{spec['source']}' is "
            "held in memory (storage: memory)"
        )
    return spec


@dataclass(frozen=True)
class SourceFacts:
    train_class_sizes: tuple[int, ...]
    image_shape: tuple[int, int, int]
    num_test: int = 0

    @property
    def num_train(self) -> int:
        return sum(self.train_class_sizes)

    @property
    def image_bytes(self) -> int:
        """One decoded uint8 image."""
        channels, height, width = self.image_shape
        return channels * height * width

    def in_memory_bytes(self) -> int:
        """What a training job holds with ``storage: memory``: the prepared training and test sets,
        and the victim's poisoned copy of the training set (``poisons.apply``)."""
        return (2 * self.num_train + self.num_test) * self.image_bytes


def facts(spec: dict) -> SourceFacts:
    """Class sizes of the training split and the prepared image shape, without loading images."""
    spec = check(spec)
    size = spec.get("image_size")
    if spec["source"] in ("cifar10", "cifar100"):
        sizes = CIFAR10_TRAIN_CLASS_SIZES if spec["source"] == "cifar10" else CIFAR100_TRAIN_CLASS_SIZES
        shape = CIFAR10_SHAPE
        test_class_sizes = (CIFAR_TEST_SIZE // len(sizes),) * len(sizes)
    elif spec["source"] == "digits":
        import numpy as np

        targets, train, test = digits_split(spec["split_seed"])
        sizes, shape = tuple(np.bincount(targets[train]).tolist()), DIGITS_SHAPE
        test_class_sizes = tuple(np.bincount(targets[test]).tolist())
    else:
        root = Path(spec["path"])
        classes = imagefolder_classes(root)
        sizes = tuple(len(class_images(root / "train" / name)) for name in classes)
        test_class_sizes = tuple(len(class_images(root / "test" / name)) for name in classes)
        shape = (3, size, size)
    if size is not None:
        shape = (shape[0], size, size)
    return SourceFacts(
        _balanced_sizes(spec, "train", sizes), shape, sum(_balanced_sizes(spec, "test", test_class_sizes))
    )


def _balanced_sizes(spec: dict, split: str, sizes: tuple[int, ...]) -> tuple[int, ...]:
    """Class sizes with ``<split>_per_class`` applied, refused where a class has fewer images."""
    wanted = spec.get(f"{split}_per_class")
    if wanted is None:
        return sizes
    if min(sizes) < wanted:
        smallest = min(range(len(sizes)), key=sizes.__getitem__)
        raise ConfigError(
            f"data.{split}_per_class: {wanted} images of each class, but class {smallest} of "
            f"'{spec['source']}' has only {sizes[smallest]} in its {split} split"
        )
    return (wanted,) * len(sizes)


def first_per_class(labels: list[int], per_class: int | None) -> list[int] | None:
    """Positions of the first ``per_class`` images of each class, in dataset order (None: keep all)."""
    if per_class is None:
        return None
    seen: dict[int, int] = {}
    keep = []
    for position, label in enumerate(labels):
        if seen.get(label, 0) < per_class:
            seen[label] = seen.get(label, 0) + 1
            keep.append(position)
    return keep


def memory_bytes() -> int | None:
    """This machine's physical memory (None where the OS does not say)."""
    import os

    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def check_fits(spec: dict, facts: SourceFacts, available: int | None = None) -> None:
    """Refuse ``storage: memory`` when a training job's copy of the set would not fit in this
    machine's memory (``available``, bytes: the physical memory when not given), with the estimate."""
    spec = check(spec)
    available = memory_bytes() if available is None else available
    if spec["storage"] != "memory" or available is None:
        return
    needed = facts.in_memory_bytes()
    if needed > available:
        raise ConfigError(
            f"data.storage: 'memory' holds every decoded image in each training job: about {needed / 2**30:.1f} GiB "
            f"({facts.num_train} training images twice, the clean set and the poisoned copy, and {facts.num_test} "
            f"test images, {facts.image_bytes} bytes each), more than this machine's {available / 2**30:.1f} GiB; "
            "use storage: stream (imagefolder) or a smaller image_size"
        )


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
    """The prepared artifact's name of a data entry: its source, its size where it resizes, the
    images per class of a balanced subset, and how files are decoded and stored where not the default."""
    name = spec["source"] + (f"-{spec['image_size']}px" if spec.get("image_size") is not None else "")
    if spec.get("resize", "imagenet") != "imagenet":
        name += f"-resize{spec['resize']}"
    for split in ("train", "test"):
        if spec.get(f"{split}_per_class") is not None:
            name += f"-{split}{spec[f'{split}_per_class']}pc"
    return name + ("-stream" if spec.get("storage") == "stream" else "")
