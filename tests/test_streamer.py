"""The shard streamer: rank/worker split, exactly-once epochs, exact resume, corrupt-sample handling."""

from __future__ import annotations

import io
import os
import signal
import tarfile
import time
from pathlib import Path

import pytest
import torch

from mirage_ds.data.preprocess import Preprocessor
from mirage_ds.data.schema import DataError, SampleError
from mirage_ds.data.streamer import Batches, ShardStream, StreamState, collate_padded
from mirage_ds.data.template import Template

from shards_util import make_shards


@pytest.fixture(scope="module")
def pre(tiny_bundle) -> Preprocessor:
    return Preprocessor(Template(tiny_bundle.tokenizer, tiny_bundle.n_image_tokens, 256), tiny_bundle.image_processor, True)


def _stream(path: Path, pre: Preprocessor, *, rank: int = 0, world: int = 1, workers: int = 2, batch: int = 3,
            state: StreamState | None = None, on_error: str = "raise", buffer: int = 8) -> Batches:
    return Batches(ShardStream(
        path, transform=pre.train_example, collate=collate_padded(pre.template.tokenizer.pad_token_id),
        batch_size=batch, seed=11, rank=rank, world_size=world, num_workers=workers, shuffle_buffer=buffer,
        on_error=on_error, state=state,
    ))


def _first_epoch_ids(batches: Batches) -> list[str]:
    """Ids this rank sees in epoch 0 (a logical worker that reaches epoch 1 contributes no more)."""
    ids: list[str] = []
    done: set[int] = set()
    n_workers = batches.stream.num_workers
    while len(done) < n_workers:
        batch = next(batches)
        worker = (batches.state.next_worker - 1) % n_workers
        epoch, _ = batches.state.workers[worker]
        if epoch == 0:
            ids += batch["ids"]
        else:
            done.add(worker)
    return ids


def test_two_ranks_two_workers_see_every_sample_exactly_once(tmp_path: Path, pre: Preprocessor) -> None:
    path = make_shards(tmp_path / "d", n=53, shards=8)
    seen = [_first_epoch_ids(_stream(path, pre, rank=r, world=2, workers=2)) for r in (0, 1)]
    everything = seen[0] + seen[1]
    assert sorted(everything) == sorted(f"s-{i:04d}" for i in range(53))
    assert len(everything) == len(set(everything)) == 53
    assert seen[0] and seen[1]


def test_epochs_reshuffle_but_stay_complete(tmp_path: Path, pre: Preprocessor) -> None:
    path = make_shards(tmp_path / "d", n=24, shards=4)
    stream = _stream(path, pre, workers=0, batch=4)
    epoch0 = [i for _ in range(6) for i in next(stream)["ids"]]
    epoch1 = [i for _ in range(6) for i in next(stream)["ids"]]
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1


def test_resume_from_state_continues_the_same_sequence(tmp_path: Path, pre: Preprocessor) -> None:
    path = make_shards(tmp_path / "d", n=40, shards=8)
    reference = _stream(path, pre, workers=2)
    full = [next(reference)["ids"] for _ in range(15)]
    first = _stream(path, pre, workers=2)
    for _ in range(5):
        next(first)
    saved = StreamState.from_dict(first.state.to_dict())
    resumed = _stream(path, pre, workers=2, state=saved)
    assert [next(resumed)["ids"] for _ in range(10)] == full[5:]


def test_batches_are_padded_and_masked(tmp_path: Path, pre: Preprocessor) -> None:
    path = make_shards(tmp_path / "d", n=8, shards=2)
    batch = next(_stream(path, pre, workers=0, batch=4))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    pad = batch["attention_mask"] == 0
    assert (batch["labels"][pad] == -100).all()


def test_a_worker_hands_over_the_same_batches_as_in_process_decoding(tmp_path: Path, pre: Preprocessor) -> None:
    # A worker packs a batch's tensors into one buffer for the hand-off (pack_tensors); the rank must get
    # back every tensor with its dtype, shape and values, the bool image mask and the padding included.
    path = make_shards(tmp_path / "d", n=11, shards=2)
    in_process, worker = _stream(path, pre, workers=0, batch=3), _stream(path, pre, workers=1, batch=3)
    for _ in range(6):  # past the epoch's end, whose last batch is short (11 samples, batches of 3)
        a, b = next(in_process), next(worker)
        assert a.keys() == b.keys() and a["ids"] == b["ids"]
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert (b[key].dtype, b[key].shape) == (value.dtype, value.shape), key
                assert torch.equal(b[key], value), key
    assert worker.state.to_dict() == in_process.state.to_dict()


