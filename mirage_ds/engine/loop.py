"""The training loop, top to bottom: build, step, log, checkpoint, export.

Exit codes (``RunStatus``): 0 finished, 3 preempted after a checkpoint (resume with ``resume=auto``),
4 stopped on a non-finite loss or gradient norm (no update applied, the last good checkpoint kept).
"""

from __future__ import annotations

import enum
import json
import logging
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import AutoConfig

from mirage_ds.config import TrainConfig, flatten, save_config
from mirage_ds.data.corpus import data_header, resolve_streams
from mirage_ds.data.preprocess import Preprocessor
from mirage_ds.data.streamer import Batches, ShardStream, StreamState, collate_padded
from mirage_ds.data.template import Template
from mirage_ds.engine.checkpoint import load_checkpoint, resume_point, save_checkpoint
from mirage_ds.engine.distributed import init_distributed, local_rank_zero_first, teardown_distributed, zero3_construction
from mirage_ds.engine.ds_config import build_ds_config, zero_stage
from mirage_ds.engine.export import export_model
from mirage_ds.engine.faults import Faults
from mirage_ds.engine.live_eval import LiveEval
from mirage_ds.engine.optim import build_optimizer, build_scheduler
from mirage_ds.engine.reference import Reference, build_reference
from mirage_ds.engine.stop import StopSignal
from mirage_ds.eval.sharding import Ranks
from mirage_ds.losses.base import Loss, LossContext, to_device
from mirage_ds.losses.registry import build_loss
from mirage_ds.models.loading import DTYPES, ModelBundle, build_model, resolve_model_path
from mirage_ds.tracking import Tracker, build_tracker, library_versions, system_metrics, truncate_metrics

log = logging.getLogger(__name__)


class RunStatus(enum.IntEnum):
    FINISHED = 0
    PREEMPTED = 3
    NONFINITE = 4


def restrict_trainable(model: torch.nn.Module, pattern: str) -> None:
    """Only parameters whose name matches ``pattern`` train (e.g. RMU's layers l-2..l down_proj)."""
    regex = re.compile(pattern)
    matched = 0
    for name, param in model.named_parameters():
        param.requires_grad_(bool(regex.search(name)))
        matched += param.requires_grad
    if matched == 0:
        raise ValueError(f"trainable pattern {pattern!r} matches no parameter")


def train(cfg: TrainConfig, stop: StopSignal, resolved: dict[str, Any] | None = None) -> RunStatus:
    """``resolved``: how the launcher reached ``cfg`` from the request (engine/resolution.py), recorded with it."""
    rank, world = init_distributed()
    clean = False
    try:
        status = _train(cfg, rank, world, stop, resolved or {})
        clean = True
        return status
    finally:
        teardown_distributed(clean)


@dataclass
class Run:
    """Everything the loop touches, built once by ``build_run``."""

    cfg: TrainConfig
    rank: int
    world: int
    engine: Any
    bundle: ModelBundle
    loss_fn: Loss
    reference: Reference | None
    streams: dict[str, Batches]
    stream_dirs: dict[str, Path | list[Path]]  # what each stream reads (data/corpus.py)
    ds_config: dict[str, Any]
    start_step: int
    resumed_from: Path | None
    faults: Faults  # the test seam (engine/faults.py): no fault unless a test's environment asks for one
    skipped: int = 0  # steps dropped as non-finite under ``nonfinite=skip`` (kept across resumes)

    def rank_state(self, step: int) -> dict[str, Any]:
        return {"step": step, "skipped": self.skipped, "streams": {n: b.state.to_dict() for n, b in self.streams.items()}}

    def save_checkpoint(self, step: int, tracker: Tracker) -> None:
        """Collective: the engine and this rank's state as ``output_dir/checkpoints/step-N``. The metrics logged
        so far are made durable first: a checkpoint never outlives the rows of the steps it holds."""
        tracker.sync()
        save_checkpoint(self.engine, Path(self.cfg.output_dir) / "checkpoints", step, self.rank_state(step),
                        self.cfg.checkpoint.keep, self.faults)


