"""The CIFAR-10 loader on genuine-format files, the digits stand-in, class subsets and the split."""

from __future__ import annotations

import numpy as np
import pytest

from tlsweep.errors import ConfigError, DataError
from tlsweep.stages.data import datasets
from tlsweep.validate import validate, validate_classes


@pytest.mark.parametrize("form", ["archive", "folder", "parent_folder"])
def test_cifar10_loads_archive_and_extracted_folder(tmp_path, cifar_writer, cifar_archive_writer, form):
    if form == "archive":
        path = cifar_archive_writer(tmp_path, train_per_class_per_batch=3, test_per_class=2)
    else:
        path = cifar_writer(tmp_path, train_per_class_per_batch=3, test_per_class=2)
        path = path.parent if form == "parent_folder" else path
    dataset = datasets.load_dataset(name="cifar10", path=str(path))
    assert dataset.train.images.shape == (150, 32, 32, 3) and dataset.train.images.dtype == np.uint8
    assert dataset.test.images.shape == (20, 32, 32, 3)
    assert np.bincount(dataset.train.labels).tolist() == [15] * 10
    assert dataset.class_names[4:] == ("deer", "dog", "frog", "horse", "ship", "truck")


def test_archive_and_folder_decode_to_the_same_images(tmp_path, cifar_writer, cifar_archive_writer):
    archive = cifar_archive_writer(tmp_path / "a", seed=3)
    folder = cifar_writer(tmp_path / "b", seed=3)
    from_archive = datasets.load_dataset(name="cifar10", path=str(archive))
    from_folder = datasets.load_dataset(name="cifar10", path=str(folder))
    np.testing.assert_array_equal(from_archive.train.images, from_folder.train.images)
    assert from_archive.fingerprint == from_folder.fingerprint


def test_cifar_rows_decode_channel_planes_to_hwc(tmp_path, cifar_writer):
    """The format stores 1024 red, then 1024 green, then 1024 blue values per row."""
    folder = cifar_writer(tmp_path)
    import pickle

    first = pickle.loads((folder / "data_batch_1").read_bytes(), encoding="bytes")
    image = datasets.load_dataset(name="cifar10", path=str(folder)).train.images[0]
    row = np.asarray(first[b"data"][0])
    np.testing.assert_array_equal(image[..., 0].ravel(), row[:1024])
    np.testing.assert_array_equal(image[..., 2].ravel(), row[2048:])


def test_digits_are_real_images_with_a_fixed_split():
    first = datasets.load_dataset(name="digits", path=None)
    second = datasets.load_dataset(name="digits", path=None)
    assert first.train.images.shape[1:] == (8, 8, 3) and first.train.images.max() == 255
    assert len(first.train.labels) + len(first.test.labels) == 1797
    assert first.fingerprint == second.fingerprint


def test_original_study_split_sizes_and_stratification():
    labels = np.repeat(np.arange(4, 10), 5000)  # the original study's 30000 training images of classes 4-9
    train, val = datasets.split_train_val(labels, val_fraction=0.2, seed=0)
    assert (len(train), len(val)) == (24000, 6000)
    assert not set(train) & set(val)
    assert np.bincount(labels[val], minlength=10)[4:].tolist() == [1000] * 6
    again, _ = datasets.split_train_val(labels, val_fraction=0.2, seed=0)
    other, _ = datasets.split_train_val(labels, val_fraction=0.2, seed=1)
    np.testing.assert_array_equal(train, again)
    assert not np.array_equal(train, other)


@pytest.mark.parametrize(
    "classes, message",
    [
        ([4, 10], "out of range"),
        ([-1, 2], "out of range"),
        ([3, 3, 4], "repeat"),
        ([5], "at least two"),
    ],
)
def test_bad_class_subsets(classes, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate_classes(classes, datasets.CIFAR10_CLASSES)
    assert f"data.classes={classes}" in str(err.value)


HUNDRED = ",".join(f"class_{i:03d}" for i in range(100))


@pytest.mark.parametrize("classes, shown", [
    ("deer,dog,frog", "deer,dog,frog"),
    (",".join(datasets.CIFAR10_CLASSES), ",".join(datasets.CIFAR10_CLASSES)),  # 60 characters: whole
    (HUNDRED, "class_000,class_001,class_002,class_003,class_004,…,class_099"),
    ("x" * 80 + ",b", "x" * 59 + "…"),  # no whole class fits before the last
    ("ab," * 17 + "abcdefghij,zz", "ab,ab,ab,ab,ab,ab,ab,ab,ab,ab,ab,ab,ab,ab,ab,ab,ab,…,zz"),  # ends on a whole name
    (",".join(["long_class_name"] * 3 + ["short"] * 9), "long_class_name," * 3 + "short,…,short"),
])
def test_a_long_class_list_is_shown_by_its_first_classes_and_its_last(classes, shown):
    assert datasets.brief_classes(classes) == shown
    assert len(datasets.brief_classes(classes)) <= datasets.CLASSES_SHOWN + 1  # the ellipsis is one character
    assert datasets.brief_classes(classes, ellipsis="...") == shown.replace("…", "...")


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5])
def test_val_fraction_outside_open_interval(compose, fraction):
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        validate(compose([f"data.val_fraction={fraction}"]))


def test_val_fraction_leaving_a_class_without_val_images():
    with pytest.raises(ConfigError, match="no val"):
        datasets.split_train_val(np.repeat(np.arange(2), 4), val_fraction=0.1, seed=0)


def test_missing_and_foreign_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        datasets.load_dataset(name="cifar10", path=str(tmp_path / "nope.tar.gz"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a readable CIFAR-10 archive"):
        datasets.load_dataset(name="cifar10", path=str(tmp_path / "notes.txt"))
    with pytest.raises(DataError, match="missing"):
        datasets.load_dataset(name="cifar10", path=str(tmp_path))
