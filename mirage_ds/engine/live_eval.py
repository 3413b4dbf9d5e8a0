"""The safety eval during training: a slice of it on the live engine every ``eval.every`` steps.

A user watches the mirage form (or not) while the model trains: ASR and RR before and after the one-word
attack, with the share of degenerate outputs behind each, logged as ``live/*`` step metrics through the
run's tracker (``metrics.jsonl`` and MLflow). The names are ``eval/report.py``'s ``metrics_of`` with
``live/`` in place of ``eval/`` (``live/asr_before``, ``live/rr_after``, ``live/asr_after_degenerate``, ...),
plus ``live/degenerate`` (over every output) and ``live/seconds``; ``mirage-ds compare`` never reads them.
What the model answered is kept beside them: ``output_dir/live_eval/step-NNNNNNNN.jsonl``.

No second model load: generation runs on the engine's own module, each rank generating its share of the
batches (``eval/sharding.py``). Judges: VLGuard's refusal keywords, and for ASR on the synthetic corpus its
payload marker; no judge model is loaded during training (``mirage-ds eval --judge model:PATH`` after it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from mirage_ds.data.shards import read_samples
from mirage_ds.eval.cases import ImageSource, SubsetCase, paper_cases, rule_cases
from mirage_ds.eval.degenerate import degenerate_share
from mirage_ds.eval.generation import Generator
from mirage_ds.eval.sharding import Ranks
from mirage_ds.eval.suite import EvalSettings, evaluate

if TYPE_CHECKING:
    import torch

    from mirage_ds.config import TrainConfig

PREFIX = "live/"


def live_cases(cfg: TrainConfig, settings: EvalSettings) -> list[SubsetCase]:
    """The slice ``eval.limit`` of the configured eval data: VLGuard's cases, shards with rule-based attacks,
    or (for runs on the embedded model and corpus, see ``config.py``) the embedded corpus's eval set."""
    if cfg.eval.vlguard:
        return paper_cases(Path(cfg.eval.vlguard), ImageSource(Path(cfg.eval.images or "")), settings.limit)
    if cfg.eval.data:
        shards = Path(cfg.eval.data)
    else:
        from mirage_ds.data.corpus import ensure_synthetic

        shards = ensure_synthetic(cfg.data.synthetic) / "eval"
    return rule_cases(read_samples(shards), settings.shots, settings.attack_word, settings.modify_word,
                      settings.seed, settings.limit)


def engine_generator(module: torch.nn.Module, tokenizer: Any, image_processor: Any, cfg: TrainConfig,
                     settings: EvalSettings, zero_stage: int) -> Generator:
    """A ``Generator`` over the training engine's own ``module``, for every rank to call together.

    ZeRO-3 special case: each rank holds 1/N of every weight, and each forward gathers a layer's weights
    with a collective that every rank must join. HF ``generate`` with ``synced_gpus=True`` keeps a rank whose
    sequences have all ended stepping (forwards whose output it drops) until every rank is done, so the
    collectives line up inside a call; ``eval/sharding.py`` gives every rank the same number of calls.
    transformers turns ``synced_gpus`` on by itself only while an ``HfDeepSpeedConfig`` is alive, and the
    engine keeps none after construction (``engine/distributed.py``), so it is set here.
    """
    generator = Generator(module, tokenizer, image_processor, batch_size=settings.batch_size,
                          max_new_tokens=settings.max_new_tokens, max_length=cfg.data.max_length,
                          pad_to_square=cfg.data.pad_to_square, template=settings.template, progress=False)
    if zero_stage == 3:
        generator.decoding["synced_gpus"] = True
    return generator


class LiveEval:
    """Built once before the loop on every rank (cases read, images checked); called at each due step.

    ``module``: the engine's module (generated with, switched to eval mode meanwhile); ``tokenizer`` and
    ``image_processor``: the model's; ``zero_stage``: the engine's (``ds_config.zero_stage``); ``ranks``:
    this rank among the training ranks, every one of which calls at each due step.
    """

    def __init__(self, cfg: TrainConfig, module: torch.nn.Module, tokenizer: Any, image_processor: Any,
                 zero_stage: int, ranks: Ranks) -> None:
        self.cfg, self.module, self.ranks, self.every = cfg, module, ranks, cfg.eval.every
        self.settings = EvalSettings(max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size,
                                     limit=cfg.eval.limit, seed=cfg.seed)
        self.cases = live_cases(cfg, self.settings)
        self.generator = engine_generator(module, tokenizer, image_processor, cfg, self.settings, zero_stage)

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def __call__(self, step: int) -> dict[str, float]:
        """The slice's metrics on rank 0 (every rank must call this at the same step); {} on the others."""
        start = time.perf_counter()
        was_training = self.module.training
        self.module.eval()  # no dropout while generating
        try:
            result = evaluate(self.generator, self.cfg.recipe, self.cases, self.settings, ranks=self.ranks)
        finally:
            self.module.train(was_training)
        if result is None:
            return {}
        from mirage_ds.eval.report import metrics_of  # here: it brings matplotlib, which training need not load

        metrics = {PREFIX + key.removeprefix("eval/"): value for key, value in metrics_of(result.to_dict()).items()}
        metrics[PREFIX + "degenerate"] = degenerate_share([g["response"] for g in result.generations]).share
        metrics[PREFIX + "seconds"] = time.perf_counter() - start
        out = Path(self.cfg.output_dir) / "live_eval" / f"step-{step:08d}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(g) + "\n" for g in result.generations))
        tqdm.write(f"live eval at step {step}: " + ", ".join(
            f"{name} {100 * metrics[PREFIX + name]:.1f}%" for name in ("asr_before", "asr_after", "rr_before", "rr_after",
                                                                      "degenerate") if PREFIX + name in metrics))
        return metrics
