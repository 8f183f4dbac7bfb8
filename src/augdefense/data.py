"""Datasets as uint8 tensors: CIFAR-10 (torchvision download), scikit-learn digits (offline),
and an ImageFolder tree (``train/`` and ``test/`` class folders).

Every source ends in the same prepared artifact (see ``prepare``): ``train_images`` / ``test_images``
as uint8 [N, C, H, W], int64 labels, class names, and the training set's per-channel mean and std
(for normalisation on the training device).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from augdefense import sources
from augdefense.errors import ArtifactError, DataError
from augdefense.io import load_tensors, save_tensors


@dataclass
class Dataset:
    train_images: torch.Tensor  # uint8 [N, C, H, W]
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    mean: torch.Tensor  # float [C], in [0, 1] units
    std: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def transfer_split(labels: torch.Tensor, transfer: dict, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(pretrain, finetune) training indices of a transfer recipe (its ``transfer`` entry). In the
    offline fallback a ``pretrain_share`` of each class (drawn with a fixed seed) pretrains the
    feature extractor and the rest is the fine-tuning pool; with ``pretrain_data`` the extractor
    pretrains elsewhere (pretrain is empty) and the pool is the whole training set. With a
    ``finetune_size``, each class keeps the first ``finetune_size // classes`` images of its pool in
    dataset order, as the benchmark's ``learning_module.PoisonedDataset.find_indices`` does; the
    attacks place their poisons in what is kept."""
    generator = torch.Generator().manual_seed(seed)
    classes = labels.unique().tolist()
    class_indices = [torch.nonzero(labels == c).flatten() for c in classes]
    kept = sources.finetune_class_sizes(tuple(len(idx) for idx in class_indices), transfer)
    external = transfer.get("pretrain_data") is not None
    pretrain, finetune = [], []
    for idx, keep in zip(class_indices, kept):
        if not external:
            idx = idx[torch.randperm(len(idx), generator=generator)]
            cut = sources.pretrain_count(len(idx), transfer["pretrain_share"])
            pretrain.append(idx[:cut])
            idx = idx[cut:].sort().values
        finetune.append(idx[:keep])
    pretrain = torch.cat(pretrain).sort().values if pretrain else torch.zeros(0, dtype=torch.long)
    return pretrain, torch.cat(finetune).sort().values


def subset(dataset: Dataset, train_indices: torch.Tensor) -> Dataset:
    """The dataset with only the given training images (test set and statistics unchanged)."""
    from dataclasses import replace

    return replace(
        dataset, train_images=dataset.train_images[train_indices], train_labels=dataset.train_labels[train_indices]
    )


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def _load_digits(spec: dict) -> tuple:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255.0 / 16.0))).to(torch.uint8)[:, None]
    labels = torch.from_numpy(digits.target).long()
    _, idx_train, idx_test = sources.digits_split(spec["split_seed"])
    classes = [str(c) for c in range(10)]
    return images[idx_train], labels[idx_train], images[idx_test], labels[idx_test], classes


def _check_archive(path: Path, expected_md5: str) -> None:
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


def _load_cifar(spec: dict) -> tuple:
    """CIFAR-10 or CIFAR-100 through torchvision (downloaded into ``root`` and md5-verified)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    kind, name = (CIFAR10, "CIFAR-10") if spec["source"] == "cifar10" else (CIFAR100, "CIFAR-100")
    root = Path(spec["root"])
    splits = []
    for train in (True, False):
        try:
            ds = kind(root=str(root), train=train, download=False)
        except RuntimeError:  # not extracted yet, or extracted batches fail their md5
            _check_archive(root / kind.filename, kind.tgz_md5)
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
    return (*splits, list(ds.classes))


def _read_image_dir(split_dir: Path, classes: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    images, labels, unreadable = [], [], []
    for label, name in enumerate(classes):
        for file in sources.class_images(split_dir / name):
            try:
                with Image.open(file) as img:
                    img = img.convert("RGB").resize((size, size), Image.BILINEAR)
                    array = np.asarray(img, dtype=np.uint8)
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                unreadable.append(f"{file} ({type(exc).__name__})")
                continue
            images.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
            labels.append(label)
    if unreadable:
        raise DataError(f"{split_dir}: {len(unreadable)} unreadable image(s): " + "; ".join(unreadable[:20]))
    if not images:
        raise DataError(f"{split_dir}: no images found (looked for {sorted(sources.IMAGE_SUFFIXES)})")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def _load_imagefolder(spec: dict) -> tuple:
    root = Path(spec["path"])
    classes = sources.imagefolder_classes(root)
    x_train, y_train = _read_image_dir(root / "train", classes, spec["image_size"])
    x_test, y_test = _read_image_dir(root / "test", classes, spec["image_size"])
    return x_train, y_train, x_test, y_test, classes


LOADERS = {"cifar10": _load_cifar, "cifar100": _load_cifar, "digits": _load_digits, "imagefolder": _load_imagefolder}


def build(spec: dict) -> Dataset:
    """Load a source and resize it to ``image_size``; compute the normalisation statistics."""
    spec = sources.check(spec)
    x_train, y_train, x_test, y_test, classes = LOADERS[spec["source"]](spec)
    size = spec.get("image_size")
    x_train, x_test = _resize(x_train, size), _resize(x_test, size)
    # In float64: a float32 sum's rounding depends on how many threads split it, and these
    # statistics normalise every image the models see.
    pixels = x_train.double().div(255).transpose(0, 1).reshape(x_train.shape[1], -1)
    mean, std = pixels.mean(1).float(), pixels.std(1).float()
    return Dataset(x_train.contiguous(), y_train, x_test.contiguous(), y_test, classes, mean, std)


def prepare(*, spec: dict, out: str | Path) -> Dataset:
    """The prepare_data job: a source as one uint8 artifact (``out``)."""
    import logging

    from augdefense import timing

    with timing.phase("load"):
        dataset = build(spec)
    with timing.phase("write"):
        save_tensors(out, dataset.to_dict())
    logging.getLogger("augdefense").info(
        "prepared %s: train %s, test %s, %d classes -> %s",
        spec["source"],
        tuple(dataset.train_images.shape),
        tuple(dataset.test_images.shape),
        dataset.num_classes,
        out,
    )
    return dataset


def load(path: str | Path) -> Dataset:
    obj = load_tensors(
        path,
        {k: torch.Tensor for k in ("train_images", "train_labels", "test_images", "test_labels", "mean", "std")}
        | {"classes": list},
    )
    for split in ("train", "test"):
        images, labels = obj[f"{split}_images"], obj[f"{split}_labels"]
        if images.dtype != torch.uint8 or images.ndim != 4 or labels.shape != (images.shape[0],):
            raise ArtifactError(
                f"{path}: '{split}_images' must be uint8 [N, C, H, W] with one label each; "
                f"found {images.dtype} {tuple(images.shape)} and labels {tuple(labels.shape)}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(obj["classes"])):
            raise ArtifactError(f"{path}: '{split}_labels' outside 0..{len(obj['classes']) - 1}")
    return Dataset(**{k: obj[k] for k in Dataset.__dataclass_fields__})
