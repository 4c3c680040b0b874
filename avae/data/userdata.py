"""Your own data: an array file (.npy, or .npz with one array or "train"/"test" arrays) of values in
[0, 1], shaped [N, D] or [N, H, W], or a folder of PNG/JPEG images, converted to greyscale and
resized to 28 x 28 (MNIST's size; bilinear) with pixel values scaled by their bit depth (/ 255, or
/ 65535 for 16-bit greyscale PNGs).

Everything is validated before anything is written: each problem is one sentence naming the file
and the fix. Arrays are read with numpy's `allow_pickle=False`, so no file can run code.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from avae.errors import DataError

ARRAY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_SIZE = (28, 28)  # every image of a folder is resized to this (width, height)
# Pillow's modes of a 16-bit greyscale PNG ("I" in older versions); its 16-bit colour PNGs open as
# 8-bit RGB(A), which convert("L") handles.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
ARRAY_SIGNATURES = (b"\x93NUMPY", b"PK\x03\x04", b"PK\x05\x06")  # .npy; .npz (a zip archive, or an empty one)


def is_user_data(name: str) -> bool:
    """True when `name` names a file or folder of the user's (not a registered data set)."""
    path = Path(name)
    return path.suffix.lower() in ARRAY_SUFFIXES or path.is_dir()


def check_source(name: str, what: str = "--dataset") -> None:
    """Refuse a path that cannot hold data, before anything is read."""
    path = Path(name)
    if path.is_dir():
        return
    if path.suffix.lower() not in ARRAY_SUFFIXES:
        raise DataError(
            f"{what} {name}: give .npy, .npz, a folder of PNG/JPEG images, or mnist / fashion-mnist"
        )
    if not path.is_file():
        raise DataError(f"{what} {name} does not exist; check the path")


_READ: dict[tuple[str, int, int], dict[str, np.ndarray]] = {}  # by (path, mtime, size): read once


def read(name: str) -> dict[str, np.ndarray]:
    """The validated arrays of a source, float32 [N, D] each: {"train": ...} and, when the file
    holds one, "test". A file is read once per process while it is unchanged."""
    check_source(name)
    path = Path(name)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _READ:
        arrays = read_folder(path) if path.is_dir() else read_arrays(path)
        _READ[key] = {split: validated(values, path, split) for split, values in arrays.items()}
    return _READ[key]


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with path.open("rb") as handle:
            head = handle.read(6)
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror or exc}); check its permissions") from None
    if not head.startswith(ARRAY_SIGNATURES):
        what = "is empty" if not head else "does not start with numpy's .npy or .npz header"
        raise DataError(f"{path} is not a valid .npy/.npz file (it {what}); save the array with numpy.save")
    try:
        return load_arrays(path)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(
                f"{path} holds objects or arrays of different shapes; save one numeric array [N, D] or "
                "[N, H, W] with numpy.save"
            ) from None
        raise DataError(f"{path} is not a readable .npy/.npz file ({exc}); save it with numpy.save") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path} is not a readable .npy/.npz file ({exc}); save it with numpy.save") from None


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a .npy or .npz file, without pickle (an .npz's arrays are read here too)."""
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        return {"train": loaded}
    with loaded:
        names = list(loaded.keys())
        if len(names) == 1:
            return {"train": loaded[names[0]]}
        if "train" in names:
            return {split: loaded[split] for split in ("train", "test") if split in names}
    raise DataError(
        f"{path} holds arrays {', '.join(names)}; name the training images 'train' (and the test "
        "images 'test') or save one array"
    )


def read_folder(folder: Path) -> dict[str, np.ndarray]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder} holds no PNG or JPEG images; put the images in it or give an array file")
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                images.append(grey_values(image))
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{file} is not a readable image ({exc}); remove it or save it as PNG") from None
    return {"train": np.stack(images)}


def grey_values(image: Image.Image) -> np.ndarray:
    """An image as greyscale values in [0, 1] at its own bit depth, resized to IMAGE_SIZE: [H, W]."""
    if image.mode in SIXTEEN_BIT_MODES:
        scaled = Image.fromarray(np.asarray(image, dtype=np.float32) / 65535.0)  # mode "F"
        return np.asarray(scaled.resize(IMAGE_SIZE, Image.BILINEAR), dtype=np.float32)
    grey = image.convert("L").resize(IMAGE_SIZE, Image.BILINEAR)
    return np.asarray(grey, dtype=np.float32) / 255.0


def validated(values: np.ndarray, path: Path, split: str) -> np.ndarray:
    """float32 [N, D] from [N, D] or [N, H, W] numbers in [0, 1]; else one sentence on what to fix."""
    where = f"{path}" + (f" ({split!r} array)" if split == "test" else "")
    if values.dtype.kind not in "biuf":
        raise DataError(f"{where} holds {values.dtype} values; save numbers in [0, 1]")
    if values.ndim not in (2, 3):
        raise DataError(f"{where} has shape {values.shape}; save [N, D] vectors or [N, H, W] images")
    if len(values) == 0 or values[0].size == 0:
        raise DataError(f"{where} holds no examples; save at least one batch of them")
    flat = values.reshape(len(values), -1).astype(np.float32)
    bad = ~np.isfinite(flat)
    if bad.any():
        raise DataError(
            f"{where} has {int(bad.sum())} NaN or infinite values; replace them (e.g. numpy.nan_to_num) "
            "and save again"
        )
    low, high = float(flat.min()), float(flat.max())
    if low < 0 or high > 1:
        raise DataError(
            f"{where} has values from {low:g} to {high:g}, outside [0, 1]; rescale them "
            "(images: divide by 255)"
        )
    return flat


def splits(name: str, test_data: str = "", test_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(training, test) arrays of a source: the file `test_data` if given, else its own "test"
    array, else the last `test_fraction` of its examples (which are then not trained on)."""
    arrays = read(name)
    train = arrays["train"]
    if test_data:
        check_source(test_data, "--test-data")
        test = read(test_data)["train"]
    elif "test" in arrays:
        test = arrays["test"]
    else:
        held = max(1, int(round(len(train) * test_fraction)))
        if held >= len(train):
            raise DataError(
                f"{name} has {len(train)} examples: too few to hold out a test set; give --test-data"
            )
        train, test = train[:-held], train[-held:]
    if test.shape[1] != train.shape[1]:
        raise DataError(
            f"{test_data or name}: test examples have {test.shape[1]} values, training ones "
            f"{train.shape[1]}; give a test set of the same shape"
        )
    return train, test


def width(name: str) -> int:
    """Values per example (the networks' input and output width)."""
    if Path(name).is_dir():
        return IMAGE_SIZE[0] * IMAGE_SIZE[1]
    return read(name)["train"].shape[1]


def checksums(name: str) -> dict[str, str]:
    """MD5 of each file the data comes from (for a folder, of every image in it)."""
    path = Path(name)
    files = (
        sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    )
    return {str(f): hashlib.md5(f.read_bytes()).hexdigest() for f in files}


def label(name: str) -> str:
    """A short name for tables and run directories: the file's or folder's stem."""
    return Path(name).stem or Path(name).name
