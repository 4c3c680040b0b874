"""Checkpoints as one safetensors file: tensors (weights, optimiser moments, RNG states) plus a
JSON document in the safetensors metadata (configuration, epoch, versions, data checksums).

Only safetensors is ever read: it holds raw tensor bytes and cannot carry code. A file in any
other format (a pickled `torch.save` archive in particular) is refused with an explanation.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from avae.errors import CheckpointError
from avae.io import atomic_write_bytes

FORMAT = "avae-checkpoint/1"
META_KEY = "avae"
DIGEST_KEY = "tensors_sha256"
REQUIRED_KEYS = ("epoch", "config", DIGEST_KEY)
PICKLE_SIGNATURES = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, zip (torch.save) archives


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write tensors and metadata atomically (temporary file, fsync, rename)."""
    payload = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    meta = {"format": FORMAT, **{k: v for k, v in meta.items() if k not in ("format", DIGEST_KEY)}}
    meta = json.loads(json.dumps(meta))  # the digest covers the metadata as it will be read back
    document = json.dumps({**meta, DIGEST_KEY: content_digest(payload, meta)}, sort_keys=True)
    atomic_write_bytes(path, st_save(payload, metadata={META_KEY: document}))


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by `save_checkpoint`; refuse anything else with a clear reason."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}; train first with `avae train`") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    refuse_foreign_format(path, raw)
    try:
        tensors = st_load(raw)
        header_meta = read_header_metadata(raw)
    except (SafetensorError, ValueError, struct.error, RecursionError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupted ({exc}); delete it and train again"
        ) from None
    meta = checked_meta(path, header_meta)
    if meta.pop(DIGEST_KEY) != content_digest(tensors, meta):
        raise CheckpointError(
            f"checkpoint {path} was altered after it was written (its contents do not match the "
            "sha256 recorded in it); delete it and train again"
        )
    return tensors, meta


def checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """A checkpoint's metadata (epoch, configuration, versions, ...) read from its safetensors header
    alone: the tensors are neither read nor checked against the digest (`load_checkpoint` does both,
    and every use of the weights goes through it)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            refuse_foreign_format(path, handle.read(9))
        with safe_open(str(path), framework="pt") as handle:
            header_meta = handle.metadata() or {}
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from None
    except SafetensorError as exc:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupted ({exc}); delete it and train again"
        ) from None
    meta = checked_meta(path, header_meta)
    meta.pop(DIGEST_KEY)
    return meta


def checked_meta(path: Path, header_meta: dict[str, str]) -> dict[str, Any]:
    """The avae document of a safetensors header's metadata, refused unless it is an avae
    checkpoint's of this format with every required key."""
    try:
        meta = json.loads(header_meta[META_KEY])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise CheckpointError(
            f"{path} is a safetensors file but not an avae checkpoint (no '{META_KEY}' metadata)"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path} has format {found!r}; this avae reads {FORMAT}")
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks its {', '.join(missing)} metadata; it was not written by avae "
            "or was edited: delete it and train again"
        )
    return meta


def content_digest(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """sha256 over the metadata (without the digest) and every tensor's name, dtype, shape and
    bytes, in name order.

    Stored in the metadata, it catches damage the safetensors format cannot see: changed tensor
    bytes, a header edit that swaps shapes of the same size, or an edited configuration.
    """
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def refuse_foreign_format(path: Path, raw: bytes) -> None:
    # a safetensors file starts with its header length (8 bytes, little-endian), which may begin with
    # 0x80 too (a 13696-byte header does); its JSON header then starts at byte 8
    if raw.startswith(PICKLE_SIGNATURES) and raw[8:9] != b"{":
        raise CheckpointError(
            f"{path} looks like a pickle/torch.save file; avae refuses to load it because "
            "unpickling can run arbitrary code. Only safetensors checkpoints written by avae load"
        )
    if len(raw) < 8:
        raise CheckpointError(f"checkpoint {path} is truncated ({len(raw)} bytes); delete it")


def read_header_metadata(raw: bytes) -> dict[str, str]:
    """The `__metadata__` block of a safetensors header (string to string)."""
    (header_len,) = struct.unpack("<Q", raw[:8])
    if header_len > len(raw) - 8:
        raise ValueError("header length exceeds file size")
    header = json.loads(raw[8 : 8 + header_len])
    return header.get("__metadata__", {}) or {}
