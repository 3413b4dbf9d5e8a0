"""Run under `deepspeed --num_gpus 2` by tests/test_reference_zero3.py.

Trains npo_full a few steps with the real run pieces, then gathers every ZeRO-3 partitioned parameter of
the policy and of the separately loaded reference engine and compares them with the checkpoint on disk.
Writes {"reference_changed": [...], "policy_changed": n} to argv[2] from rank 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import deepspeed  # noqa: E402
import torch  # noqa: E402

from mirage_ds.config import load_config  # noqa: E402
from mirage_ds.engine.distributed import init_distributed, teardown_distributed  # noqa: E402
from mirage_ds.engine.loop import build_run, train_step  # noqa: E402
from mirage_ds.losses.base import LossContext  # noqa: E402
from mirage_ds.models.loading import load_model, resolve_model_path  # noqa: E402


def main(out_dir: str, result_path: str) -> None:
    # The untrained tiny model, as every run of the suite (tests/conftest.py's UNTRAINED).
    cfg = load_config("npo_full", ["model.embedded_base=random", f"output_dir={out_dir}", "micro_batch_size=2",
                                   "optim.lr=1e-2"])
    rank, world = init_distributed()
    run = build_run(cfg, rank, world)
    assert world == 2 and run.engine.zero_optimization_partition_weights()
    ctx = LossContext(reference=run.reference)
    for step in range(1, 4):
        train_step(run, ctx, step)
    # Loaded plainly (no ZeRO-3 context is alive any more), so parameter names match the modules'.
    base = dict(load_model(resolve_model_path(cfg.model), cfg.model).named_parameters())
    reference_changed, policy_changed = [], 0
    pairs = zip(run.reference.module.named_parameters(), run.engine.module.named_parameters())
    for (name, ref_param), (_, policy_param) in pairs:
        with deepspeed.zero.GatheredParameters([ref_param, policy_param]):
            if not torch.equal(ref_param.data.cpu(), base[name].data):
                reference_changed.append(name)
            policy_changed += int(not torch.equal(policy_param.data.cpu(), base[name].data))
    if rank == 0:
        Path(result_path).write_text(json.dumps({"reference_changed": reference_changed, "policy_changed": policy_changed}))
    teardown_distributed(clean=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the deepspeed launcher adds it
    main(args[0], args[1])
