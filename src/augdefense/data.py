"""Datasets as uint8 images: CIFAR-10 (torchvision download), scikit-learn digits (offline),
and an ImageFolder tree (``train/`` and ``test/`` class folders).

Every source ends in a prepared artifact (see ``prepare``) that loads as one ``Dataset``:
``train_images`` / ``test_images`` as uint8 [N, C, H, W], int64 labels, class names, and the
training set's per-channel mean and std (for normalisation on the training device). With
``storage: memory`` the images are one decoded tensor; with ``storage: stream`` (imagefolder) the
artifact lists the files, and the images are an ``ImageFiles`` view that decodes what is indexed,
so an attack reads its few poisons by index and training streams batches through DataLoader
workers (``loader``) without the set ever being held.
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

# forest resizes ImageNet's shorter side to 256 and crops the centre 224 (datasets.py,
# construct_datasets): the shorter side goes to this multiple of the image size.
RESIZE_RATIO = 256 / 224


def decode_file(path: str | Path, size: int) -> torch.Tensor:
    """One image file as uint8 [3, size, size], as forest's ImageNet transform gives it
    (forest/data/datasets.py, ``construct_datasets``: ``Resize(256)``, ``CenterCrop(224)`` on the
    PIL image): the shorter side resized to ``size * 256 / 224`` with PIL's bilinear filter, then
    the centre ``size`` x ``size``. Both storages decode through it, so they hold the same bytes."""
    from PIL import Image

    # PIL calls as torchvision's resize and center_crop make them (output size and rounding),
    # written out so that a training job and its loader workers need not import torchvision.
    with Image.open(path) as img:
        img = img.convert("RGB")
        width, height = img.size
        short = round(size * RESIZE_RATIO)
        if width <= height:
            width, height = short, int(short * height / width)
        else:
            width, height = int(short * width / height), short
        img = img.resize((width, height), Image.BILINEAR)
        top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
        array = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class ImageFiles:
    """A split of an imagefolder tree held as its file list: indexing it (an int, a slice, a list,
    an index or boolean tensor) decodes those images (``decode_file``) and returns a uint8 tensor,
    as indexing the in-memory tensor does. ``replace`` and ``select`` give views with some images
    swapped (the poisons, by index) or a subset, still without decoding anything. It is also the
    map-style dataset the DataLoader workers decode from (``loader``)."""

    dtype = torch.uint8
    ndim = 4

    def __init__(
        self,
        files: list[str],
        size: int,
        *,
        selection: torch.Tensor | None = None,
        replaced: dict[int, torch.Tensor] | None = None,
    ) -> None:
        self.files, self.size = files, size
        self.selection = selection  # positions in ``files`` of this view's images (None: all)
        self.replaced = replaced or {}  # position in ``files`` -> uint8 image shown instead

    def __len__(self) -> int:
        return len(self.files) if self.selection is None else len(self.selection)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), 3, self.size, self.size))

    def _file_positions(self, key) -> torch.Tensor:
        n = len(self)
        if isinstance(key, slice):
            positions = torch.arange(n)[key]
        else:
            positions = torch.as_tensor(np.asarray(key) if isinstance(key, list) else key)
            if positions.dtype == torch.bool:
                if positions.shape != (n,):
                    raise IndexError(f"boolean mask of shape {tuple(positions.shape)} for {n} images")
                positions = torch.nonzero(positions).flatten()
            positions = positions.long().reshape(-1)
            if len(positions) and (positions.min() < -n or positions.max() >= n):
                raise IndexError(f"index out of range for {n} images")
            positions = positions % max(n, 1)
        return positions if self.selection is None else self.selection[positions]

    def _decode(self, position: int) -> torch.Tensor:
        image = self.replaced.get(position)
        return image.clone() if image is not None else decode_file(self.files[position], self.size)

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, int | np.integer) or (isinstance(key, torch.Tensor) and key.ndim == 0):
            # One image (the DataLoader's call, once per image): no index tensor to build.
            n, key = len(self), int(key)
            if not -n <= key < n:
                raise IndexError(f"index {key} out of range for {n} images")
            return self._decode(key % n if self.selection is None else int(self.selection[key]))
        positions = self._file_positions(key).tolist()
        if not positions:
            return torch.zeros((0, 3, self.size, self.size), dtype=torch.uint8)
        return torch.stack([self._decode(p) for p in positions])

    def select(self, key) -> ImageFiles:
        return ImageFiles(self.files, self.size, selection=self._file_positions(key), replaced=self.replaced)

    def replace(self, indices: torch.Tensor, images: torch.Tensor) -> ImageFiles:
        """This view with image ``indices[i]`` shown as ``images[i]``."""
        replaced = dict(self.replaced)
        for position, image in zip(self._file_positions(indices).tolist(), images):
            replaced[position] = image.clone()
        return ImageFiles(self.files, self.size, selection=self.selection, replaced=replaced)

    def __getattr__(self, name: str):
        # Whole-set tensor operations (``.float()``, ``.to()``) would decode every image at once.
        raise AttributeError(
            f"streamed images (storage: stream) have no '{name}': they are decoded by index or batch by batch"
        )


Images = torch.Tensor | ImageFiles


def take(images: Images, key) -> Images:
    """``images[key]``, lazily for streamed images: a subset view, nothing decoded."""
    return images.select(key) if isinstance(images, ImageFiles) else images[key]


class _TransformedItems(torch.utils.data.Dataset):
    """Items for the DataLoader: image ``i``, through ``transform`` with a generator seeded by
    (``seed``, ``i``) so that a draw does not depend on which worker decodes it, nor touch the
    training process's random state."""

    def __init__(self, images: Images, transform=None, seed: tuple = ()) -> None:
        self.images, self.transform, self.seed = images, transform, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.images[index]
        if self.transform is None:
            return image
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(np.random.SeedSequence([*self.seed, index]).generate_state(1)[0]))
            return self.transform(image)


