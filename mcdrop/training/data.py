"""Datasets: Fashion-MNIST through torchvision, IDX files, and the UCI regression benchmark splits.

The data root comes from an argument, else ``$MCDROP_DATA``, else ``../shared/data`` beside the project
or the working directory.  Nothing is ever written under the data root: torchvision's uncompressed layout
is prepared in a cache folder (``$MCDROP_CACHE``, default ``~/.cache/mcdrop``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from mcdrop.errors import DataError
from mcdrop.io.atomic import AtomicFile

__all__ = [
    "FASHION_MNIST_CLASSES",
    "UCI_DATASETS",
    "DataNotFoundError",
    "UCIDataset",
    "cache_dir",
    "fashion_mnist_features",
    "load_fashion_mnist",
    "load_uci",
    "read_idx",
    "resolve_data_root",
]

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
UCI_DATASETS = (
    "bostonHousing",
    "concrete",
    "energy",
    "kin8nm",
    "naval-propulsion-plant",
    "power-plant",
    "protein-tertiary-structure",
    "wine-quality-red",
    "yacht",
)
_FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset is missing; the message names the expected path and how to get it."""


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``root``, else ``$MCDROP_DATA``, else the first ``../shared/data`` that exists."""
    if root is not None:
        return Path(root)
    if os.environ.get("MCDROP_DATA"):
        return Path(os.environ["MCDROP_DATA"])
    for base in (Path(__file__).resolve().parents[1], Path.cwd()):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def cache_dir() -> Path:
    """Where mcdrop keeps derived files (``$MCDROP_CACHE``, default ``~/.cache/mcdrop``)."""
    return Path(os.environ.get("MCDROP_CACHE", Path.home() / ".cache" / "mcdrop"))


def read_idx(path: str | os.PathLike[str]) -> Tensor:
    """Read an IDX file (optionally gzipped) as a tensor, with torchvision's reader."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"IDX file not found: {path}")
    if path.suffix == ".gz":
        plain = cache_dir() / "idx" / f"{path.stem}-{path.stat().st_size}-{int(path.stat().st_mtime)}"
        if not plain.exists():
            plain.parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(path, "rb") as src, AtomicFile(plain, binary=True) as dst:  # processes may fill the cache at once
                shutil.copyfileobj(src, dst)
        path = plain
    try:
        return read_sn3_pascalvincent_tensor(str(path), strict=False)
    except Exception as err:  # torchvision raises assertion/type errors on a bad magic number
        raise ValueError(f"{path} is not a valid IDX file (expected the magic number header of the IDX format)") from err


def load_fashion_mnist(root: str | os.PathLike[str] | None = None, *, train: bool = True) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64, via torchvision (download=False).

    The gzipped IDX files are read from ``<root>/FashionMNIST/raw/`` and decompressed once into the cache.
    """
    from torchvision.datasets import FashionMNIST

    raw = resolve_data_root(root) / "FashionMNIST" / "raw"
    missing = [f"{name}.gz" for name in _FMNIST_FILES if not (raw / f"{name}.gz").is_file() and not (raw / name).is_file()]
    if missing:
        raise DataNotFoundError(
            f"Fashion-MNIST not found: expected {', '.join(missing)} in {raw}. Pass `root` or set MCDROP_DATA, "
            "or fetch it with torchvision.datasets.FashionMNIST(ROOT, download=True) where the internet is reachable"
        )
    cached = cache_dir() / "torchvision" / _fingerprint(raw)
    target = cached / "FashionMNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for name in _FMNIST_FILES:
        if (target / name).exists():
            continue
        with (open(raw / name, "rb") if (raw / name).is_file() else gzip.open(raw / f"{name}.gz", "rb")) as src, \
                AtomicFile(target / name, binary=True) as dst:
            shutil.copyfileobj(src, dst)
    ds = FashionMNIST(str(cached), train=train, download=False)
    return ds.data, ds.targets.long()


def _fingerprint(raw: Path) -> str:
    """A cache key for the files in ``raw``: its path and each file's name, size and modification time,
    so a different data root (or a replaced file) never reuses another's decompressed copy."""
    stamp = [str(raw.resolve())]
    for path in sorted(raw.iterdir()):
        if path.is_file():
            st = path.stat()
            stamp.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(stamp).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class UCIDataset:
    """One UCI benchmark dataset with its fixed splits and hyper-parameter grids."""

    name: str
    x: np.ndarray  # (N, D) float64
    y: np.ndarray  # (N,) float64
    splits: list[tuple[np.ndarray, np.ndarray]]  # (train rows, test rows), 0-based
    n_hidden: int
    n_epochs: int
    dropout_rates: list[float]
    tau_values: list[float]


def _numbers(path: Path) -> np.ndarray:
    return np.loadtxt(path, ndmin=1)


def load_uci(name: str, root: str | os.PathLike[str] | None = None) -> UCIDataset:
    """Load ``<root>/uci/<name>/`` (format: ../shared/data/README.md)."""
    folder = resolve_data_root(root) / "uci" / name
    if name not in UCI_DATASETS:
        raise ValueError(f"unknown UCI dataset {name!r}: expected one of {', '.join(UCI_DATASETS)}")
    if not (folder / "data.txt").is_file():
        raise DataNotFoundError(
            f"UCI dataset {name!r} not found: expected {folder / 'data.txt'}; pass `root` or set MCDROP_DATA"
        )
    data = np.loadtxt(folder / "data.txt")
    features = _numbers(folder / "index_features.txt").astype(int)
    target = int(_numbers(folder / "index_target.txt")[0])
    n_splits = int(_numbers(folder / "n_splits.txt")[0])
    splits = [
        (_numbers(folder / f"index_train_{k}.txt").astype(int), _numbers(folder / f"index_test_{k}.txt").astype(int))
        for k in range(n_splits)
    ]
    return UCIDataset(
        name=name,
        x=data[:, features],
        y=data[:, target],
        splits=splits,
        n_hidden=int(_numbers(folder / "n_hidden.txt")[0]),
        n_epochs=int(_numbers(folder / "n_epochs.txt")[0]),
        dropout_rates=[float(v) for v in _numbers(folder / "dropout_rates.txt")],
        tau_values=[float(v) for v in _numbers(folder / "tau_values.txt")],
    )


def fashion_mnist_features(images: Tensor) -> Tensor:
    """Images ``(N, 28, 28)`` uint8 -> features ``(N, 784)`` float32 in [0, 1] (what the models take)."""
    return images.reshape(images.shape[0], -1).float().div_(255.0)
