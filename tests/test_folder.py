"""data=folder: a user's own images in every common format, the two layouts, the test split, ids, skipping
bad files, the fingerprint, and one clear line for each bad folder."""

from __future__ import annotations

import numpy as np
import pytest

from tlsweep.errors import ConfigError, DataError
from tlsweep.stages.data import datasets, folder
from tlsweep.tracking.names import Status
from tlsweep.validate import validate

# every format and mode data=folder reads (JPEG holds no palette or alpha; GIF holds palettes only)
KINDS = (("png", "RGB"), ("png", "L"), ("png", "P"), ("png", "RGBA"), ("png", "I;16"), ("jpg", "RGB"),
         ("jpeg", "L"), ("JPG", "RGB"), ("bmp", "RGB"), ("bmp", "P"), ("gif", "P"), ("gif", "L"))
SIZES = ((32, 32), (20, 20), (48, 40), (17, 33))
COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "eel": (40, 40, 200)}  # conftest's FOLDER_COLOURS
GRAY = {"L", "I;16"}


def _folder(compose, path, *overrides):
    return compose(["data=folder", f"data.path={path}", "model.weights=null", *overrides])


def _load(path, image_size=None, test_fraction=0.2, skip_bad_images=False):
    return datasets.load_dataset(name="folder", path=str(path), image_size=image_size, test_fraction=test_fraction,
                             skip_bad_images=skip_bad_images)


def test_every_format_and_mode_is_read_as_rgb_at_image_size(tmp_path, image_folder_writer):
    root = image_folder_writer(tmp_path / "imgs", per_class=len(KINDS), kinds=KINDS, sizes=SIZES)
    dataset = _load(root, image_size=24, test_fraction=0.25)
    assert dataset.class_names == ("cat", "dog", "eel")
    assert dataset.train.images.shape == (27, 24, 24, 3) and dataset.test.images.shape == (9, 24, 24, 3)
    assert dataset.train.images.dtype == np.uint8
    ids = dataset.train.ids + dataset.test.ids
    assert sorted(ids) == sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*"))
    kinds = dict(zip((f"{i:02d}" for i in range(len(KINDS))), KINDS))
    for part in (dataset.train, dataset.test):
        assert len(part.ids) == len(part.images) == len(part.labels)
        for image_id, image, label in zip(part.ids, part.images, part.labels):
            name, stem = image_id.split("/")[0], image_id.split("/")[1].split(".")[0]
            assert dataset.class_names[label] == name  # the label is the class folder
            mean = image.reshape(-1, 3).mean(axis=0)
            if kinds[stem][1] in GRAY:  # gray stays gray, and 16-bit is scaled, not clipped to white
                assert np.ptp(mean) < 1 and abs(mean[0] - np.dot(COLOURS[name], [0.299, 0.587, 0.114])) < 12
            else:  # the image's own colour, whatever its format: ids and images stay in step
                np.testing.assert_allclose(mean, COLOURS[name], atol=25)


def test_image_size_is_required_unless_all_images_share_one_square_size(tmp_path, image_folder_writer, compose):
    same = image_folder_writer(tmp_path / "same", sizes=((20, 20),))
    assert _load(same).train.images.shape[1:] == (20, 20, 3)
    assert validate(_folder(compose, same, "model=vgg16", "data.image_size=32")).data.image_size == 32

    mixed = image_folder_writer(tmp_path / "mixed", sizes=((32, 32), (48, 40)))
    with pytest.raises(ConfigError, match=r"data.image_size is required .* differ in size \('cat/\d\d.png' is "
                                          r"(32x32|48x40), 'cat/\d\d.png' is (32x32|48x40)\); set data.image_size=SIZE"):
        _load(mixed)
    with pytest.raises(ConfigError) as err:  # found by validation, from the headers, before any run
        validate(_folder(compose, mixed))
    assert "differ in size ('cat/00.png' is 32x32, 'cat/01.png' is 48x40)" in str(err.value)
    assert _load(mixed, image_size=16).train.images.shape[1:] == (16, 16, 3)

    oblong = image_folder_writer(tmp_path / "oblong", sizes=((40, 30),))
    with pytest.raises(ConfigError, match="are 40x30, not square; set data.image_size=SIZE"):
        _load(oblong)


