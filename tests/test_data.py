"""Tests for srel.data: class subsets from every source, error messages, transforms, loaders."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
from PIL import Image
from sklearn.datasets import load_digits

from srel import data
from srel.io import REPO_ROOT

SHARED_CIFAR10 = REPO_ROOT.parent / "shared" / "data" / "cifar10"


def _bilinear_upsample(img: np.ndarray, size: int) -> np.ndarray:
    """Naive float64 bilinear resize (half-pixel centres, edge clamped), one output at a time."""
    h, w = img.shape
    out = np.empty((size, size))
    for i in range(size):
        for j in range(size):
            y = max((i + 0.5) * h / size - 0.5, 0.0)
            x = max((j + 0.5) * w / size - 0.5, 0.0)
            y0, x0 = min(int(y), h - 1), min(int(x), w - 1)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = ((1 - dy) * (1 - dx) * img[y0, x0] + (1 - dy) * dx * img[y0, x1]
                         + dy * (1 - dx) * img[y1, x0] + dy * dx * img[y1, x1])
    return out


def _write_png(path: Path, rgb) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(path)


def _fake_cifar10(root: Path, per_batch: int = 4) -> dict:
    """Tiny cifar-10-batches-py: random pixels; train labels cycle 0..9, test labels 9, 1, 1, 0."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        images = rng.integers(0, 256, size=(per_batch, 3, 32, 32), dtype=np.uint8)
        labels = [(b * per_batch + k) % 10 for k in range(per_batch)]
        if name == "test_batch":
            labels = [9, 1, 1, 0]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images.reshape(per_batch, 3072), "labels": labels}, f)
        arrays[name] = (images, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(data.CIFAR10_CLASSES)}, f)
    return arrays


# ---------------------------------------------------------------- registry and digits

def test_registry_has_paper_defaults():
    """Default classes, counts and batch sizes are the paper's."""
    c10, c100 = data.DATASETS["cifar10"], data.DATASETS["cifar100"]
    assert (c10.default_classes, c10.train_per_class, c10.test_per_class, c10.batch_size) == (
        ("airplane", "automobile", "ship"), 5000, 1000, 256)
    assert (c100.train_per_class, c100.test_per_class, c100.batch_size) == (500, 100, 25)
    assert [data.CIFAR100_CLASSES.index(n) for n in c100.default_classes] == [48, 53, 94]
    assert len(data.CIFAR100_CLASSES) == 100 and list(data.CIFAR100_CLASSES) == sorted(
        data.CIFAR100_CLASSES)
    assert data.DATASETS["svhn"].default_classes == ("0", "2", "4")
    assert data.DATASETS["digits"].batch_size == 32


def test_digits_default_shapes_dtypes_labels():
    """Defaults: 3 classes x 140 train and x 30 test, uint8 32x32 RGB, labels grouped 0, 1, 2."""
    s = data.load_class_subset("digits")
    assert s.class_names == ("0", "2", "4") and s.source == "scikit-learn digits"
    assert s.train_images.shape == (420, 3, 32, 32) and s.train_images.dtype == torch.uint8
    assert s.test_images.shape == (90, 3, 32, 32) and s.test_labels.dtype == torch.int64
    assert s.train_labels.tolist() == [0] * 140 + [1] * 140 + [2] * 140
    assert torch.equal(s.train_images[:, 0], s.train_images[:, 2])  # grey replicated


def test_digits_relabelling_and_pixels_match_sklearn():
    """classes=[4, 0]: label 0 holds the first digit-4 images, built independently from sklearn."""
    s = data.load_class_subset("digits", classes=[4, "0"], train_per_class=3, test_per_class=2)
    assert s.class_names == ("4", "0") and s.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    digits = load_digits()
    fours = np.flatnonzero(digits.target == 4)
    zeros = np.flatnonzero(digits.target == 0)
    expected_idx = {(0, "train"): fours[:3], (1, "train"): zeros[:3],
                    (0, "test"): fours[140:142], (1, "test"): zeros[140:142]}
    for (label, split), idx in expected_idx.items():
        images = getattr(s, f"{split}_images")[getattr(s, f"{split}_labels") == label]
        for got, k in zip(images, idx):
            scaled = np.round(digits.images[k] * 255.0 / 16.0)
            want = np.clip(np.round(_bilinear_upsample(scaled, 32)), 0, 255)
            assert np.abs(got[1].numpy().astype(float) - want).max() <= 1  # float32 vs 64 rounding


