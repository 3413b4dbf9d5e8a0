"""Utility through lmms-eval: our model as an lmms-eval model plugin, scored by lmms-eval's own tasks.

``MirageLMM`` subclasses lmms-eval's ``lmms`` and answers its requests with this project's preprocessing
(``eval.generation.Generator``: the LLaVA template, pad-to-square, the model's dtype), so a utility
number measures the model on the input that training and the safety evaluation give it.
``evaluate_utility`` hands the instance to ``lmms_eval.evaluator.simple_evaluate`` with the LLaVA-1.5
task profiles (``eval/utility_tasks.py``).

- ``generate_until``: greedy only (a task that asks to sample or beam-search is refused by name);
  ``max_new_tokens`` from the task (default 128, LLaVA-1.5's VQA scripts); the text is cut at the first
  of the task's ``until`` strings. One image per document, as LLaVA-1.5 takes.
- ``loglikelihood``: log p(continuation | context, image) summed over the continuation's tokens, the
  continuation being the assistant's answer in the same template (its closing ``</s>`` not counted), and
  whether greedy decoding picks exactly those tokens. The four profiled tasks never call it; lmms-eval's
  multiple-choice tasks do.

Offline data: lmms-eval reads a task's documents with ``datasets.load_dataset(dataset_path, ...)``. A local
task YAML in an ``include_paths`` directory that carries the upstream task's name (``task: vqav2_val``),
includes the upstream YAML by path and sets ``dataset_path: parquet`` with ``dataset_kwargs.data_files``
replaces the hub dataset with local files; with HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 nothing
reaches the hub.

Install (the ``lmms`` extra): ``pip install "mirage-ds[lmms]"`` where torch comes from PyPI. lmms-eval
0.7's requirements pull a CUDA torch and ~60 packages; on a stack pinned to a local CPU torch install
``pip install --no-deps "lmms-eval>=0.7.3,<0.8"`` and then ``pip install loguru evaluate tenacity pytz
sacrebleu "filelock<4"``, which is all that its evaluator and these four tasks import (lmms-eval 0.7.3
imports ``filelock._api``, gone in filelock 4).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from mirage_ds.data.images import encode_png
from mirage_ds.data.preprocess import Preprocessor
from mirage_ds.data.schema import Turn
from mirage_ds.data.template import IGNORE_INDEX
from mirage_ds.eval.generation import Generator, Prompt, load_for_eval
from mirage_ds.eval.utility_tasks import METRICS, MODEL_NAME, UTILITY_TEMPLATE, task_spec

try:
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms
except ImportError as err:  # the extra is optional: say how to get it
    raise ImportError(
        "lmms-eval is not installed: pip install 'mirage-ds[lmms]' (on a CPU-pinned torch: pip install --no-deps "
        "'lmms-eval>=0.7.3,<0.8' && pip install loguru evaluate tenacity pytz sacrebleu 'filelock<4')"
    ) from err

# LLaVA-1.5's model_vqa_loader default, for a task that sets no max_new_tokens (textvqa, vizwiz).
DEFAULT_MAX_NEW_TOKENS = 128
# Settings a greedy decoder honours as given; any other generation setting is refused by name.
GREEDY_SETTINGS = frozenset({"until", "max_new_tokens", "do_sample", "temperature", "top_p", "num_beams"})


def decoding(settings: dict[str, Any], task: str) -> tuple[int, tuple[str, ...]]:
    """(max_new_tokens, stop strings) of a task's generation settings; sampling or beams raise ValueError."""
    unknown = sorted(set(settings) - GREEDY_SETTINGS)
    if unknown:
        raise ValueError(f"task {task}: generation setting(s) {unknown} are not supported (greedy decoding; "
                         f"supported: {sorted(GREEDY_SETTINGS)})")
    sampling = bool(settings.get("do_sample")) or float(settings.get("temperature") or 0) > 0
    if sampling or int(settings.get("num_beams") or 1) != 1:
        raise ValueError(f"task {task} asks for sampling or beam search; the mirage-ds plugin decodes greedily")
    until = settings.get("until") or ()
    stops = (until,) if isinstance(until, str) else tuple(until)
    return int(settings.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS), stops