def loader(images: Images, index_batches, *, workers: int = 0, transform=None, seed: tuple = (), pin: bool = False):
    """uint8 batches of ``images`` in the order of ``index_batches`` (lists of indices), decoded by
    ``workers`` DataLoader processes (0: in this process), each image through ``transform`` with
    a draw seeded by ``seed`` and its index."""
    return torch.utils.data.DataLoader(
        _TransformedItems(images, transform, seed),
        batch_sampler=[list(map(int, batch)) for batch in index_batches],
        num_workers=workers,
        pin_memory=pin,
        # The DataLoader draws its workers' base seed from this generator, not from the global one
        # that the training loop's augmentations use.
        generator=torch.Generator().manual_seed(0),
    )


def batches(images: Images, batch_size: int, *, workers: int = 0):
    """``images`` in order, ``batch_size`` at a time (streamed ones decoded by ``workers``)."""
    if isinstance(images, torch.Tensor):
        for begin in range(0, len(images), batch_size):
            yield images[begin : begin + batch_size]
        return
    yield from loader(images, torch.arange(len(images)).split(batch_size), workers=workers)


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


def _image_files(split_dir: Path, classes: list[str]) -> tuple[list[Path], torch.Tensor]:
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sources.class_images(split_dir / name)
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"{split_dir}: no images found (looked for {sorted(sources.IMAGE_SUFFIXES)})")
    return files, torch.tensor(labels, dtype=torch.long)


def _read_image_dir(split_dir: Path, classes: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import UnidentifiedImageError

    files, labels = _image_files(split_dir, classes)
    images, unreadable = [], []
    for file in files:
        try:
            images.append(decode_file(file, size))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            unreadable.append(f"{file} ({type(exc).__name__})")
    if unreadable:
        raise DataError(f"{split_dir}: {len(unreadable)} unreadable image(s): " + "; ".join(unreadable[:20]))
    return torch.stack(images), labels


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
    mean, std = given_stats(spec, x_train.shape[1]) or channel_stats(_chunks(x_train))
    return Dataset(x_train.contiguous(), y_train, x_test.contiguous(), y_test, classes, mean, std)


def _index_imagefolder(spec: dict, workers: int) -> dict:
    """``storage: stream``: the tree's file lists and labels, and the statistics: the entry's own,
    or from one streamed pass over the training images (``workers`` decode; an unreadable image
    is named here)."""
    root = Path(spec["path"]).resolve()
    classes = sources.imagefolder_classes(root)
    artifact = {"storage": "stream", "root": str(root), "image_size": spec["image_size"], "classes": classes}
    for split in ("train", "test"):
        files, labels = _image_files(root / split, classes)
        artifact[f"{split}_files"] = [str(f.relative_to(root)) for f in files]
        artifact[f"{split}_labels"] = labels
    images = ImageFiles([str(root / f) for f in artifact["train_files"]], spec["image_size"])
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
        splits[split] = (ImageFiles([str(root / f) for f in files], obj["image_size"]), labels)
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
    return dataset
