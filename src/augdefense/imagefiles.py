"""Images as files, decoded when indexed (``storage: stream``), and the DataLoader that feeds
batches of them (or of an in-memory tensor) to training: ``decode_file`` (one file, as forest's
ImageNet transform or as it is), ``ImageFiles`` (a split held as its file list), ``take``,
``loader`` and ``batches``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from augdefense.errors import DataError

# forest resizes ImageNet's shorter side to 256 and crops the centre 224 (datasets.py,
# construct_datasets): the shorter side goes to this multiple of the image size.
RESIZE_RATIO = 256 / 224


def decode_file(path: str | Path, size: int, resize: str = "imagenet") -> torch.Tensor:
    """One image file as uint8 [3, size, size]. ``resize: imagenet`` is forest's ImageNet transform
    (forest/data/datasets.py, ``construct_datasets``: ``Resize(256)``, ``CenterCrop(224)`` on the
    PIL image): the shorter side resized to ``size * 256 / 224`` with PIL's bilinear filter, then
    the centre ``size`` x ``size``. ``resize: none`` takes the pixels as they are (images that
    already have the size, such as a 32 x 32 copy of CIFAR-10, which resizing would blur) and
    refuses any other size, naming the file. Both storages decode through it, so they hold the
    same bytes."""
    from PIL import Image

    # PIL calls as torchvision's resize and center_crop make them (output size and rounding),
    # written out so that a training job and its loader workers need not import torchvision.
    with Image.open(path) as img:
        img = img.convert("RGB")
        width, height = img.size
        if resize == "none":
            if (width, height) != (size, size):
                raise DataError(
                    f"{path}: {width}x{height} pixels, but data.resize: none takes images as they are and "
                    f"data.image_size is {size}; use resize: imagenet to resize them"
                )
        else:
            short = round(size * RESIZE_RATIO)
            if width <= height:
                width, height = short, int(short * height / width)
            else:
                width, height = int(short * width / height), short
            img = img.resize((width, height), Image.BILINEAR)
            top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
            img = img.crop((left, top, left + size, top + size))
        array = np.asarray(img, dtype=np.uint8)
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
        resize: str = "imagenet",
        selection: torch.Tensor | None = None,
        replaced: dict[int, torch.Tensor] | None = None,
    ) -> None:
        self.files, self.size, self.resize = files, size, resize
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
        return image.clone() if image is not None else decode_file(self.files[position], self.size, self.resize)

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
        return ImageFiles(
            self.files, self.size, resize=self.resize, selection=self._file_positions(key), replaced=self.replaced
        )

    def replace(self, indices: torch.Tensor, images: torch.Tensor) -> ImageFiles:
        """This view with image ``indices[i]`` shown as ``images[i]``."""
        replaced = dict(self.replaced)
        for position, image in zip(self._file_positions(indices).tolist(), images):
            replaced[position] = image.clone()
        return ImageFiles(self.files, self.size, resize=self.resize, selection=self.selection, replaced=replaced)

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
