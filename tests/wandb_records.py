"""Read back what W&B wrote offline. W&B 0.31 keeps an offline run only as `run-<id>.wandb`, a LevelDB-style log of
protobuf records, and no longer ships a reader; this is the format as the files on disk show it."""
from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)  # identifier, magic, version
BLOCK = 32 * 1024  # records never cross a block's last 7 bytes: they are zero padding
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data.startswith(HEADER), f"{path} is not a W&B record file"
    out, pieces, offset = [], [], len(HEADER)
    while offset + 7 <= len(data):
        if BLOCK - offset % BLOCK < 7:  # the block's padding
            offset += BLOCK - offset % BLOCK
            continue
        _checksum, length, kind = struct.unpack_from("<IHB", data, offset)
        if kind == 0:  # an unwritten tail
            break
        pieces.append(data[offset + 7:offset + 7 + length])
        offset += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(pieces))
            out.append(record)
            pieces = []
    return out


def history(path: Path) -> list[dict]:
    """Every `log` call, as {key: value}."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def run_record(path: Path) -> wandb_internal_pb2.RunRecord:
    return next(r.run for r in records(path) if r.WhichOneof("record_type") == "run")


def config(path: Path) -> dict:
    """The run's config: every config update, merged."""
    merged = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        update = record.run.config if kind == "run" else record.config if kind == "config" else None
        if update is not None:
            merged |= {item.key: json.loads(item.value_json) for item in update.update}
    return merged