def test_digits_all_counts():
    """'all' takes the whole 140-image train pool and the rest of the class as test."""
    s = data.load_class_subset("digits", classes=[8, 3], train_per_class="all",
                               test_per_class="all")
    assert s.train_labels.bincount().tolist() == [140, 140]
    assert s.test_labels.bincount().tolist() == [174 - 140, 183 - 140]


# ---------------------------------------------------------------- ImageFolder and torchvision files

def test_imagefolder_tree(tmp_path):
    """PNG tree: files sorted by name, integer labels mapped via official names, exact pixels."""
    for split in ("train", "test"):
        for label, name in ((0, "airplane"), (8, "ship")):
            for k, fname in enumerate(["b.png", "a.png", "c.png"]):
                pixel = [label, k, 100 if split == "train" else 200]
                _write_png(tmp_path / split / name / fname, np.full((32, 32, 3), pixel))
    _write_png(tmp_path / "train" / "ship" / "a.png", np.full((32, 32, 3), [8, 1, 7]))
    s = data.load_class_subset("cifar10", classes=["ship", 0], train_per_class=2,
                               test_per_class="all", data_root=tmp_path)
    assert s.source == f"ImageFolder {tmp_path}" and s.class_names == ("ship", "airplane")
    assert s.train_labels.tolist() == [0, 0, 1, 1] and s.test_labels.tolist() == [0] * 3 + [1] * 3
    assert s.train_images[0, :, 0, 0].tolist() == [8, 1, 7]  # ship/a.png comes first
    assert s.train_images[1, :, 5, 9].tolist() == [8, 0, 100]  # then ship/b.png
    assert s.train_images[2, :, 31, 31].tolist() == [0, 1, 100]  # airplane/a.png
    assert s.test_images[5, :, 3, 3].tolist() == [0, 2, 200]


def test_imagefolder_under_dataset_subfolder(tmp_path):
    """data_root/<dataset>/{train,test} is found too."""
    for split in ("train", "test"):
        for name in ("3", "7"):
            _write_png(tmp_path / "svhn" / split / name / "0.png", np.zeros((32, 32, 3)))
    s = data.load_class_subset("svhn", classes=[7, 3], train_per_class=1, test_per_class=1,
                               data_root=tmp_path)
    assert s.source == f"ImageFolder {tmp_path / 'svhn'}" and s.class_names == ("7", "3")


