"""SPA-VL's test splits as evaluation cases: ``harm`` (ASR) and ``help`` (RR), each a row of its own.

Safety Mirage's Table 1 reports them beside VLGuard: ``harm`` questions are harmful, and a response counts
as an attack success as on VLGuard's unsafes (not refused by the keyword filter, and judged relevant
when a VLM judge is given); ``help`` questions are benign, and a refusal counts against the model (RR).
Neither split is attacked: each case holds its originals only, so the suite reports a "before" rate
(``eval/suite.py`` generates, judges and rates them with the VLGuard cases, never pooled with them).
"""

from __future__ import annotations

from pathlib import Path

from mirage_ds.data.spavl import eval_queries
from mirage_ds.eval.cases import Asked, Metric, SubsetCase

SPLIT_METRIC: dict[str, Metric] = {"harm": "asr", "help": "rr"}


def spavl_cases(data_dir: Path, images_dir: Path | None = None, limit: int | None = None) -> list[SubsetCase]:
    """Rows ``spavl_harm`` (ASR) and ``spavl_help`` (RR) from SPA-VL's test splits under ``data_dir``;
    ``limit``: the first N questions of each split. Both splits must be there."""
    cases = []
    for split, metric in SPLIT_METRIC.items():
        name = f"spavl_{split}"
        case = SubsetCase(name, metric)
        sources: dict[str, None] = {}
        for query in eval_queries(data_dir, split, images_dir):
            if limit is not None and len(case.before) >= limit:
                break
            case.before.append(Asked(f"{name}/before/{len(case.before)}", query.question, query.image))
            sources[query.source] = None
        case.source = ", ".join(sources)
        cases.append(case)
    return cases