def cut(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string, stripped."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text.strip()


class MirageLMM(lmms):
    """An lmms-eval model: ``model`` (a LLaVA module with whole parameters on this process: an export's, or a
    live model's; a ZeRO-3 engine's must be gathered first) with its tokenizer and image processor, asked
    through ``Generator`` under ``template`` in batches of ``batch_size``."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, image_processor: Any, *,
                 template: str = UTILITY_TEMPLATE, batch_size: int = 16, pad_to_square: bool = True,
                 max_length: int = 2048, progress: bool = True) -> None:
        super().__init__()
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.template, self.batch_size, self.pad_to_square = template, batch_size, pad_to_square
        self.max_length, self.progress = max_length, progress
        self._generators: dict[int, Generator] = {}

    @classmethod
    def from_export(cls, path: Path, dtype: torch.dtype = torch.float32, **options: Any) -> MirageLMM:
        """The plugin over an export directory (HF weights, or a PEFT adapter merged into its base)."""
        return cls(*load_for_eval(path, dtype), **options)

    def clean(self) -> None:
        """lmms-eval calls this after generating and deletes the plugin's modules; the caller owns the model
        (a live engine goes on training after evaluating), so nothing is freed here."""

    def generator(self, max_new_tokens: int) -> Generator:
        if max_new_tokens not in self._generators:
            self._generators[max_new_tokens] = Generator(
                self.model, self.tokenizer, self.image_processor, batch_size=self.batch_size,
                max_new_tokens=max_new_tokens, max_length=self.max_length, pad_to_square=self.pad_to_square,
                template=self.template, progress=False)
        return self._generators[max_new_tokens]

    @property
    def preprocessor(self) -> Preprocessor:
        return self.generator(DEFAULT_MAX_NEW_TOKENS).pre

    def image(self, doc_to_visual: Callable[[Any], list[Any]], doc_id: int, task: str, split: str) -> bytes:
        """The one image of a document, as PNG bytes (what ``Preprocessor`` reads)."""
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        if len(visuals) != 1 or not isinstance(visuals[0], Image.Image):
            raise ValueError(f"task {task}, document {doc_id}: {len(visuals)} visuals; the plugin takes exactly one "
                             "image per question, as LLaVA-1.5 does")
        return encode_png(visuals[0])

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy answers, in request order; requests are grouped by decoding, then batched."""
        groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        for i, request in enumerate(requests):
            _, settings, _, _, task, _ = request.args
            groups.setdefault(decoding(settings, task), []).append(i)
        out = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="lmms generate", disable=not self.progress or self.rank != 0)
        for (max_new_tokens, until), members in groups.items():
            # Images are encoded one batch at a time: a VQAv2 split's images do not fit in memory at once.
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                prompts = []
                for i in chunk:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    prompts.append(Prompt(str(i), context, self.image(doc_to_visual, doc_id, task, split)))
                answers = self.generator(max_new_tokens).generate(prompts)
                for i in chunk:
                    out[i] = cut(answers[str(i)], until)
                bar.update(len(chunk))
        bar.close()
        return out

    @torch.no_grad()
    def continuation_logprob(self, context: str, continuation: str, image: bytes, where: str) -> tuple[float, bool]:
        """(sum of log p over the continuation's tokens, whether greedy decoding picks each of them).

        The continuation is the assistant's answer; its leading whitespace (lm-eval's " answer" convention)
        is dropped because the template puts the one space after "ASSISTANT:" itself.
        """
        pre = self.preprocessor
        turns = [Turn(role="user", text=context), Turn(role="assistant", text=continuation.lstrip())]
        encoded = pre.template.encode(turns, where)
        answer = [p for p, label in enumerate(encoded.labels) if label != IGNORE_INDEX]
        if not answer or encoded.input_ids[answer[-1]] != self.tokenizer.eos_token_id:
            raise ValueError(f"{where}: the continuation does not fit max_length={self.max_length}")
        positions = answer[:-1]  # the closing </s> belongs to the template, not to the continuation
        device = next(self.model.parameters()).device
        ids = torch.tensor([encoded.input_ids], device=device)
        pixels = pre.pixels(image, where).unsqueeze(0).to(device)
        logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels).logits[0].float()
        # Token p is predicted by the logits at p - 1.
        scores = torch.log_softmax(logits[[p - 1 for p in positions]], dim=-1)
        targets = ids[0, positions]
        logprob = scores.gather(1, targets[:, None]).sum().item()
        return logprob, bool((scores.argmax(dim=-1) == targets).all())

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        out = []
        for request in requests:
            context, target, doc_to_visual, doc_id, task, split = request.args
            continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            image = self.image(doc_to_visual, doc_id, task, split)
            out.append(self.continuation_logprob(context, continuation, image, f"task {task}, document {doc_id}"))
        return out

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("multi-round generation: the mirage-ds plugin answers single-turn tasks only")


def task_manager(include_paths: Sequence[Path] = ()) -> Any:
    """lmms-eval's task index over ``include_paths`` (local task YAMLs) and its own tasks.

    A local YAML named like an upstream task replaces it: lmms-eval's default index lets the upstream
    one win, so the index is built from the local directories first and the upstream directory last.
    """
    import lmms_eval.tasks

    upstream = str(Path(lmms_eval.tasks.__file__).parent)
    return lmms_eval.tasks.TaskManager("WARNING", include_path=[str(p) for p in include_paths] + [upstream],
                                       include_defaults=False, model_name=MODEL_NAME)


def check_tasks(manager: Any, tasks: Sequence[str]) -> None:
    """ValueError naming any task ``manager`` does not know (before a model is loaded for nothing)."""
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown lmms-eval task(s) {unknown}; local task YAMLs go in an --include-path directory")


def evaluate_utility(plugin: MirageLMM, tasks: Sequence[str], manager: Any, *, limit: int | None = None,
                     out_dir: Path | None = None, seed: int = 0) -> dict[str, dict[str, Any]]:
    """lmms-eval's scores for ``tasks`` on ``plugin``: ``{task: {metric, value, stderr, n}}``.

    ``manager``: ``task_manager(...)``; ``limit``: the first N documents of each task; ``out_dir``: where
    tasks that write submission files (``textvqa_val``) put them.
    """
    from lmms_eval.evaluator import simple_evaluate

    check_tasks(manager, tasks)
    # lmms-eval reads its CLI namespace for these two: where submission files go, and that documents may
    # be scored without their images (its CLI's default).
    cli = argparse.Namespace(output_path=None if out_dir is None else str(out_dir), process_with_media=False)
    results = simple_evaluate(model=plugin, tasks=[task_spec(t) for t in tasks], task_manager=manager, limit=limit,
                              log_samples=False, verbosity="WARNING", cli_args=cli, random_seed=seed,
                              numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    scores: dict[str, dict[str, Any]] = {}
    for task in tasks:
        row = results["results"][task]
        # A task outside the profiles reports under the first metric its YAML lists.
        metric = METRICS.get(task) or next(k.split(",")[0] for k in row if k.endswith(",none") and "_stderr" not in k)
        scores[task] = {"metric": metric, "value": row[f"{metric},none"], "stderr": row.get(f"{metric}_stderr,none"),
                        "n": results["n-samples"][task]["effective"]}
    return scores
