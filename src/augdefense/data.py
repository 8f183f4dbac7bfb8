"""Datasets as uint8 images: CIFAR-10 (torchvision download), scikit-learn digits (offline),
and an ImageFolder tree (``train/`` and ``test/`` class folders).

Every source ends in a prepared artifact (see ``prepare``) that loads as one ``Dataset``:
``train_images`` / ``test_images`` as uint8 [N, C, H, W], int64 labels, class names, and the
training set's per-channel mean and std (for normalisation on the training device). With
``storage: memory`` the images are one decoded tensor; with ``storage: stream`` (imagefolder) the
artifact lists the files, and the images are an ``ImageFiles`` view that decodes what is indexed,
so an attack reads its few poisons by index and training streams batches through DataLoader
workers (``loader``) without the set ever being held.

The readers of each source live in ``augdefense.readers``, the streamed view and the loader in
``augdefense.imagefiles`` (re-exported here: ``data.ImageFiles``, ``data.loader``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from augdefense import sources
from augdefense.errors import ArtifactError, DataError
from augdefense.imagefiles import ImageFiles, Images, batches, decode_file, loader, take
from augdefense.io import load_tensors, save_tensors
from augdefense.readers import READERS, image_files

__all__ = [
    "Dataset",
    "ImageFiles",
    "Images",
    "batches",
    "build",
    "channel_stats",
    "decode_file",
    "load",
    "loader",
    "prepare",
    "subset",
    "take",
    "transfer_split",
]


def channel_stats(chunks) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (unbiased) std in [0, 1] units of uint8 images given in chunks of
    [n, C, H, W]: from exact integer sums, so any chunking (the whole tensor, or streamed
    batches) gives the same float32 statistics."""
    from fractions import Fraction

    count, total, squares = 0, None, None
    for chunk in chunks:
        x = chunk.transpose(0, 1).reshape(chunk.shape[1], -1).long()
        count += x.shape[1]
        sums, sq = x.sum(1).tolist(), (x * x).sum(1).tolist()
        total = sums if total is None else [a + b for a, b in zip(total, sums)]
        squares = sq if squares is None else [a + b for a, b in zip(squares, sq)]
    if not count:
        raise DataError("no training images to compute the normalisation statistics from")
    mean = [float(Fraction(t, 255 * count)) for t in total]
    var = [Fraction(count * s - t * t, count * max(count - 1, 1) * 255**2) for t, s in zip(total, squares)]
    return torch.tensor(mean, dtype=torch.float64).float(), torch.tensor(var, dtype=torch.float64).sqrt().float()


