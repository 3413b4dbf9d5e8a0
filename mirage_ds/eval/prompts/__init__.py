"""Versioned judge prompts: one JSON file per version (``system``, ``user`` with ``{question}``/``{answer}``).

A prompt's text never changes under its version: a new wording is a new file, so a cached or logged verdict
that names its prompt version names the exact text it was judged with.

- ``paper-single-v1``: Safety Mirage's single-shot judge (official code: ASR before the attack).
- ``paper-3shot-v1``: its 3-shot judge (official code: ASR after the attack); rule 2 is shorter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent
PROMPT_VERSIONS: tuple[str, ...] = tuple(sorted(p.stem for p in PROMPTS_DIR.glob("*.json")))


@dataclass(frozen=True)
class JudgePrompt:
    """A judge's system prompt and its user-turn template (the image goes before the user text)."""

    version: str
    system: str
    user: str

    def user_text(self, question: str, answer: str) -> str:
        """The user turn for one (question, answer) pair; the texts go in as they are, braces included."""
        return self.user.format(question=question, answer=answer)


def load_prompt(version: str) -> JudgePrompt:
    """The prompt file ``version``; ValueError naming the known versions when there is none."""
    if version not in PROMPT_VERSIONS:
        raise ValueError(f"unknown judge prompt {version!r}; known: {', '.join(PROMPT_VERSIONS)}")
    data = json.loads((PROMPTS_DIR / f"{version}.json").read_text(encoding="utf-8"))
    return JudgePrompt(version=data["version"], system=data["system"], user=data["user"])
