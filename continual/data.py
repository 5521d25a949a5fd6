"""Datasets as in-memory tensors (batches are index slices; no per-sample DataLoader).

Sizes follow the paper's Appendix B: the first 12,800 MNIST / Fashion-MNIST training images, the first 100,000
EMNIST-balanced images, 50,000 SVHN / CIFAR images; tiny-ImageNet's 100,000. The test split is the dataset's test
set, or the part of it left after carving the validation split the paper describes (1,000 for CIFAR, 5,000 for
SVHN). ``digits`` (scikit-learn's bundled 8×8 digits: 1,497 train / 300 test) always works offline.

Where data comes from, in order: ``--data-dir`` (IDX files, gz or not, for the MNIST family; torchvision's folder
layout for the others; tiny-ImageNet's standard folder), Debian's ``dataset-fashion-mnist`` for Fashion-MNIST, the
cache ``~/.cache/specopt`` (``$SPECOPT_CACHE``), and finally torchvision's download into that cache — through a
temporary folder renamed only when complete, so a failed download leaves nothing half-written.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DATASETS = ("mnist", "fashion-mnist", "emnist", "svhn", "cifar10", "cifar100", "tiny-imagenet", "digits")
TRAIN_SIZES = {"mnist": 12800, "fashion-mnist": 12800, "emnist": 100_000, "svhn": 50_000, "cifar10": 50_000,
               "cifar100": 50_000, "tiny-imagenet": 100_000, "digits": 1497}
VALIDATION_SIZES = {"svhn": 5000, "cifar10": 1000, "cifar100": 1000}
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


class DataError(RuntimeError):
    """A dataset that cannot be found or loaded; the message says how to get it."""


@dataclass
class Dataset:
    name: str
    x_train: Tensor  # float32, (N, C, H, W) in [0, 1]
    y_train: Tensor  # int64, (N,)
    x_test: Tensor | None
    y_test: Tensor | None
    num_classes: int

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> "Dataset":
        move = (lambda t: None if t is None else t.to(device))
        return Dataset(self.name, move(self.x_train), move(self.y_train), move(self.x_test), move(self.y_test),
                       self.num_classes)


def cache_dir() -> Path:
    return Path(os.environ.get("SPECOPT_CACHE", Path.home() / ".cache" / "specopt"))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:  # a cut-off download, or not gzip at all
        raise DataError(f"{path} is truncated or not a gzip file ({err}): delete it to download it again, or copy "
                        "it anew") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {body.size}")
    return body.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        for candidate in (folder / name, folder / "raw" / name):
            if candidate.exists():
                return candidate
    return None


def load_idx_folder(folder: Path, name: str) -> Dataset | None:
    """MNIST-style IDX files in ``folder`` (``train-images-idx3-ubyte[.gz]`` etc.), or None if absent."""
    paths = {k: _find_idx(folder, f"{k}-ubyte") for k in
             ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")}
    if paths["train-images-idx3"] is None or paths["train-labels-idx1"] is None:
        return None
    x = torch.from_numpy(read_idx(paths["train-images-idx3"]).astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(read_idx(paths["train-labels-idx1"]).astype(np.int64))
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{folder}: {x.shape[0]} training images but {y.shape[0]} labels")
    xt = yt = None
    if paths["t10k-images-idx3"] is not None and paths["t10k-labels-idx1"] is not None:
        xt = torch.from_numpy(read_idx(paths["t10k-images-idx3"]).astype(np.float32) / 255.0).unsqueeze(1)
        yt = torch.from_numpy(read_idx(paths["t10k-labels-idx1"]).astype(np.int64))
    return Dataset(name, x, y, xt, yt, int(max(y.max().item(), -1 if yt is None else yt.max().item())) + 1)


def load_digits_dataset() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    return Dataset("digits", x[:1497], y[:1497], x[1497:], y[1497:], 10)


_TORCHVISION = {
    "mnist": ("MNIST", {}),
    "fashion-mnist": ("FashionMNIST", {}),
    "emnist": ("EMNIST", {"split": "balanced"}),
    "cifar10": ("CIFAR10", {}),
    "cifar100": ("CIFAR100", {}),
    "svhn": ("SVHN", {}),
}


def _torchvision_split(name: str, root: Path, train: bool, download: bool):
    import torchvision

    cls_name, kwargs = _TORCHVISION[name]
    cls = getattr(torchvision.datasets, cls_name)
    if name == "svhn":
        return cls(str(root), split="train" if train else "test", download=download)
    return cls(str(root), train=train, download=download, **kwargs)


def _to_tensors(ds) -> tuple[Tensor, Tensor]:
    data = ds.data if not hasattr(ds.data, "numpy") else ds.data.numpy()
    data = np.asarray(data)
    labels = np.asarray(getattr(ds, "targets", getattr(ds, "labels", None)))
    x = torch.from_numpy(data.astype(np.float32) / 255.0)
    if x.ndim == 3:  # N, H, W (MNIST family)
        x = x.unsqueeze(1)
        if ds.__class__.__name__ == "EMNIST":  # stored transposed
            x = x.transpose(2, 3)
    elif x.shape[-1] == 3:  # N, H, W, C (CIFAR)
        x = x.permute(0, 3, 1, 2)
    return x.contiguous(), torch.from_numpy(labels.astype(np.int64))


def load_torchvision(name: str, root: Path, download: bool) -> Dataset:
    """Load through torchvision from ``root``; with ``download``, fetch into a temp folder then rename."""
    try:
        train = _torchvision_split(name, root, True, False)
        test = _torchvision_split(name, root, False, False)
    except (RuntimeError, FileNotFoundError, OSError):
        if not download:
            raise DataError(_missing(name)) from None
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
        try:
            _torchvision_split(name, tmp, True, True)
            _torchvision_split(name, tmp, False, True)
        except Exception as err:  # network errors come in many types
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays in the cache
            reason = (str(err).splitlines() or [type(err).__name__])[0][:160]
            raise DataError(f"{_missing(name)} (download failed: {reason})") from None
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
        train = _torchvision_split(name, root, True, False)
        test = _torchvision_split(name, root, False, False)
    (x, y), (xt, yt) = _to_tensors(train), _to_tensors(test)
    return Dataset(name, x, y, xt, yt, int(y.max().item()) + 1)


def load_tiny_imagenet(folder: Path) -> Dataset:
    """tiny-ImageNet-200's standard layout: ``train/<wnid>/images/*.JPEG``, ``val/images`` + ``val_annotations.txt``."""
    from PIL import Image

    train_dir = folder / "train"
    if not train_dir.is_dir():
        raise DataError(_missing("tiny-imagenet"))
    wnids = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    index = {w: i for i, w in enumerate(wnids)}

    def read(paths: list[Path]) -> Tensor:
        arr = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p in paths])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0

    train_paths, train_labels = [], []
    for w in wnids:
        for p in sorted((train_dir / w / "images").glob("*.JPEG")):
            train_paths.append(p)
            train_labels.append(index[w])
    xt = yt = None
    annotations = folder / "val" / "val_annotations.txt"
    if annotations.exists():
        val = [line.split("\t")[:2] for line in annotations.read_text().splitlines() if line.strip()]
        val = [(folder / "val" / "images" / f, index[w]) for f, w in val if w in index]
        xt, yt = read([p for p, _ in val]), torch.tensor([c for _, c in val])
    return Dataset("tiny-imagenet", read(train_paths), torch.tensor(train_labels), xt, yt, len(wnids))