def given_stats(spec: dict, channels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The data entry's own ``mean`` and ``std`` (forest ships ImageNet's as constants), if any."""
    if "mean" not in spec:
        return None
    if len(spec["mean"]) != channels:
        raise DataError(f"data.mean, data.std: {len(spec['mean'])} values for images of {channels} channels")
    return torch.tensor(spec["mean"], dtype=torch.float32), torch.tensor(spec["std"], dtype=torch.float32)


def _chunks(images: Images, elements: int = 1 << 24, *, workers: int = 0):
    per_chunk = max(1, elements // max(1, int(np.prod(images.shape[1:]))))
    yield from batches(images, per_chunk, workers=workers)


@dataclass
class Dataset:
    train_images: Images  # uint8 [N, C, H, W]
    train_labels: torch.Tensor  # int64 [N]
    test_images: Images
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
        dataset,
        train_images=take(dataset.train_images, train_indices),
        train_labels=dataset.train_labels[train_indices],
    )


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def build(spec: dict) -> Dataset:
    """Load a source and resize it to ``image_size``; compute the normalisation statistics."""
    spec = sources.check(spec)
    x_train, y_train, x_test, y_test, classes = READERS[spec["source"]](spec)
    size = spec.get("image_size")
    x_train, x_test = _resize(x_train, size), _resize(x_test, size)
    mean, std = given_stats(spec, x_train.shape[1]) or channel_stats(_chunks(x_train))
    return Dataset(x_train.contiguous(), y_train, x_test.contiguous(), y_test, classes, mean, std)


def _index_imagefolder(spec: dict, workers: int) -> dict:
    """``storage: stream``: the tree's file lists and labels, and the statistics: the entry's own,
    or from one streamed pass over the training images (``workers`` decode; an unreadable image
    is named here)."""
    root = Path(spec["path"]).resolve()
    classes = sources.imagefolder_classes(root)
    artifact = {"storage": "stream", "root": str(root), "image_size": spec["image_size"], "classes": classes}
    artifact["resize"] = spec["resize"]
    for split in ("train", "test"):
        files, labels = image_files(root / split, classes, spec.get(f"{split}_per_class"))
        artifact[f"{split}_files"] = [str(f.relative_to(root)) for f in files]
        artifact[f"{split}_labels"] = labels
    images = ImageFiles([str(root / f) for f in artifact["train_files"]], spec["image_size"], resize=spec["resize"])
    given = given_stats(spec, 3)
    if given is not None:  # nothing to decode
        artifact["mean"], artifact["std"] = given
        return artifact
    try:
        artifact["mean"], artifact["std"] = channel_stats(_chunks(images, workers=workers))
    except Exception as exc:  # a worker's error arrives wrapped; name the file it could not read
        raise DataError(f"{root / 'train'}: an image could not be decoded ({type(exc).__name__}: {exc})") from None
    return artifact


def prepare(*, spec: dict, out: str | Path, threads: int = 1) -> None:
    """The prepare_data job: a source as one artifact (``out``): the decoded images, or with
    ``storage: stream`` the tree's file index (decoded once for the statistics, by ``threads``
    DataLoader workers when the job has more than one)."""
    import logging

    from augdefense import timing

    spec = sources.check(spec)
    log = logging.getLogger("augdefense")
    if spec["storage"] == "stream":
        with timing.phase("load"):
            artifact = _index_imagefolder(spec, threads if threads > 1 else 0)
        with timing.phase("write"):
            save_tensors(out, artifact)
        log.info(
            "indexed %s: train %d files, test %d files, %d classes, streamed at %d px -> %s",
            artifact["root"],
            len(artifact["train_files"]),
            len(artifact["test_files"]),
            len(artifact["classes"]),
            spec["image_size"],
            out,
        )
        return
    with timing.phase("load"):
        dataset = build(spec)
    with timing.phase("write"):
        save_tensors(out, dataset.to_dict())
    log.info(
        "prepared %s: train %s, test %s, %d classes -> %s",
        spec["source"],
        tuple(dataset.train_images.shape),
        tuple(dataset.test_images.shape),
        dataset.num_classes,
        out,
    )


def _load_stream(path, obj: dict) -> Dataset:
    root = Path(obj["root"])
    splits = {}
    for split in ("train", "test"):
        files, labels = obj[f"{split}_files"], obj[f"{split}_labels"]
        if not isinstance(files, list) or labels.shape != (len(files),):
            raise ArtifactError(f"{path}: '{split}_files' must list one file per label")
        # The ends of each list: a tree moved, renamed or trimmed since it was indexed is named here.
        for name in files[:1] + files[-1:]:
            if not (root / name).is_file():
                raise ArtifactError(f"{path}: indexed image {root / name} is missing; rerun prepare_data")
        # An index written before ``resize`` existed was decoded the only way there was then.
        resize = obj.get("resize", "imagenet")
        splits[split] = (ImageFiles([str(root / f) for f in files], obj["image_size"], resize=resize), labels)
    return Dataset(*splits["train"], *splits["test"], obj["classes"], obj["mean"], obj["std"])


def load(path: str | Path) -> Dataset:
    from augdefense import timing

    timing.mark_memory("before_data")
    obj = load_tensors(
        path, {k: torch.Tensor for k in ("train_labels", "test_labels", "mean", "std")} | {"classes": list}
    )
    if obj.get("storage", "memory") == "stream":
        for key, kind in {"root": str, "image_size": int, "train_files": list, "test_files": list}.items():
            if not isinstance(obj.get(key), kind):
                raise ArtifactError(f"{path}: entry '{key}' should be {kind.__name__} (a storage: stream index)")
        dataset = _load_stream(path, obj)
    else:
        for key in ("train_images", "test_images"):
            if not isinstance(obj.get(key), torch.Tensor):
                raise ArtifactError(f"{path}: missing entry '{key}' (a storage: memory artifact holds the images)")
        dataset = Dataset(**{k: obj[k] for k in Dataset.__dataclass_fields__})
    for split in ("train", "test"):
        images, labels = getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_labels")
        if images.dtype != torch.uint8 or images.ndim != 4 or labels.shape != (images.shape[0],):
            raise ArtifactError(
                f"{path}: '{split}_images' must be uint8 [N, C, H, W] with one label each; "
                f"found {images.dtype} {tuple(images.shape)} and labels {tuple(labels.shape)}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(obj["classes"])):
            raise ArtifactError(f"{path}: '{split}_labels' outside 0..{len(obj['classes']) - 1}")
    timing.mark_memory("after_data")
    return dataset