def test_torchvision_cifar10_files(tmp_path, monkeypatch):
    """A fake cifar-10-batches-py loads through torchvision with its md5 check replaced."""
    arrays = _fake_cifar10(tmp_path)
    # NOTE: torchvision's CIFAR10 always checks the md5 of the official files and has no switch
    # to skip it, so the fake files pass only with check_integrity reduced to "file exists".
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    s = data.load_class_subset("cifar10", classes=["truck", 1], train_per_class="all",
                               test_per_class=1, data_root=tmp_path)
    assert s.source == f"torchvision files under {tmp_path}"
    train = np.concatenate([arrays[f"data_batch_{k}"][0] for k in range(1, 6)])  # (20, 3, 32, 32)
    labels = sum((arrays[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    want = [i for i in range(20) if labels[i] == 9] + [i for i in range(20) if labels[i] == 1]
    assert s.train_labels.tolist() == [0, 0, 1, 1]
    assert np.array_equal(s.train_images.numpy(), train[want])
    test_images = arrays["test_batch"][0]
    assert s.test_labels.tolist() == [0, 1]
    assert np.array_equal(s.test_images.numpy(), test_images[[0, 1]])
    with pytest.raises(ValueError, match="test: class 'bird' has no examples"):
        data.load_class_subset("cifar10", classes=[1, 2], train_per_class=1, test_per_class=1,
                               data_root=tmp_path)


def test_torchvision_svhn_files(tmp_path, monkeypatch):
    """SVHN .mat files: HWCN arrays become NCHW and the stored label 10 (digit 0) becomes 0."""
    import scipy.io
    import torchvision.datasets.svhn as tv_svhn

    rng = np.random.default_rng(1)
    stored = {}
    for split, y in (("train", [10, 3, 10, 5, 3]), ("test", [3, 10])):
        x = rng.integers(0, 256, size=(32, 32, 3, len(y)), dtype=np.uint8)  # SVHN's (H, W, C, N)
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": np.array(y)[:, None]})
        stored[split] = x
    monkeypatch.setattr(tv_svhn, "check_integrity", lambda path, md5=None: Path(path).is_file())
    s = data.load_class_subset("svhn", classes=["0", 3], train_per_class=2, test_per_class=1,
                               data_root=tmp_path)
    assert s.source == f"torchvision files under {tmp_path}" and s.class_names == ("0", "3")
    assert s.train_labels.tolist() == [0, 0, 1, 1]
    nchw = {k: np.einsum("hwcn->nchw", x) for k, x in stored.items()}
    assert np.array_equal(s.train_images.numpy(), nchw["train"][[0, 2, 1, 4]])
    assert np.array_equal(s.test_images.numpy(), nchw["test"][[1, 0]])


def test_torchvision_files_failing_md5_raise(tmp_path):
    """Without the patch torchvision rejects the fake files; the error says what to do."""
    _fake_cifar10(tmp_path)
    with pytest.raises(RuntimeError, match="md5.*download=True"):
        data.load_class_subset("cifar10", train_per_class=1, test_per_class=1, data_root=tmp_path)


@pytest.mark.skipif(not SHARED_CIFAR10.is_dir(), reason="shared CIFAR-10 samples absent")
def test_shared_cifar10_samples():
    """Shared PNG sample: first train files follow the official label order, pixels are exact."""
    s = data.load_class_subset("cifar10", train_per_class=10, test_per_class=5,
                               data_root=SHARED_CIFAR10)
    assert s.train_images.shape == (30, 3, 32, 32) and s.test_images.shape == (15, 3, 32, 32)
    # official data_batch_1 labels start 6 9 9 4 1 1 2 7 8 3: first automobile is image 4, first
    # ship image 8 (train[0] is a frog, so its known pixel [59, 62, 63] is not in the sample).
    assert sorted((SHARED_CIFAR10 / "train" / "automobile").glob("*.png"))[0].name == "00004.png"
    assert sorted((SHARED_CIFAR10 / "train" / "ship").glob("*.png"))[0].name == "00008.png"
    for label, name in ((1, "automobile"), (2, "ship")):
        first = sorted((SHARED_CIFAR10 / "train" / name).glob("*.png"))[0]
        want = np.asarray(Image.open(first).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(s.train_images[s.train_labels == label][0].numpy(), want)
    every = data.load_class_subset("cifar10", train_per_class="all", test_per_class="all",
                                   data_root=SHARED_CIFAR10)
    assert every.train_labels.bincount().tolist() == [396, 366, 407]  # counts in the README
    assert every.test_labels.bincount().tolist() == [103, 89, 106]


# ---------------------------------------------------------------- errors

def test_missing_dataset_message(tmp_path):
    """Nothing on disk and no download: names dataset, root, layouts and the two ways to fix."""
    with pytest.raises(FileNotFoundError) as err:
        data.load_class_subset("cifar100", data_root=tmp_path)
    msg = str(err.value)
    for part in ("'cifar100'", str(tmp_path), "cifar-100-python/train", "ImageFolder",
                 "download=True", "data_root="):
        assert part in msg


def test_relative_data_root_is_under_repository():
    """A relative data_root is resolved against the repository root, not the working directory."""
    with pytest.raises(FileNotFoundError, match=str(REPO_ROOT / "no_such_data_dir")):
        data.load_class_subset("cifar100", data_root="no_such_data_dir")


def test_failed_download_message(tmp_path, monkeypatch):
    """A download that cannot reach the server becomes FileNotFoundError with the fixes."""
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(FileNotFoundError, match="cifar10.*download failed.*data_root="):
        data.load_class_subset("cifar10", data_root=tmp_path, download=True)


def test_missing_class_folder(tmp_path):
    """ImageFolder tree without the requested class folder names that class."""
    for split in ("train", "test"):
        _write_png(tmp_path / split / "airplane" / "0.png", np.zeros((32, 32, 3)))
    with pytest.raises(FileNotFoundError, match="'ship' is missing"):
        data.load_class_subset("cifar10", classes=[0, 8], train_per_class=1, test_per_class=1,
                               data_root=tmp_path)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"dataset": "mnist"}, "unknown dataset 'mnist'.*cifar10, cifar100, svhn, digits"),
    ({"classes": ["0", "eleven"]}, "unknown class 'eleven'.*0, 1, 2"),
    ({"classes": [0, 10]}, "label 10 out of range.*0..9"),
    ({"classes": [2, "2"]}, "duplicate classes"),
    ({"classes": [3]}, "at least 2 classes"),
    ({"classes": "0"}, "must be a list"),
    ({"classes": {"0", "2"}}, "must be a list"),  # a set has no order to relabel by
    ({"classes": {0: "a", 2: "b"}}, "must be a list"),
    ({"train_per_class": 0}, "train_per_class must be a positive integer or 'all', got 0"),
    ({"test_per_class": -3}, "test_per_class must be a positive integer"),
    ({"test_per_class": 2.5}, "test_per_class must be a positive integer"),
    ({"train_per_class": 141}, "only 140 examples.*train_per_class='all' or a number <= 140"),
    ({"classes": [8, 0], "test_per_class": 35}, "class '8' has only 34 examples"),
])
def test_bad_arguments(kwargs, pattern):
    """Each bad argument raises one ValueError saying what was wrong and what is valid."""
    kwargs = {"dataset": "digits", **kwargs}
    with pytest.raises(ValueError, match=pattern):
        data.load_class_subset(**kwargs)