def test_files_that_are_not_images_are_ignored(tmp_path, image_folder_writer, image_saver):
    root = image_folder_writer(tmp_path / "imgs", classes=("cat", "dog"))
    pixels = np.zeros((32, 32, 3), np.uint8)
    (root / "cat" / ".DS_Store").write_bytes(b"\x00\x01Bud1")
    (root / "dog" / "README.txt").write_text("not an image")
    (root / "README.txt").write_text("notes")
    (root / "cat" / "._00.png").write_bytes(b"AppleDouble")  # macOS resource fork: hidden
    image_saver(pixels, root / "dog" / ".hidden.png")
    image_saver(pixels, root / ".git" / "objects" / "x.png")  # hidden folder: not a class
    image_saver(pixels, root / "__MACOSX" / "cat" / "00.png")
    image_saver(pixels, root / "cat" / "nested" / "deep.png")  # nested folders inside a class are read
    dataset = _load(root)
    assert dataset.class_names == ("cat", "dog")
    ids = set(dataset.train.ids + dataset.test.ids)
    assert len(ids) == 13 and "cat/nested/deep.png" in ids
    assert not {i for i in ids if "/." in i or i.startswith((".", "__MACOSX")) or not i.endswith(".png")}


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_an_undecodable_image_stops_with_one_line_naming_it_or_is_skipped(tmp_path, image_folder_writer, damage):
    root = image_folder_writer(tmp_path / "imgs", kinds=(("png", "RGB"), ("jpg", "RGB")))
    bad = root / "dog" / "01.jpg"
    blob = bad.read_bytes()
    bad.write_bytes({"garbage": b"this is not a jpeg" * 10, "truncated": blob[: len(blob) // 3], "empty": b""}[damage])
    with pytest.raises(DataError) as err:
        _load(root)
    message = str(err.value)
    assert "'dog/01.jpg' is not a readable image" in message and "data.skip_bad_images=true" in message
    assert "\n" not in message
    dataset = _load(root, skip_bad_images=True)
    assert [skipped.id for skipped in dataset.skipped] == ["dog/01.jpg"] and dataset.skipped[0].reason
    assert "dog/01.jpg" not in dataset.train.ids + dataset.test.ids
    assert len(dataset.train.ids) + len(dataset.test.ids) == 17


def test_a_bad_image_stops_the_run_before_the_cnn(isolated, image_folder_writer, compose, experiment_runs):
    from mlflow.tracking import MlflowClient

    from tlsweep.job import run

    root = image_folder_writer(isolated / "imgs")
    (root / "eel" / "03.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match="'eel/03.png' is not a readable image"):
        run(_folder(compose, root, "model.batch_size=16"))
    (failed,) = experiment_runs(MlflowClient())
    assert failed.info.status == Status.FAILED and "cnn_forward_images" not in failed.data.metrics
    assert not list((isolated / "cache").rglob("*.npy"))  # no feature was computed


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("empty_class", "class folder 'dog' holds no images"),
    ("single_class", "holds one class folder, 'cat'; expected one subfolder per class, at least two"),
    ("no_class", "holds no class folder"),
    ("missing_in_test", r"train/ and test/ should hold the same class folders; test/ lacks \['eel'\]"),
    ("empty_in_test", "class folder 'test/dog' holds no images"),
    ("extra_split", r"holds train/ and test/ and also \['val'\]"),
    ("train_only", r"holds one class folder, 'train' \(a split layout needs both train/ and test/\)"),
])
def test_a_bad_folder_is_one_line_before_any_run(tmp_path, image_folder_writer, compose, layout, message):
    root = tmp_path / "imgs"
    if layout == "empty_class":
        image_folder_writer(root, classes=("cat", "eel"))
        (root / "dog").mkdir()
        (root / "dog" / ".DS_Store").write_bytes(b"\x00")
    elif layout == "single_class":
        image_folder_writer(root, classes=("cat",))
    elif layout == "no_class":
        root.mkdir()
        (root / "a.png").write_bytes(b"")
    elif layout in ("missing_in_test", "empty_in_test", "extra_split", "train_only"):
        image_folder_writer(root / "train")
        if layout != "train_only":
            image_folder_writer(root / "test", classes=("cat", "dog") if layout == "missing_in_test" else COLOURS)
        if layout == "empty_in_test":
            for path in (root / "test" / "dog").iterdir():
                path.unlink()
        if layout == "extra_split":
            image_folder_writer(root / "val")
    with pytest.raises(DataError, match=message) as err:
        validate(_folder(compose, root))
    assert "\n" not in str(err.value) and "data.path=" in str(err.value)


def test_train_and_test_folders_are_the_splits(tmp_path, image_folder_writer):
    root = tmp_path / "imgs"
    image_folder_writer(root / "train", per_class=5, seed=1)
    image_folder_writer(root / "test", per_class=2, seed=2)
    dataset = _load(root, test_fraction=0.5)  # ignored: the folders are the splits
    assert len(dataset.train.ids) == 15 and all(i.startswith("train/") for i in dataset.train.ids)
    assert len(dataset.test.ids) == 6 and all(i.startswith("test/") for i in dataset.test.ids)
    assert dataset.class_names == ("cat", "dog", "eel")
    assert np.bincount(dataset.test.labels).tolist() == [2, 2, 2]
    assert dataset.test.ids[:2] == ("test/cat/00.png", "test/cat/01.png")


def test_without_test_folder_a_fixed_stratified_test_split_is_drawn(tmp_path, image_folder_writer, compose):
    root = image_folder_writer(tmp_path / "imgs", per_class=10)
    first = _load(root, test_fraction=0.3)
    assert np.bincount(first.test.labels).tolist() == [3, 3, 3] and np.bincount(first.train.labels).tolist() == [7] * 3
    assert not set(first.train.ids) & set(first.test.ids)
    again = _load(root, test_fraction=0.3)
    assert again.test.ids == first.test.ids and again.fingerprint == first.fingerprint
    assert _load(root, test_fraction=0.5).test.ids != first.test.ids
    with pytest.raises(ConfigError, match=r"data.test_fraction should lie in \[0.1, 0.9\] .* class 'cat' has 10"):
        validate(_folder(compose, root, "data.test_fraction=0.05"))
    with pytest.raises(ConfigError, match=r"open interval \(0, 1\)"):
        validate(_folder(compose, root, "data.test_fraction=1.0"))


def test_changing_one_image_changes_the_fingerprint_and_misses_the_cache(tmp_path, image_folder_writer, image_saver,
                                                                           extract):
    root = image_folder_writer(tmp_path / "imgs", classes=("cat", "dog"), per_class=5)
    before = _load(root)
    assert _load(root).fingerprint == before.fingerprint
    assert extract(before, tmp_path / "c", classes=(0, 1)).cnn_images == 8
    assert extract(_load(root), tmp_path / "c", classes=(0, 1)).cnn_images == 0  # same files: a cache hit

    image_saver(np.full((32, 32, 3), 7, np.uint8), root / "dog" / "03.png")  # one image, same name and size
    after = _load(root)
    assert after.fingerprint != before.fingerprint
    assert extract(after, tmp_path / "c", classes=(0, 1)).cnn_images == 8  # the features are computed again

    (root / "dog" / "03.png").rename(root / "dog" / "09.png")  # same bytes, another file list
    assert _load(root).fingerprint not in (before.fingerprint, after.fingerprint)


def test_folder_classes_default_to_every_class_folder(tmp_path, image_folder_writer, compose):
    root = image_folder_writer(tmp_path / "imgs")
    cfg = _folder(compose, root)
    assert cfg.data.classes is None  # composition lists no folder: the check does
    assert validate(cfg).data.classes == [0, 1, 2]
    assert _folder(compose, tmp_path / "not-yet").data.classes is None  # nor looks for one
    assert list(_folder(compose, root, "data.classes=[0,2]").data.classes) == [0, 2]
    assert datasets.describe_classes("folder", [0, 2], str(root)) == "cat,eel"
    with pytest.raises(ConfigError, match=r"data.classes should hold integers 0..2; received data.classes=\[0, 3\]"):
        validate(_folder(compose, root, "data.classes=[0,3]"))
    with pytest.raises(ConfigError, match="data.path should be a folder .* received data.path=None"):
        validate(compose(["data=folder", "model.weights=null"]))
    assert list(compose().data.classes) == [4, 5, 6, 7, 8, 9]  # CIFAR-10's default subset stays


def test_class_folder_names_never_raise(tmp_path):
    assert folder.class_folder_names(str(tmp_path / "nope")) == ()
    assert folder.class_folder_names(None) == ()