def build_run(cfg: TrainConfig, rank: int, world: int) -> Run:
    """Data, model, engine, reference, resume: in that order, every rank alike."""
    latest = resume_point(Path(cfg.output_dir), cfg.resume)  # before anything slow: it may refuse the output_dir
    torch.manual_seed(cfg.seed)
    loss_fn = build_loss(cfg.loss, cfg.model)
    needs = loss_fn.needs
    model_path, stream_dirs = local_rank_zero_first(lambda: (resolve_model_path(cfg.model), resolve_streams(cfg, needs.streams)))
    hidden = AutoConfig.from_pretrained(model_path, local_files_only=True).text_config.hidden_size
    ds_config = build_ds_config(cfg, world, hidden)
    with zero3_construction(ds_config, model_path):
        bundle = build_model(cfg.model)
    if needs.trainable:
        restrict_trainable(bundle.model, needs.trainable)
    optimizer = build_optimizer(bundle.model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.max_steps)
    engine, _, _, _ = deepspeed.initialize(model=bundle.model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    # from_pretrained returns eval mode and DeepSpeed keeps it; HF checkpoints activations only in train mode.
    engine.train()
    reference = build_reference(cfg, engine, ds_config, needs) if needs.reference else None

    start_step, skipped, states = 0, 0, {name: StreamState() for name in stream_dirs}
    if latest is not None:
        rank_state = load_checkpoint(engine, latest)
        start_step, skipped = rank_state["step"], rank_state.get("skipped", 0)
        states = {name: StreamState.from_dict(s) for name, s in rank_state["streams"].items()}

    template = Template(bundle.tokenizer, bundle.n_image_tokens, cfg.data.max_length, cfg.data.template)
    pre = Preprocessor(template, bundle.image_processor, cfg.data.pad_to_square, torch.float32)
    streams = {
        name: Batches(ShardStream(
            path, transform=pre.train_example, collate=collate_padded(bundle.tokenizer.pad_token_id),
            batch_size=cfg.micro_batch_size, seed=cfg.seed + i, rank=rank, world_size=world,
            num_workers=cfg.data.num_workers, shuffle_buffer=cfg.data.shuffle_buffer, on_error=cfg.data.on_error,
            state=states[name],
        ))
        for i, (name, path) in enumerate(stream_dirs.items())
    }
    return Run(cfg, rank, world, engine, bundle, loss_fn, reference, streams, stream_dirs, ds_config, start_step, latest,
               Faults.from_env(rank), skipped)


@dataclass
class StepResult:
    """One optimizer step as every rank sees it after the step's all-reduce."""

    means: dict[str, float]  # "loss" and the loss's terms, averaged over micro-steps and ranks
    samples: int  # summed over ranks
    tokens: int
    data_wait_s: float  # time spent in next() of the streams, mean over ranks
    stop_requested: bool  # some rank received the stop signal
    nonfinite: str | None  # "loss" or "gradient norm" when the update was discarded as non-finite


def train_step(run: Run, ctx: LossContext, step: int, stop_requested: bool = False) -> StepResult:
    """Optimizer step ``step`` (1-based, as logged): ``grad_accum`` micro-steps and one host sync.

    Loss terms, token counts and flags stay on the device until that sync: a ``float()`` of a device
    tensor would make the host wait for the GPU once per term and micro-step.
    """
    cfg, engine = run.cfg, run.engine
    dtype = DTYPES[cfg.model.dtype]
    sums: dict[str, torch.Tensor] = {}
    tokens = torch.zeros((), dtype=torch.int64, device=engine.device)
    samples, data_wait = 0, 0.0
    for micro in range(cfg.grad_accum):
        fetch = time.perf_counter()
        host_batches = {name: next(it) for name, it in run.streams.items()}
        data_wait += time.perf_counter() - fetch
        batches = {name: to_device(b, engine.device, dtype) for name, b in host_batches.items()}
        result = run.loss_fn(engine, batches, ctx)
        loss = run.faults.poison_loss(step, result.loss)
        for key, value in {"loss": loss.detach(), **result.terms}.items():
            sums[key] = sums.get(key, 0.0) + value / cfg.grad_accum
        samples += sum(len(b["ids"]) for b in batches.values())
        tokens = tokens + sum(b["attention_mask"].sum() for b in batches.values())
        if micro < cfg.grad_accum - 1:
            engine.backward(loss)
            engine.step()  # not a boundary: DeepSpeed only accumulates the gradients

    # The loop's one host sync per step (DeepSpeed's step adds its own, for the gradient norm): a single
    # all-reduce of the terms, counts and stop flag, after the last forward and before its backward, so
    # every rank knows the reduced loss before anything is applied.
    # Host numbers enter through torch.full (a kernel argument, not a host-to-device copy that would wait).
    extras = [torch.full((), float(v), dtype=torch.float64, device=engine.device) for v in (samples, data_wait, stop_requested)]
    reduced = torch.stack([*(t.double() for t in sums.values()), tokens.double(), *extras])
    dist.all_reduce(reduced)
    values = reduced.tolist()
    means = {key: value / run.world for key, value in zip(sums, values)}
    tokens_all, samples_all, wait_all, stop_any = values[len(sums):]
    loss_finite = math.isfinite(means["loss"])

    # Both checks go through DeepSpeed's own guard, which runs before the optimizer: its ZeRO step
    # discards an update whose global gradient norm is not finite (gradients cleared; weights, optimizer
    # state and scheduler untouched) and says so through was_step_applied(). A non-finite loss need not
    # have non-finite gradients (a NaN in a term without gradient), so it is given some: NaN times the loss.
    engine.backward(loss if loss_finite else loss * math.nan)
    engine.step()
    applied = engine.was_step_applied()
    if not loss_finite and applied:
        raise RuntimeError(f"step {step}: DeepSpeed {deepspeed.__version__} applied an update with non-finite gradients; "
                           "the non-finite guard needs its ZeRO step to discard it (check_grad_overflow)")
    nonfinite = None
    if not loss_finite:
        nonfinite = "loss"
    elif not applied and cfg.model.dtype != "fp16":  # under fp16 the dynamic loss scaler owns overflowed steps
        nonfinite = "gradient norm"
    return StepResult(means, int(samples_all), int(tokens_all), wait_all / run.world, bool(stop_any), nonfinite)


def save_loss_state(run: Run) -> None:
    """Tensors a loss keeps with the run (RMU's control vector), as safetensors in output_dir."""
    if run.rank == 0:
        for name, tensor in run.loss_fn.state().items():
            save_file({name: tensor.detach().cpu().contiguous()}, str(Path(run.cfg.output_dir) / f"{name}.safetensors"))


def _train(cfg: TrainConfig, rank: int, world: int, stop: StopSignal, resolved: dict[str, Any]) -> RunStatus:
    out_dir = Path(cfg.output_dir)
    run = build_run(cfg, rank, world)
    # What ran, read back from the loaded model rather than taken from the request.
    resolved = {**resolved, "attn_implementation": run.bundle.model.config._attn_implementation}

    if rank == 0:
        truncate_metrics(out_dir, run.start_step)
    tracker = build_tracker(cfg, rank)
    end = "FAILED"  # the MLflow run's status if anything below raises
    try:
        status = _log_and_train(run, tracker, stop, resolved)
        end = "FINISHED" if status == RunStatus.FINISHED else "KILLED"
        return status
    finally:
        tracker.close(end)  # delivers what is still queued, whatever happened


def _log_and_train(run: Run, tracker: Tracker, stop: StopSignal, resolved: dict[str, Any]) -> RunStatus:
    """The run's header (config, params, artifacts), then the loop: step, log, checkpoint, export."""
    cfg, rank, world, out_dir = run.cfg, run.rank, run.world, Path(run.cfg.output_dir)
    engine, streams = run.engine, run.streams
    if rank == 0:
        save_config(cfg, out_dir / "config.yaml", resolved)
        (out_dir / "ds_config.json").write_text(json.dumps(run.ds_config, indent=2))
        tracker.log_params({**flatten(cfg), **flatten(resolved, "resolved."), **library_versions()})
        data_lines, data_params = data_header(cfg, run.stream_dirs)  # synthetic corpus, placeholder images
        tracker.log_params(data_params)
        for line in data_lines:
            log.warning("%s", line)
        tracker.log_artifact(out_dir / "config.yaml")
        tracker.log_artifact(out_dir / "ds_config.json")
        if run.resumed_from is not None:
            log.warning("resumed from %s at step %d", run.resumed_from, run.start_step)

    # -- the loop ----------------------------------------------------------------------------------
    status = RunStatus.FINISHED
    # The bar only on rank 0's terminal: in a log file or a pipe its carriage-return redraws share one line
    # with the step lines (which say the same and more). On the terminal the step lines and rank 0's logging
    # go through tqdm.write, which takes the bar off its line and redraws it below.
    bar = tqdm(total=cfg.max_steps, initial=run.start_step, disable=rank != 0 or not sys.stderr.isatty(),
               desc=cfg.recipe, dynamic_ncols=True)
    ctx = LossContext(reference=run.reference)
    live_eval = None
    if cfg.eval.every:
        live_eval = LiveEval(cfg, engine.module, run.bundle.tokenizer, run.bundle.image_processor,
                             zero_stage(run.ds_config), Ranks(rank, world))
    step = run.start_step
    skipped_in_a_row = 0
    with bar, logging_redirect_tqdm():
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            lr = engine.get_lr()[0]  # the rate this step uses (the scheduler advances inside engine.step)
            result = train_step(run, ctx, step + 1, stop.raised)
            step += 1
            means = result.means
            if result.nonfinite:
                skipped_in_a_row += 1
                # Every rank decides alike on the reduced values; rank 0 says so, once.
                if cfg.nonfinite == "stop" or skipped_in_a_row >= cfg.nonfinite_max_skips:
                    why = "" if cfg.nonfinite == "stop" else f" after {skipped_in_a_row} such steps in a row"
                    if rank == 0:
                        log.error("non-finite %s at step %d (%s): no update applied; stopping%s, the last good "
                                  "checkpoint kept", result.nonfinite, step, means, why)
                    status = RunStatus.NONFINITE
                    break
                run.skipped += 1
                if rank == 0:
                    log.warning("non-finite %s at step %d (%s): update skipped", result.nonfinite, step, means)
                # The schedule follows the loop's step (what checkpoints, resume and metrics count), not the
                # number of applied updates, so a skipped step advances it as engine.step would have.
                engine.lr_scheduler.step()
            else:
                skipped_in_a_row = 0
            elapsed = time.perf_counter() - t0
            metrics = {
                **{f"train/{k}": v for k, v in means.items()},
                "train/lr": lr,
                "train/skipped": float(run.skipped),
                "perf/samples_per_s": result.samples / elapsed,
                "perf/tokens_per_s": result.tokens / elapsed,
                "perf/data_wait": result.data_wait_s / elapsed,  # fraction of the step spent waiting for batches
                "data/skipped": float(sum(b.state.skipped for b in streams.values())),
            }
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                tracker.log_metrics({**metrics, **(system_metrics() if rank == 0 else {})}, step)
                bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.2e}")
                if rank == 0:
                    tqdm.write(
                        f"step {step}/{cfg.max_steps} loss {means['loss']:.4f} lr {lr:.3e} "
                        f"samples/s {metrics['perf/samples_per_s']:.1f} tokens/s {metrics['perf/tokens_per_s']:.0f}"
                        + (f" skipped {int(metrics['data/skipped'])}" if metrics["data/skipped"] else "")
                    )
            bar.update(1)
            if result.stop_requested:
                run.save_checkpoint(step, tracker)
                status = RunStatus.PREEMPTED
                break
            if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < cfg.max_steps:
                run.save_checkpoint(step, tracker)
            if live_eval is not None and live_eval.due(step):
                tracker.log_metrics(live_eval(step), step)  # every rank generates; rank 0's tracker logs

    save_loss_state(run)
    if status == RunStatus.FINISHED:
        run.save_checkpoint(step, tracker)
        export_model(engine, run.bundle.path, out_dir / "export", cfg)
    return status

