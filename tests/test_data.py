"""Data sources and safe artifact loading."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from augdefense import data, sources
from augdefense.errors import ArtifactError, ConfigError, DataError


def make_tree(root, classes_train=("cat", "dog"), classes_test=("cat", "dog"), per_class=3, size=10):
    rng = np.random.default_rng(0)
    for split, classes in (("train", classes_train), ("test", classes_test)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size + 2, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_digits_split_and_range(digits8):
    assert digits8.train_images.shape == (1437, 1, 8, 8) and digits8.test_images.shape == (360, 1, 8, 8)
    assert digits8.train_images.dtype == torch.uint8 and int(digits8.train_images.max()) == 255
    assert torch.bincount(digits8.test_labels).min() >= 35  # stratified


def test_digits_upsampled():
    ds = data.build({"source": "digits", "image_size": 16})
    assert ds.image_shape == (1, 16, 16)


def test_imagefolder_tree(tmp_path):
    root = make_tree(tmp_path / "tree")
    ds = data.build({"source": "imagefolder", "path": str(root), "image_size": 8})
    assert ds.classes == ["cat", "dog"]
    assert ds.train_images.shape == (6, 3, 8, 8) and ds.test_images.shape == (6, 3, 8, 8)
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.mean.shape == (3,)


def test_imagefolder_class_mismatch_is_listed(tmp_path):
    root = make_tree(tmp_path / "tree", classes_test=("cat", "bird"))
    with pytest.raises(DataError, match=r"only in train: \['dog'\]; only in test: \['bird'\]"):
        data.build({"source": "imagefolder", "path": str(root), "image_size": 8})


def test_imagefolder_unreadable_images_are_listed(tmp_path):
    root = make_tree(tmp_path / "tree")
    (root / "train" / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"broken\.png"):
        data.build({"source": "imagefolder", "path": str(root), "image_size": 8})


def test_imagefolder_missing_split(tmp_path):
    (tmp_path / "tree" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"/tree/test: missing; an imagefolder dataset needs "):
        data.build({"source": "imagefolder", "path": str(tmp_path / "tree"), "image_size": 8})


def test_prepared_round_trip(tmp_path, digits8):
    data.prepare(spec={"source": "digits"}, out=tmp_path / "d.pt")
    loaded = data.load(tmp_path / "d.pt")
    assert torch.equal(loaded.train_images, digits8.train_images) and loaded.classes == digits8.classes


def test_truncated_artifact_names_the_file(tmp_path):
    data.prepare(spec={"source": "digits"}, out=tmp_path / "d.pt")
    blob = (tmp_path / "d.pt").read_bytes()
    (tmp_path / "d.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ArtifactError, match=r"d\.pt: truncated or corrupted"):
        data.load(tmp_path / "d.pt")


class Planted:
    def __reduce__(self):
        return (print, ("this ran",))


def test_planted_pickle_is_refused(tmp_path, capsys):
    torch.save({"train_images": Planted()}, tmp_path / "evil.pt")
    with pytest.raises(ArtifactError, match=r"evil\.pt: refused to load: it holds more than tensors"):
        data.load(tmp_path / "evil.pt")
    assert "this ran" not in capsys.readouterr().out
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(Planted()))
    with pytest.raises(ArtifactError):
        data.load(tmp_path / "raw.pt")
    assert "this ran" not in capsys.readouterr().out


def test_digits_subset_keeps_the_first_images_of_each_class(digits8):
    spec = {"source": "digits", "train_per_class": 20, "test_per_class": 5}
    ds = data.build(spec)
    assert torch.bincount(ds.train_labels).tolist() == [20] * 10
    assert torch.bincount(ds.test_labels).tolist() == [5] * 10
    for c in range(10):
        first = torch.nonzero(digits8.train_labels == c).flatten()[:20]
        assert torch.equal(ds.train_images[ds.train_labels == c], digits8.train_images[first])
    # The kept images stay in dataset order, and the dry-run facts count what the subset holds.
    kept = [
        i
        for i in range(len(digits8.train_labels))
        if i in set(sources.first_per_class(digits8.train_labels.tolist(), 20))
    ]
    assert torch.equal(ds.train_labels, digits8.train_labels[kept])
    facts = sources.facts(spec)
    assert facts.train_class_sizes == (20,) * 10 and facts.num_test == 50


@pytest.mark.parametrize("storage", ["memory", "stream"])
def test_imagefolder_subset_decodes_each_class_first_files(tmp_path, storage):
    root = make_tree(tmp_path / "tree", per_class=3)
    spec = {"source": "imagefolder", "path": str(root), "image_size": 8}
    full = data.build(spec)
    subset_spec = {**spec, "train_per_class": 2, "test_per_class": 1, "storage": storage}
    data.prepare(spec=subset_spec, out=tmp_path / "d.pt")
    ds = data.load(tmp_path / "d.pt")
    assert ds.train_labels.tolist() == [0, 0, 1, 1] and ds.test_labels.tolist() == [0, 1]
    assert torch.equal(ds.train_images[[0, 1, 2, 3]], full.train_images[[0, 1, 3, 4]])
    assert torch.equal(ds.test_images[[0, 1]], full.test_images[[0, 3]])
    facts = sources.facts(subset_spec)
    assert facts.train_class_sizes == (2, 2) and facts.num_test == 2


def test_cifar_subset_keeps_the_first_images_of_each_class(tmp_path, monkeypatch):
    """torchvision's CIFAR-10 on small fake batch files: the first N of each class in its order."""
    from torchvision.datasets import CIFAR10

    folder = tmp_path / "cifar" / CIFAR10.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, _ in CIFAR10.train_list + CIFAR10.test_list:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [3, 1, 3, 0]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / CIFAR10.meta["filename"]).write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)  # fake batches, fake md5s
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kw: True)
    spec = {"source": "cifar10", "root": str(tmp_path / "cifar")}
    full = data.build(spec)
    ds = data.build({**spec, "train_per_class": 3, "test_per_class": 1})
    keep = [0, 1, 2, 3, 4, 5, 7, 9, 11]  # labels 3 1 3 0 3 1 3 0 3 1 3 0 ...: the first three 3s, 1s and 0s
    assert ds.train_labels.tolist() == full.train_labels[keep].tolist() == [3, 1, 3, 0, 3, 1, 0, 1, 0]
    assert torch.equal(ds.train_images, full.train_images[keep])
    assert ds.test_labels.tolist() == [3, 1, 0]
    assert sources.facts({**spec, "train_per_class": 3}).train_class_sizes == (3,) * 10


