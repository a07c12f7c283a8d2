"""`predict --shard K/N` (one deterministic slice of the inputs per machine) and `predict --merge`.

Shard K of N is the K-th of N contiguous, nearly equal slices of the expanded input list (folders
are listed sorted, so every machine given the same arguments cuts the same slices). Each part's
CSV gets a sidecar `PART.shard.json` naming its slice and a digest of the whole input list; merging
checks that the parts are one complete, non-overlapping set from the same inputs before it joins
them, in input order.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deepfake_moe.errors import ConfigError, InputError
from deepfake_moe.io import atomic_write

SIDECAR_SUFFIX = ".shard.json"
_SHARD = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based: shard 1/4 is the first quarter
    count: int

    def slice(self, n_items: int) -> slice:
        return slice((self.index - 1) * n_items // self.count, self.index * n_items // self.count)


def parse_shard(text: str) -> Shard:
    m = _SHARD.match(text.strip())
    if m is None or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ConfigError(f"--shard {text!r}: expected K/N with 1 <= K <= N (e.g. 3/8 for the third of eight parts)")
    return Shard(int(m.group(1)), int(m.group(2)))


def inputs_digest(keys: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def sidecar_path(part: str | os.PathLike) -> Path:
    part = Path(part)
    return part.with_name(part.name + SIDECAR_SUFFIX)


def write_sidecar(part: str | os.PathLike, shard: Shard, all_keys: Sequence[str]) -> None:
    s = shard.slice(len(all_keys))
    meta = {"shard": shard.index, "of": shard.count, "inputs": len(all_keys), "first": s.start, "stop": s.stop,
            "inputs_digest": inputs_digest(all_keys)}
    with atomic_write(sidecar_path(part)) as f:
        json.dump(meta, f, indent=1)


def _read_part(part: Path) -> tuple[dict, list[str], list[list[str]]]:
    side = sidecar_path(part)
    if not part.is_file():
        raise InputError(f"--merge: {part}: no such file")
    if not side.is_file():
        raise InputError(f"--merge: {part} has no {side.name} next to it: not written by `predict --shard K/N --out`")
    meta = json.loads(side.read_text())
    with open(part, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise InputError(f"--merge: {part} is empty")
    if len(rows) - 1 != meta["stop"] - meta["first"]:
        raise InputError(f"--merge: {part} holds {len(rows) - 1} rows, its shard {meta['shard']}/{meta['of']} "
                         f"has {meta['stop'] - meta['first']} inputs (an unfinished part?)")
    return meta, rows[0], rows[1:]


def _check_complete(metas: list[tuple[Path, dict]]) -> None:
    first_path, first = metas[0]
    for path, meta in metas[1:]:
        if (meta["of"], meta["inputs_digest"]) != (first["of"], first["inputs_digest"]):
            raise InputError(f"--merge: {path} (shard {meta['shard']}/{meta['of']}) and {first_path} "
                             f"(shard {first['shard']}/{first['of']}) were cut from different inputs or shard counts")
    seen: dict[int, Path] = {}
    for path, meta in metas:
        if meta["shard"] in seen:
            raise InputError(f"--merge: parts overlap: shard {meta['shard']}/{meta['of']} is both {seen[meta['shard']]} "
                             f"and {path}")
        seen[meta["shard"]] = path
    n = first["of"]
    missing = [f"{k}/{n}" for k in range(1, n + 1) if k not in seen]
    if missing:
        raise InputError(f"--merge: missing part(s) {', '.join(missing)} of {first['inputs']} inputs")


def merge_parts(parts: Sequence[str | os.PathLike], out: str | os.PathLike) -> tuple[int, list[str]]:
    """Join shard CSVs into `out` (atomically), in input order; returns (rows, header)."""
    if not parts:
        raise ConfigError("--merge needs the part CSVs as arguments")
    read = [(Path(p), *_read_part(Path(p))) for p in parts]
    _check_complete([(p, meta) for p, meta, _, _ in read])
    header = read[0][2]
    for p, _, h, _ in read:
        if h != header:
            raise InputError(f"--merge: {p} has columns {h}, {read[0][0]} has {header}")
    read.sort(key=lambda r: r[1]["shard"])
    with atomic_write(out, newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for _, _, _, rows in read:
            writer.writerows(rows)
    return sum(len(r[3]) for r in read), header