def test_count_too_large_in_imagefolder(tmp_path):
    """Folder counts are checked before images are read."""
    for split in ("train", "test"):
        for name in ("airplane", "ship"):
            _write_png(tmp_path / split / name / "0.png", np.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match="'airplane' has only 1 examples.*'all'"):
        data.load_class_subset("cifar10", classes=[0, 8], train_per_class=2, test_per_class=1,
                               data_root=tmp_path)


def test_imagefolder_without_png_names_the_folder(tmp_path):
    """A class folder holding only JPEGs says that only PNG images are read."""
    for split in ("train", "test"):
        for name in ("airplane", "ship"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(folder / "0.jpg")
    with pytest.raises(ValueError, match=r"no \*\.png files in .*train/airplane.*only PNG"):
        data.load_class_subset("cifar10", classes=[0, 8], train_per_class=1, test_per_class=1,
                               data_root=tmp_path)


def test_imagefolder_unreadable_png_names_the_file(tmp_path):
    for split in ("train", "test"):
        for name in ("airplane", "ship"):
            _write_png(tmp_path / split / name / "0.png", np.zeros((32, 32, 3)))
    (tmp_path / "test" / "ship" / "0.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"test/ship/0\.png is not a readable PNG image"):
        data.load_class_subset("cifar10", classes=[0, 8], train_per_class=1, test_per_class=1,
                               data_root=tmp_path)


# ---------------------------------------------------------------- transforms and loaders

def test_eval_transform_known_pixel():
    """(v / 255 - mean) / std per channel, computed by hand."""
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[:, 4, 7] = torch.tensor([128, 0, 255], dtype=torch.uint8)
    out = data.eval_transform()(image)
    want = [(128 / 255 - 0.4914) / 0.2470, (0 - 0.4822) / 0.2435, (1 - 0.4465) / 0.2616]
    assert out.dtype == torch.float32
    assert torch.allclose(out[:, 4, 7], torch.tensor(want), atol=1e-6)
    batch = data.normalize_images(image[None].repeat(2, 1, 1, 1))
    assert batch.shape == (2, 3, 32, 32) and torch.allclose(batch[1], out)


def test_train_transform_random_but_seedable():
    """Two draws differ; the same seed reproduces them; output stays normalised 32x32."""
    gen = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=gen)
    ds = data.ImageTensorDataset(image[None], torch.tensor([0]), data.train_transform())
    torch.manual_seed(0)
    first = [ds[0][0] for _ in range(6)]
    torch.manual_seed(0)
    again = [ds[0][0] for _ in range(6)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(first[0], x) for x in first[1:])
    assert first[0].shape == (3, 32, 32) and first[0].dtype == torch.float32
    plain = data.normalize_images(image[None])[0]
    for x in first:  # each draw is a shifted crop of the padded image, maybe flipped
        assert any(torch.allclose(x[:, 8:24, 8:24], v[:, 8 + dy:24 + dy, 8 + dx:24 + dx])
                   for v in (plain, plain.flip(-1))
                   for dy in range(-4, 5) for dx in range(-4, 5))


def test_make_loader_train_and_eval():
    """Eval: fixed order, normalised; train: shuffled by the generator, epoch reproducible."""
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(10)
    eval_batches = list(data.make_loader(images, labels, batch_size=4, train=False))
    assert [len(y) for _, y in eval_batches] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in eval_batches]), labels)
    assert torch.allclose(torch.cat([x for x, _ in eval_batches]), data.normalize_images(images))

    def epoch(seed):
        torch.manual_seed(seed)
        loader = data.make_loader(images, labels, 4, train=True,
                                  generator=torch.Generator().manual_seed(seed))
        return [(x.clone(), y.clone()) for x, y in loader]

    one, two = epoch(3), epoch(3)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(one, two))
    assert sorted(torch.cat([y for _, y in one]).tolist()) == list(range(10))
    assert not torch.equal(torch.cat([y for _, y in one]), labels)


def test_dataset_rejects_float_images():
    """ImageTensorDataset wants uint8 (N, 3, H, W) with one label per image."""
    with pytest.raises(ValueError, match="uint8"):
        data.ImageTensorDataset(torch.zeros(2, 3, 32, 32), torch.zeros(2))
