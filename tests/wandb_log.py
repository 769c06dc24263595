"""Reads an offline W&B run's ``run-<id>.wandb`` file: which history keys and config keys it holds.

wandb 0.31 ships no Python reader for its transaction log. The format is LevelDB's log format behind a 7-byte
header (``:W&B``, magic, version): 32 KiB blocks of records, each ``crc32 (4) | length (2) | type (1) | data``,
a protobuf ``Record`` split into FIRST/MIDDLE/LAST pieces when it crosses a block.
"""

from __future__ import annotations

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER, RECORD_HEADER = 32 * 1024, 7, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    position, pending = HEADER, b""
    while position + RECORD_HEADER <= len(data):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < RECORD_HEADER:  # block trailer: zero padding
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + RECORD_HEADER])
        payload = data[position + RECORD_HEADER : position + RECORD_HEADER + length]
        position += RECORD_HEADER + length
        if kind == 0 and length == 0:
            break  # preallocated, unwritten tail
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def logged_keys(run_dir: Path) -> tuple[set[str], set[str]]:
    """(history keys, config keys) of the offline run in ``run_dir``."""
    [log] = run_dir.glob("run-*.wandb")
    history, config = set(), set()
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.update(item.key or ".".join(item.nested_key) for item in record.history.item)
        elif kind == "config":
            config.update(item.key or ".".join(item.nested_key) for item in record.config.update)
    return history, config
