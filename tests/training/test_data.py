"""Data loaders on generated IDX/UCI files, and on ../shared/data when it is there."""

import gzip
import struct

import numpy as np
import pytest
import torch

from mcdrop.training import data
from tests.conftest import needs_data


def write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MCDROP_CACHE", str(tmp_path / "cache"))


def test_read_idx_plain_and_gz(tmp_path):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    write_idx(tmp_path / "a.idx", images)
    write_idx(tmp_path / "b.idx.gz", images, gz=True)
    assert torch.equal(data.read_idx(tmp_path / "a.idx"), torch.from_numpy(images.astype(np.uint8)))
    assert torch.equal(data.read_idx(tmp_path / "b.idx.gz"), torch.from_numpy(images.astype(np.uint8)))


def test_read_idx_errors(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="IDX file not found"):
        data.read_idx(tmp_path / "missing.idx")
    (tmp_path / "bad.idx").write_bytes(b"not an idx file at all")
    with pytest.raises(ValueError, match="not a valid IDX file"):
        data.read_idx(tmp_path / "bad.idx")


def test_fashion_mnist_from_generated_files(tmp_path):
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 5), ("t10k", 3)):
        write_idx(raw / f"{split}-images-idx3-ubyte.gz", np.full((n, 28, 28), 7), gz=True)
        write_idx(raw / f"{split}-labels-idx1-ubyte.gz", np.arange(n), gz=True)
    x, y = data.load_fashion_mnist(tmp_path / "root", train=False)
    assert x.shape == (3, 28, 28) and y.tolist() == [0, 1, 2]
    assert data.fashion_mnist_features(x).max().item() == pytest.approx(7 / 255)


def test_each_data_root_gets_its_own_cached_copy(tmp_path):
    for name, value in (("a", 7), ("b", 9)):
        raw = tmp_path / name / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for split in ("train", "t10k"):
            write_idx(raw / f"{split}-images-idx3-ubyte.gz", np.full((2, 28, 28), value), gz=True)
            write_idx(raw / f"{split}-labels-idx1-ubyte.gz", np.arange(2), gz=True)
    assert int(data.load_fashion_mnist(tmp_path / "a")[0].max()) == 7
    assert int(data.load_fashion_mnist(tmp_path / "b")[0].max()) == 9


def test_missing_fashion_mnist_is_one_clear_line(tmp_path):
    with pytest.raises(data.DataNotFoundError, match=r"Fashion-MNIST not found: expected .* MCDROP_DATA") as err:
        data.load_fashion_mnist(tmp_path)
    assert "\n" not in str(err.value)


def test_uci_from_generated_files(tmp_path):
    folder = tmp_path / "uci" / "yacht"
    folder.mkdir(parents=True)
    np.savetxt(folder / "data.txt", np.arange(30.0).reshape(10, 3))
    for name, value in {
        "index_features.txt": "0\n1",
        "index_target.txt": "2",
        "n_splits.txt": "1",
        "n_hidden.txt": "50",
        "n_epochs.txt": "40",
        "dropout_rates.txt": "0.005\n0.01",
        "tau_values.txt": "0.25\n0.5",
        "index_train_0.txt": "0\n1\n2\n3\n4\n5\n6\n7",
        "index_test_0.txt": "8\n9",
    }.items():
        (folder / name).write_text(value)
    ds = data.load_uci("yacht", tmp_path)
    assert ds.x.shape == (10, 2) and ds.y[0] == 2.0 and ds.splits[0][1].tolist() == [8, 9]
    assert ds.dropout_rates == [0.005, 0.01] and ds.tau_values == [0.25, 0.5]
    with pytest.raises(ValueError, match="unknown UCI dataset"):
        data.load_uci("iris", tmp_path)


@needs_data("FashionMNIST", "raw", "t10k-images-idx3-ubyte.gz")
def test_real_fashion_mnist_test_split():
    x, y = data.load_fashion_mnist(train=False)
    assert x.shape == (10_000, 28, 28) and y[:5].tolist() == [9, 2, 1, 1, 6]


@needs_data("uci", "concrete", "data.txt")
def test_real_uci_concrete():
    ds = data.load_uci("concrete")
    assert ds.x.shape == (1030, 8) and len(ds.splits) == 20
