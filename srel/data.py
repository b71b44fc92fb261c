"""Class subsets of SVHN, CIFAR-10, CIFAR-100 and sklearn digits as uint8 tensors, and loaders.

Follows the data setup of Dan, Mukherjee, Das, Gampa, "Dynamics of Local Elasticity During
Training of Neural Nets" (arXiv 2111.01166): a ResNet-18 trained on 3 classes of a 32x32 RGB
dataset, every dataset normalised with the CIFAR-10 channel statistics. S_rel is the relative
similarity of He & Su, "The Local Elasticity of Neural Networks" (ICLR 2020).

Subsets are deterministic: the FIRST n examples of each class in dataset order, grouped by class
in the requested order and relabelled 0..C-1. Sources are tried in this order: torchvision's own
files under `data_root` (or `data_root/<dataset>`), an ImageFolder tree
`<root>/{train,test}/<class_name>/*.png` at the same places, then a torchvision download when
`download=True`. The offline default "digits" is scikit-learn's bundled 8x8 handwritten digits
(values 0..16), scaled to uint8 0..255, upsampled to 32x32 with bilinear interpolation
(align_corners=False) and repeated over 3 channels. It has no official split, so for each class,
in original order, the first 140 images are the train pool and the remaining 34-43 the test pool.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from srel.io import resolve_path

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# CIFAR-100 fine label names in label order (alphabetical, as in the official `meta` file).
CIFAR100_CLASSES = tuple("""
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch
    crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo
    keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse
    mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
    porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper
    snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television
    tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm
""".split())
DIGIT_CLASSES = tuple(str(d) for d in range(10))
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10 train channel means, pixels scaled to [0, 1]
CIFAR_STD = (0.2470, 0.2435, 0.2616)
DIGITS_TRAIN_POOL = 140  # per class; the rest of each class is the digits test pool
DEFAULT_DATA_ROOT = "data"

# torchvision's files per dataset, relative to the root torchvision is given.
_TORCHVISION_FILES = {
    "cifar10": [f"cifar-10-batches-py/{f}" for f in
                [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch", "batches.meta"]],
    "cifar100": ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"],
    "svhn": ["train_32x32.mat", "test_32x32.mat"],
}


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's class names (label order) and the paper's subset defaults."""
    name: str
    class_names: tuple
    default_classes: tuple
    train_per_class: int
    test_per_class: int
    batch_size: int


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("cifar10", CIFAR10_CLASSES, ("airplane", "automobile", "ship"),
                           5000, 1000, 256),
    "cifar100": DatasetSpec("cifar100", CIFAR100_CLASSES, ("motorcycle", "orange", "wardrobe"),
                            500, 100, 25),
    "svhn": DatasetSpec("svhn", DIGIT_CLASSES, ("0", "2", "4"), 4000, 800, 256),
    "digits": DatasetSpec("digits", DIGIT_CLASSES, ("0", "2", "4"), 140, 30, 32),
}


@dataclass
class ClassSubset:
    """Selected classes of one dataset; images uint8 (N, 3, 32, 32), labels int64 (N,)."""
    dataset: str
    class_names: tuple
    train_images: torch.Tensor  # (n_train, 3, 32, 32) uint8
    train_labels: torch.Tensor  # (n_train,) int64 in 0..C-1
    test_images: torch.Tensor  # (n_test, 3, 32, 32) uint8
    test_labels: torch.Tensor  # (n_test,) int64
    source: str


# ---------------------------------------------------------------- argument checks

def _resolve_classes(spec: DatasetSpec, classes) -> list[int]:
    """Names or integer labels -> official integer labels, in the given order."""
    if classes is None:
        classes = spec.default_classes
    if isinstance(classes, (str, int, set, frozenset, dict)) or not hasattr(classes, "__iter__"):
        # NOTE: sets and dicts are refused because their order (hence label k) is not the user's
        raise ValueError(f"classes must be a list of class names or labels, got {classes!r}")
    labels = []
    for c in classes:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            if not 0 <= c < len(spec.class_names):
                raise ValueError(f"{spec.name}: class label {c} out of range; valid labels are "
                                 f"0..{len(spec.class_names) - 1}")
            labels.append(int(c))
        elif isinstance(c, str) and c in spec.class_names:
            labels.append(spec.class_names.index(c))
        else:
            raise ValueError(f"{spec.name}: unknown class {c!r}; valid class names are "
                             f"{', '.join(spec.class_names)} (or integer labels)")
    names = [spec.class_names[i] for i in labels]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{spec.name}: duplicate classes in {list(classes)!r} (= {names})")
    if len(labels) < 2:
        raise ValueError(f"{spec.name}: need at least 2 classes, got {names}")
    return labels


def _resolve_count(value, default: int, what: str):
    """None -> default; "all" -> None (every example); a positive int stays."""
    if value is None:
        return default
    if value == "all":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{what} must be a positive integer or 'all', got {value!r}")
    return int(value)


