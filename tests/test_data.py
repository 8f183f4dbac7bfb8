"""Data sources and safe artifact loading."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from augdefense import data
from augdefense.errors import ArtifactError, DataError


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
