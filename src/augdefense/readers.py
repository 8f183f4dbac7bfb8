"""The sources' readers: each returns (train images, train labels, test images, test labels,
class names), the images uint8 [N, C, H, W] at the source's own size, holding only the first
``train_per_class`` / ``test_per_class`` images of each class when the data entry asks for a
class-balanced subset (``sources.first_per_class``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from augdefense import sources
from augdefense.errors import DataError
from augdefense.imagefiles import decode_file


def _first_per_class(spec: dict, images: torch.Tensor, labels: torch.Tensor, split: str) -> tuple:
    keep = sources.first_per_class(labels.tolist(), spec.get(f"{split}_per_class"))
    if keep is None:
        return images, labels
    keep = torch.tensor(keep, dtype=torch.long)
    return images[keep], labels[keep]


def _balanced(spec: dict, x_train, y_train, x_test, y_test, classes) -> tuple:
    return (
        *_first_per_class(spec, x_train, y_train, "train"),
        *_first_per_class(spec, x_test, y_test, "test"),
        classes,
    )


def read_digits(spec: dict) -> tuple:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255.0 / 16.0))).to(torch.uint8)[:, None]
    labels = torch.from_numpy(digits.target).long()
    _, idx_train, idx_test = sources.digits_split(spec["split_seed"])
    classes = [str(c) for c in range(10)]
    return _balanced(spec, images[idx_train], labels[idx_train], images[idx_test], labels[idx_test], classes)


def check_archive(path: Path, expected_md5: str) -> None:
    """Name a present but corrupted archive instead of letting a download attempt hide it."""
    import hashlib

    if not path.exists():
        return
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    if digest != expected_md5:
        raise DataError(
            f"{path}: md5 {digest} does not match the expected {expected_md5}; "
            f"the file is corrupted or truncated: delete it and rerun to download it again"
        )


def read_cifar(spec: dict) -> tuple:
    """CIFAR-10 or CIFAR-100 through torchvision (downloaded into ``root`` and md5-verified)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    kind, name = (CIFAR10, "CIFAR-10") if spec["source"] == "cifar10" else (CIFAR100, "CIFAR-100")
    root = Path(spec["root"])
    splits = []
    for train in (True, False):
        try:
            ds = kind(root=str(root), train=train, download=False)
        except RuntimeError:  # not extracted yet, or extracted batches fail their md5
            check_archive(root / kind.filename, kind.tgz_md5)
            try:
                # Downloads unless the archive is present; verifies its md5 and the batches'.
                ds = kind(root=str(root), train=train, download=True)
            except RuntimeError as exc:
                raise DataError(
                    f"{name} under {root}: {exc} The extracted batches failed their md5 check; "
                    f"delete {root / kind.base_folder} and {root / kind.filename} and rerun."
                ) from None
            except OSError as exc:  # no network, DNS failure, ...
                raise DataError(
                    f"{name} could not be downloaded into {root} ({exc}). Without internet, copy "
                    f"{kind.filename} (md5 {kind.tgz_md5}) into {root}."
                ) from None
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        splits += [images, torch.tensor(ds.targets, dtype=torch.long)]
    return _balanced(spec, *splits, list(ds.classes))


def image_files(split_dir: Path, classes: list[str], per_class: int | None = None) -> tuple[list[Path], torch.Tensor]:
    """A split's files (each class's first ``per_class`` in sorted order, or all) and labels."""
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sources.class_images(split_dir / name)[:per_class]
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"{split_dir}: no images found (looked for {sorted(sources.IMAGE_SUFFIXES)})")
    return files, torch.tensor(labels, dtype=torch.long)


def read_image_dir(
    split_dir: Path, classes: list[str], size: int, resize: str = "imagenet", per_class: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import UnidentifiedImageError

    files, labels = image_files(split_dir, classes, per_class)
    images, unreadable = [], []
    for file in files:
        try:
            images.append(decode_file(file, size, resize))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            unreadable.append(f"{file} ({type(exc).__name__})")
    if unreadable:
        raise DataError(f"{split_dir}: {len(unreadable)} unreadable image(s): " + "; ".join(unreadable[:20]))
    return torch.stack(images), labels


def read_imagefolder(spec: dict) -> tuple:
    """An imagefolder tree, each class's files in sorted order (only the first ``*_per_class``
    are decoded)."""
    root = Path(spec["path"])
    classes = sources.imagefolder_classes(root)
    splits = []
    for split in ("train", "test"):
        args = (spec["image_size"], spec["resize"], spec.get(f"{split}_per_class"))
        splits += read_image_dir(root / split, classes, *args)
    return (*splits, classes)


READERS = {"cifar10": read_cifar, "cifar100": read_cifar, "digits": read_digits, "imagefolder": read_imagefolder}