def _check_available(dataset, split, name, n, available):
    if available == 0:
        raise ValueError(f"{dataset} {split}: class {name!r} has no examples in this source")
    if n is not None and n > available:
        raise ValueError(
            f"{dataset} {split}: class {name!r} has only {available} examples but "
            f"{split}_per_class={n} was requested; pass {split}_per_class='all' or a number "
            f"<= {available}"
        )


def _first_per_class(targets: np.ndarray, labels, counts, dataset, split, names) -> list:
    """Indices of the first n examples of each class, grouped by class in `labels` order."""
    picked = []
    for label, name in zip(labels, names):
        idx = np.flatnonzero(targets == label)
        _check_available(dataset, split, name, counts, len(idx))
        picked.append(idx[:counts])
    return picked


def _gather(images, picked) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and new labels 0..C-1 from per-class index lists."""
    x = torch.from_numpy(np.ascontiguousarray(images[np.concatenate(picked)]))
    y = torch.cat([torch.full((len(p),), k, dtype=torch.int64) for k, p in enumerate(picked)])
    return x, y


# ---------------------------------------------------------------- sources

def _digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as uint8 (1797, 3, 32, 32) and their labels (1797,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(np.round(digits.images * (255.0 / 16.0)))  # (1797, 8, 8) 0..255
    big = torch.nn.functional.interpolate(
        small[:, None], size=(32, 32), mode="bilinear", align_corners=False
    )  # (1797, 1, 32, 32)
    big = big.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)
    return big.numpy(), digits.target.astype(np.int64)


def _load_digits(labels, n_train, n_test, names):
    images, targets = _digits_images()
    train_idx, test_idx = [], []
    for label in range(10):
        idx = np.flatnonzero(targets == label)
        train_idx.append(idx[:DIGITS_TRAIN_POOL])
        test_idx.append(idx[DIGITS_TRAIN_POOL:])
    out = []
    for split, pools, n in (("train", train_idx, n_train), ("test", test_idx, n_test)):
        pool = np.concatenate(pools)
        picked = _first_per_class(targets[pool], labels, n, "digits", split, names)
        out.extend(_gather(images[pool], picked))
    return out


def _is_torchvision_root(dataset: str, root: Path) -> bool:
    return all((root / f).is_file() for f in _TORCHVISION_FILES[dataset])


def _is_imagefolder_root(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "test").is_dir()


def _torchvision_split(dataset: str, root: Path, train: bool, download: bool):
    """Images (N, 3, 32, 32) uint8 numpy and labels (N,) from torchvision's dataset classes."""
    import torchvision.datasets as tvd

    if dataset == "svhn":
        ds = tvd.SVHN(str(root), split="train" if train else "test", download=download)
        return ds.data, np.asarray(ds.labels, dtype=np.int64)  # SVHN's digit 0 is already 0
    cls = tvd.CIFAR10 if dataset == "cifar10" else tvd.CIFAR100
    ds = cls(str(root), train=train, download=download)
    return ds.data.transpose(0, 3, 1, 2), np.asarray(ds.targets, dtype=np.int64)


def _load_torchvision(dataset, root, labels, n_train, n_test, names, download):
    splits = {}
    for split in ("train", "test"):
        try:
            splits[split] = _torchvision_split(dataset, root, split == "train", download)
        except RuntimeError as exc:  # torchvision's md5 check failed
            raise RuntimeError(
                f"{dataset}: torchvision's files under {root} are incomplete or fail their md5 "
                f"check ({exc}). Delete them and load again with download=True."
            ) from None
    # both splits' counts are checked before any images are copied
    picked = {split: _first_per_class(splits[split][1], labels, n, dataset, split, names)
              for split, n in (("train", n_train), ("test", n_test))}
    return [*_gather(splits["train"][0], picked["train"]),
            *_gather(splits["test"][0], picked["test"])]