def test_a_subset_larger_than_a_class_is_refused_naming_the_key():
    with pytest.raises(
        ConfigError, match=r"data\.train_per_class: 500 images of each class, but class \d+ of 'digits' has only"
    ):
        sources.facts({"source": "digits", "train_per_class": 500})
    with pytest.raises(ConfigError, match=r"data\.test_per_class: 2000 .* has only 1000"):
        sources.facts({"source": "cifar10", "test_per_class": 2000})


def make_square_tree(root, size, per_class=2):
    rng = np.random.default_rng(1)
    pixels = {}
    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                array = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(array).save(root / split / name / f"{i}.png")
                pixels[(split, name, i)] = array
    return root, pixels


@pytest.mark.parametrize("storage", ["memory", "stream"])
def test_resize_none_takes_images_that_have_the_size_as_they_are(tmp_path, storage):
    root, pixels = make_square_tree(tmp_path / "tree", 8)
    spec = {"source": "imagefolder", "path": str(root), "image_size": 8, "storage": storage}
    data.prepare(spec={**spec, "resize": "none"}, out=tmp_path / "none.pt")
    data.prepare(spec=spec, out=tmp_path / "imagenet.pt")
    exact, resized = data.load(tmp_path / "none.pt"), data.load(tmp_path / "imagenet.pt")
    first = torch.from_numpy(pixels[("train", "a", 0)]).permute(2, 0, 1)
    assert torch.equal(exact.train_images[0], first) and torch.equal(exact.test_images[[0]][0], exact.test_images[0])
    assert not torch.equal(resized.train_images[0], first)  # forest's resize and crop blur a 32 px image


def test_resize_none_refuses_an_image_of_another_size_naming_it(tmp_path):
    root, _ = make_square_tree(tmp_path / "tree", 8)
    Image.fromarray(np.zeros((9, 8, 3), dtype=np.uint8)).save(root / "train" / "b" / "odd.png")
    spec = {"source": "imagefolder", "path": str(root), "image_size": 8, "resize": "none"}
    with pytest.raises(DataError, match=r"odd\.png: 8x9 pixels, but data\.resize: none"):
        data.build(spec)
    with pytest.raises(ConfigError, match=r"data\.resize: applies to imagefolder"):
        sources.check({"source": "digits", "image_size": 16, "resize": "none"})


def test_subsets_and_decodings_get_artifacts_of_their_own():
    base = {"source": "imagefolder", "path": "x", "image_size": 32}
    names = {
        sources.dataset_name(sources.check(spec))
        for spec in (base, {**base, "resize": "none"}, {**base, "train_per_class": 500}, {**base, "test_per_class": 50})
    }
    assert len(names) == 4
