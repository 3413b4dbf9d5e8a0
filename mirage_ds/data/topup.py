"""Top a set of samples up to N with a seeded random draw from other shard directories.

The paper's retain set is VLGuard's 977 safe instructions topped up to 2,000 with random LLaVA-665k samples
(docs/paper-protocol.md, section 2): ``data build vlguard --subset safe_safes --role retain --top-up DIR --to 2000
--seed 42`` draws from any instruction shard set (``data build llava`` output, for one).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mirage_ds.data.schema import DataError, Record, Role
from mirage_ds.data.shards import decode_sample, read_raw_samples
from mirage_ds.data.writer import read_manifest


@dataclass(frozen=True)
class TopUp:
    """Draw from the shard directories ``dirs`` (one pool) until there are ``to`` samples; ``seed`` fixes the draw."""

    dirs: tuple[Path, ...]
    to: int
    seed: int


def top_up(samples: Iterable[tuple[Record, bytes]], spec: TopUp, role: Role) -> Iterator[tuple[Record, bytes]]:
    """``samples``, then ``spec.to - len(samples)`` samples drawn without replacement from ``spec.dirs``.

    The drawn records take ``role`` and keep where they came from in ``meta.top_up``. The draw is a set of
    positions in the pool (manifest order), chosen before any shard is opened: only the shards holding a
    drawn position are read. DataError when ``samples`` already exceed ``to`` or the pool is too small.
    """
    given = list(samples)  # the count decides how many to draw (the writer buffers this many anyway)
    need = spec.to - len(given)
    if need < 0:
        raise DataError(f"--to {spec.to}: the selection already holds {len(given)} samples")
    shards: list[tuple[Path, Path, int, int]] = []  # (dir, shard, first pool position, samples)
    pool = 0
    for directory in spec.dirs:
        for info in read_manifest(directory).shards:
            shards.append((Path(directory), Path(directory) / info.name, pool, info.samples))
            pool += info.samples
    if need > pool:
        dirs = ", ".join(map(str, spec.dirs))
        raise DataError(f"--to {spec.to}: {len(given)} samples plus {pool} in {dirs} cannot make {spec.to}")
    drawn = set(random.Random(spec.seed).sample(range(pool), need))
    yield from given
    found = 0
    for directory, shard, first, count in shards:
        if not any(first + i in drawn for i in range(count)):
            continue
        for offset, (key, group) in enumerate(read_raw_samples(shard)):
            if first + offset in drawn:
                record, image = decode_sample(group, f"{shard}:{key}")
                meta = {**record.meta, "top_up": {"from": str(directory), "seed": spec.seed}}
                found += 1
                yield record.model_copy(update={"role": role, "meta": meta}), image
    if found != need:
        raise DataError(f"top-up: drew {found} of {need} samples: a shard in {', '.join(map(str, spec.dirs))} "
                        "holds fewer samples than its manifest lists")