def _read_png(path: Path) -> np.ndarray:
    """One 32x32 image file as uint8 (3, 32, 32)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"))  # (H, W, 3)
    except OSError as exc:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise ValueError(
            f"{path} is not a readable PNG image ({exc}); remove or replace it."
        ) from None
    if arr.shape != (32, 32, 3):
        raise ValueError(f"{path}: expected a 32x32 image, got {arr.shape[1::-1]}")
    return arr.transpose(2, 0, 1)


def _load_imagefolder(dataset, root, n_train, n_test, names):
    files = {}
    for split, n in (("train", n_train), ("test", n_test)):
        for name in names:
            folder = root / split / name
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"{dataset}: class folder {name!r} is missing from the ImageFolder tree "
                    f"{root} (expected {folder}/*.png)"
                )
            pngs = sorted(folder.glob("*.png"), key=lambda p: p.name)
            if not pngs:
                raise ValueError(f"{dataset} {split}: no *.png files in {folder} (only PNG images "
                                 f"are read); convert the images there to PNG.")
            _check_available(dataset, split, name, n, len(pngs))
            files[split, name] = pngs[:n]
    out = []
    for split in ("train", "test"):
        images = np.stack([_read_png(p) for name in names for p in files[split, name]])
        labels = [k for k, name in enumerate(names) for _ in files[split, name]]
        out += [torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64)]
    return out


def load_class_subset(dataset: str = "digits", classes=None, train_per_class=None,
                      test_per_class=None, data_root=None, download: bool = False) -> ClassSubset:
    """Load the first `n` train and test examples of each chosen class, relabelled 0..C-1.

    Args:
        dataset: a key of DATASETS ("svhn", "cifar10", "cifar100", "digits").
        classes: class names and/or official integer labels; label k of the result is
            classes[k]. None -> the dataset's default (the paper's classes).
        train_per_class, test_per_class: None -> the dataset default; "all" -> every example
            of the class; or a positive int. Test examples come from the official test split.
        data_root: folder with torchvision's files or an ImageFolder tree (also tried at
            `data_root/<dataset>`); None -> `data/` in the repository. Ignored for "digits".
        download: let torchvision download into `data_root` when nothing is found there.

    Returns:
        ClassSubset with train_images (N, 3, 32, 32) uint8, train_labels (N,) int64, grouped by
        class in `classes` order; the same for test.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets are {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    n_train = _resolve_count(train_per_class, spec.train_per_class, "train_per_class")
    n_test = _resolve_count(test_per_class, spec.test_per_class, "test_per_class")
    labels = _resolve_classes(spec, classes)
    names = tuple(spec.class_names[i] for i in labels)

    if dataset == "digits":
        parts, source = _load_digits(labels, n_train, n_test, names), "scikit-learn digits"
        return ClassSubset(dataset, names, *parts, source=source)

    root = resolve_path(DEFAULT_DATA_ROOT if data_root is None else data_root)
    candidates = [root, root / dataset]
    tv_root = next((r for r in candidates if _is_torchvision_root(dataset, r)), None)
    if_root = next((r for r in candidates if _is_imagefolder_root(r)), None)
    if tv_root is not None:
        parts = _load_torchvision(dataset, tv_root, labels, n_train, n_test, names, False)
        source = f"torchvision files under {tv_root}"
    elif if_root is not None:
        parts = _load_imagefolder(dataset, if_root, n_train, n_test, names)
        source = f"ImageFolder {if_root}"
    elif download:
        try:
            parts = _load_torchvision(dataset, root, labels, n_train, n_test, names, True)
        except OSError as exc:  # urllib's URLError is an OSError
            raise FileNotFoundError(
                f"{dataset}: not found under {root} or {root / dataset} (looked for "
                f"{', '.join(_TORCHVISION_FILES[dataset])} and an ImageFolder tree "
                f"<root>/{{train,test}}/<class_name>/*.png) and the download failed ({exc}). "
                f"Check the internet connection, or pass data_root= pointing to either layout."
            ) from None
        source = f"torchvision download into {root}"
    else:
        wanted = ", ".join(_TORCHVISION_FILES[dataset])
        raise FileNotFoundError(
            f"dataset {dataset!r} not found: searched {root} and {root / dataset} for "
            f"torchvision's files ({wanted}) and for an ImageFolder tree "
            f"(<root>/{{train,test}}/<class_name>/*.png). Supply it with download=True "
            f"(needs internet), or pass data_root= pointing to a folder with torchvision's "
            f"files or an ImageFolder tree."
        )
    return ClassSubset(dataset, names, *parts, source=source)


# ---------------------------------------------------------------- transforms and loaders

def train_transform() -> v2.Compose:
    """Random 32x32 crop of the 4-pixel zero-padded image, random flip, CIFAR-10 normalisation.

    Randomness comes from torch's global RNG, so torch.manual_seed fixes an epoch's draws.
    """
    return v2.Compose([
        v2.RandomCrop(32, padding=4),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])


def eval_transform() -> v2.Compose:
    """uint8 -> float32 in [0, 1] -> normalised with CIFAR-10 channel statistics."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(CIFAR_MEAN, CIFAR_STD)])


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """Eval transform of a whole uint8 batch (N, 3, H, W) at once -> float32 (N, 3, H, W)."""
    return eval_transform()(images)


class ImageTensorDataset(Dataset):
    """uint8 images (N, 3, H, W) and labels (N,); the transform runs anew on every access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        if images.ndim != 4 or images.dtype != torch.uint8 or len(images) != len(labels):
            raise ValueError(
                f"images must be uint8 (N, 3, H, W) with one label each; got {images.dtype} "
                f"{tuple(images.shape)} and {len(labels)} labels"
            )
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        image = self.images[i]
        return (image if self.transform is None else self.transform(image)), self.labels[i]


def make_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int, train: bool,
                generator: torch.Generator | None = None) -> DataLoader:
    """DataLoader with on-the-fly augmentation (train) or plain normalisation (eval).

    Train shuffles with `generator` (torch's global RNG when None); eval keeps the order.
    num_workers=0 keeps augmentation on the global RNG of this process.
    """
    transform = train_transform() if train else eval_transform()
    return DataLoader(
        ImageTensorDataset(images, labels, transform),
        batch_size=batch_size,
        shuffle=train,
        generator=generator if train else None,
        num_workers=0,
        drop_last=False,
    )