def _missing(name: str) -> str:
    how = {
        "fashion-mnist": "apt-get install dataset-fashion-mnist, or pass --data-dir with the IDX files, or allow "
                         "the download (needs internet)",
        "tiny-imagenet": "download tiny-imagenet-200 and pass --data-dir pointing at its folder (train/, val/)",
    }.get(name, "pass --data-dir with the files, or run with internet access so torchvision can download it")
    return f"dataset {name!r} not found: {how}"


def load_dataset(name: str, data_dir: Path | None = None, train_size: int | None = None,
                 download: bool = True) -> Dataset:
    """Load ``name`` (one of :data:`DATASETS`), truncated to ``train_size`` (default: the paper's size)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names are {', '.join(DATASETS)}")
    ds: Dataset | None = None
    if name == "digits":
        ds = load_digits_dataset()
    elif name == "tiny-imagenet":
        folder = data_dir or cache_dir() / "tiny-imagenet-200"
        ds = load_tiny_imagenet(folder)
    else:
        if data_dir is not None and name in ("mnist", "fashion-mnist", "emnist"):
            ds = load_idx_folder(data_dir, name)
        if ds is None and name == "fashion-mnist" and data_dir is None:
            ds = load_idx_folder(DEBIAN_FMNIST, name)
        if ds is None:
            root = data_dir if data_dir is not None else cache_dir() / name
            ds = load_torchvision(name, root, download and data_dir is None)
    n = train_size or TRAIN_SIZES[name]
    if n < 1:
        raise DataError(f"--train-size must be >= 1, got {n}")
    ds.x_train, ds.y_train = ds.x_train[:n], ds.y_train[:n]
    if ds.x_test is not None and name in VALIDATION_SIZES:  # the validation split is carved from the test set
        v = VALIDATION_SIZES[name]
        ds.x_test, ds.y_test = ds.x_test[v:], ds.y_test[v:]
    return ds
