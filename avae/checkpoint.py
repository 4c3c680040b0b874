"""Checkpoints as one safetensors file: tensors (weights, optimiser moments, RNG states) plus a
JSON document in the safetensors metadata (configuration, epoch, versions, data checksums).

Only safetensors is ever read: it holds raw tensor bytes and cannot carry code. A file in any
other format (a pickled `torch.save` archive in particular) is refused with an explanation.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from avae.errors import CheckpointError
from avae.io import atomic_write_bytes

FORMAT = "avae-checkpoint/1"
META_KEY = "avae"
PICKLE_SIGNATURES = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, zip (torch.save) archives


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write tensors and metadata atomically (temporary file, fsync, rename)."""
    payload = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    document = json.dumps({"format": FORMAT, **meta}, sort_keys=True)
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
    except (SafetensorError, ValueError, struct.error) as exc:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupted ({exc}); delete it and train again"
        ) from None
    try:
        meta = json.loads(header_meta[META_KEY])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise CheckpointError(
            f"{path} is a safetensors file but not an avae checkpoint (no '{META_KEY}' metadata)"
        ) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {meta.get('format')!r}; this avae reads {FORMAT}")
    return tensors, meta


def refuse_foreign_format(path: Path, raw: bytes) -> None:
    if raw.startswith(PICKLE_SIGNATURES):
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