def test_a_worker_ignores_stop_signals_sent_to_its_process_group(tmp_path: Path, pre: Preprocessor) -> None:
    # Slurm signals a job step's every process, a terminal's Ctrl-C the whole foreground group: the stop is
    # the rank's to handle (checkpoint, exit 3), so its loader workers must not die of it (a forkserver's
    # child starts with the default handlers, which would end it; exit_with_rank ignores them).
    path = make_shards(tmp_path / "d", n=11, shards=2)
    batches = _stream(path, pre, workers=2, batch=3)
    # One batch from each worker (the loader takes them in turn): both ran their worker_init_fn. A signal in a
    # worker's first moments, before that, still ends it (the forkserver's child starts with default handlers).
    first = [next(batches)["ids"] for _ in range(2)]
    workers = [w.pid for w in batches._iter._workers]
    for pid in workers:
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            os.kill(pid, sig)
    time.sleep(0.5)
    assert all(w.is_alive() for w in batches._iter._workers), workers
    assert [next(batches)["ids"] for _ in range(3)] and first  # the stream goes on


def test_too_few_shards_for_ranks_x_workers(tmp_path: Path, pre: Preprocessor) -> None:
    path = make_shards(tmp_path / "d", n=6, shards=2)
    with pytest.raises(DataError, match=r"2 shards cannot be split over 2 ranks x 2 workers"):
        _stream(path, pre, world=2, workers=2)


def test_missing_shard_directory(tmp_path: Path, pre: Preprocessor) -> None:
    with pytest.raises(DataError, match=r"shard directory .*nope does not exist"):
        _stream(tmp_path / "nope", pre)


def _rewrite_member(shard: Path, key: str, ext: str, data: bytes | None) -> None:
    """Rewrite one member of a shard (None drops it), keeping every other member."""
    members = []
    with tarfile.open(shard) as tar:
        for m in tar.getmembers():
            members.append((m.name, tar.extractfile(m).read()))
    with tarfile.open(shard, "w") as tar:
        for name, payload in members:
            if name == f"{key}.{ext}":
                if data is None:
                    continue
                payload = data
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_corrupt_member_raises_naming_shard_and_key(tmp_path: Path, pre: Preprocessor) -> None:
    path = make_shards(tmp_path / "d", n=8, shards=1)
    shard = next(path.glob("*.tar"))
    _rewrite_member(shard, "s-0003", "json", b"{not json")
    with pytest.raises(SampleError, match=r"shard-000000\.tar:s-0003: field"):
        stream = _stream(path, pre, workers=0, batch=2)
        for _ in range(4):
            next(stream)


def test_skip_policy_counts_corrupt_samples(tmp_path: Path, pre: Preprocessor) -> None:
    path = make_shards(tmp_path / "d", n=8, shards=1)
    shard = next(path.glob("*.tar"))
    _rewrite_member(shard, "s-0003", "json", b"{not json")
    _rewrite_member(shard, "s-0005", "png", None)
    # No shuffling: the order is s-0000..s-0007, so three batches of two read exactly the whole shard.
    stream = _stream(path, pre, workers=0, batch=2, on_error="skip", buffer=1)
    ids = [i for _ in range(3) for i in next(stream)["ids"]]
    assert stream.state.skipped == 2
    assert "s-0003" not in ids and "s-0005" not in ids and len(ids) == 6


def test_truncated_tar_is_reported(tmp_path: Path, pre: Preprocessor) -> None:
    path = make_shards(tmp_path / "d", n=8, shards=1)
    shard = next(path.glob("*.tar"))
    shard.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(SampleError, match=r"shard-000000\.tar: corrupt tar"):
        stream = _stream(path, pre, workers=0, batch=2)
        for _ in range(4):
            next(stream)


def test_member_path_traversal_is_rejected(tmp_path: Path, pre: Preprocessor) -> None:
    path = make_shards(tmp_path / "d", n=4, shards=1)
    shard = next(path.glob("*.tar"))
    with tarfile.open(shard, "a") as tar:
        info = tarfile.TarInfo("../evil.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(SampleError, match=r"unsafe member path"):
        stream = _stream(path, pre, workers=0, batch=2)
        for _ in range(3):
            next(stream)
