"""Utility task profiles: lmms-eval's task definitions asked with LLaVA-1.5's own prompts.

lmms-eval picks a task's prompt settings (``lmms_eval_specific_kwargs``) by model name and falls back to
the task's ``default``; a profile pins the prompt that LLaVA-1.5's evaluation scripts use
(docs/paper-protocol.md, section 4) under our plugin's name, so an upstream change of a default cannot move the
number. A profile changes the prompt only: data, splits, decoding and scoring stay the task's own, from
its YAML (or from a local YAML that replaces it, see ``eval/lmms.py``).

- ``vqav2_val``: the question, then "\\nAnswer the question using a single word or phrase."
- ``textvqa_val``: the same, with LLaVA's OCR line "\\nReference OCR token: t1, t2, ..." before the
  instruction (lmms-eval's default leaves it out).
- ``vizwiz_vqa_val``: "\\nWhen the provided information is insufficient, respond with 'Unanswerable'."
  before the instruction.
- ``scienceqa_img``: "Context: {hint}\\n" when there is a hint, the question, the lettered choices, then
  "\\nAnswer with the option's letter from the given choices directly."

lmms-eval's TextVQA and VizWiz tasks ``str.capitalize()`` the question (first letter up, the rest down);
LLaVA's question files keep its case. That is the tasks' own text, left as it is.

Torch-free: the CLI reads it to build its help without loading torch or lmms-eval.
"""

from __future__ import annotations

from typing import Any

# The name the plugin gives lmms-eval: no upstream YAML has settings for it, so only a profile applies.
MODEL_NAME = "mirage_ds"
# LLaVA-1.5's VQA and ScienceQA scripts run ``--conv-mode vicuna_v1`` (the safety evaluation: llava_v1).
UTILITY_TEMPLATE = "vicuna_v1"

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
PROFILES: dict[str, dict[str, Any]] = {
    "vqav2_val": {"pre_prompt": "", "post_prompt": SHORT_ANSWER},
    "textvqa_val": {"pre_prompt": "", "post_prompt": SHORT_ANSWER, "ocr": True},
    "vizwiz_vqa_val": {
        "pre_prompt": "",
        "post_prompt": "\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT_ANSWER,
    },
    "scienceqa_img": {
        "format": "default",
        "pre_prompt": "",
        "post_prompt": "\nAnswer with the option's letter from the given choices directly.",
    },
}
# The metric each profiled task reports (lmms-eval's key is "<metric>,<filter>"; these tasks use "none").
METRICS: dict[str, str] = {name: "exact_match" for name in PROFILES}


def task_spec(name: str) -> str | dict[str, Any]:
    """What ``simple_evaluate`` gets for task ``name``: a profiled task as a config override that lmms-eval
    merges over the task's YAML, any other task by name as it stands."""
    if name not in PROFILES:
        return name
    return {"task": name, "lmms_eval_specific_kwargs": {MODEL_NAME: dict(PROFILES[name])}}
