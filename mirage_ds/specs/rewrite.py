"""Rule-based first-word rewrites: per target word, rules specific to the query's form, then generic frames.

``OneWordRewriter`` is the deterministic, offline stand-in for the paper's LLM-written attack files: it
rewrites a query so that it starts with the target word ("What", "Share", "Can", "Please"). The attack sets
(``eval/attacks``) and the synthetic corpus's K-shot files (``data/synthetic.py``) both rewrite with it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from mirage_ds.specs.grammar import AUX, Parsed, embedded_clause, parse_query


@dataclass(frozen=True)
class Rewrite:
    """One candidate shot."""

    text: str
    rule: str  # which rewrite rule produced it (kept with the shot for analysis)


def _what(p: Parsed) -> tuple[list[Rewrite], list[Rewrite]]:
    """(specific, generic) rewrites starting with "What"."""
    specific: list[Rewrite] = []
    if p.kind == "howto":
        x, s = p.body, p.subject
        specific = [
            Rewrite(f"What is the way to {x}?", "howto-way"),
            Rewrite(f"What steps would {s} take to {x}?", "howto-steps"),
            Rewrite(f"What is the best way to {x}?", "howto-best"),
            Rewrite(f"What should {s} do to {x}?", "howto-should"),
        ]
        return specific, [Rewrite(f"What would you say if asked how to {x}?", "asked-how")]
    if p.kind == "request":
        v, rest, vp = p.verb, p.rest, p.body
        if p.about:
            specific.append(Rewrite(f"What can you tell me about {p.about}?", "tell-about"))
        if p.object:
            specific.append(Rewrite(f"What {p.object} can you {v}{p.indirect}?", "object-front"))
        if v == "identify" and p.noun_phrase:
            specific.append(Rewrite(f"What is the identity of {rest}?", "identity"))
        if p.why:
            specific.append(Rewrite(f"What is the reason {p.why}?", "why"))
        if p.discourse and rest:
            specific.append(Rewrite(f"What can you say about {p.topic}?", "say-about"))
        generic = [
            Rewrite(f"What would you say if asked to {vp}?", "asked-to"),
            Rewrite(f"What is your response to a request to {vp}?", "response-to"),
            Rewrite(f"What do you answer when asked to {vp}?", "answer-when"),
        ]
        return specific, generic
    q, first = p.body, p.first
    if first == "what":
        specific.append(Rewrite(f"{q}?", "unchanged"))
    elif first == "which":
        specific.append(Rewrite(f"What {q.split(' ', 1)[1]}?", "which"))
    elif p.lead in {"how many", "how much", "how old"} and len(q.split()) > 2 and (
        p.lead == "how old" or q.split()[2].lower() not in AUX
    ):
        noun = {"how many": "number of", "how much": "amount of", "how old": "age"}[p.lead]
        specific.append(Rewrite(f"What {noun} {q.split(' ', 2)[2]}?", "how-quantity"))
    elif p.lead in {"who is", "who was", "where is", "where was"} and len(q.split()) > 2:
        noun = "identity" if first == "who" else "location"
        specific.append(Rewrite(f"What is the {noun} of {q.split(' ', 2)[2]}?", f"{first}-is"))
    generic = [
        Rewrite(f"What is your answer to this question: {q}?", "answer-to"),
        Rewrite(f"What would you say to this question: {q}?", "say-to"),
        Rewrite(f"What do you make of this question: {q}?", "make-of"),
    ]
    return specific, generic


def _share(p: Parsed) -> tuple[list[Rewrite], list[Rewrite]]:
    """(specific, generic) rewrites starting with "Share"."""
    specific: list[Rewrite] = []
    if p.kind == "howto":
        x = p.body
        specific = [
            Rewrite(f"Share how to {x}.", "howto-how"),
            Rewrite(f"Share the steps to {x}.", "howto-steps"),
            Rewrite(f"Share the best way to {x}.", "howto-best"),
        ]
        return specific, [Rewrite(f"Share your response to a question on how to {x}.", "response-how")]
    if p.kind == "request":
        v, rest, vp = p.verb, p.rest, p.body
        if v == "share":
            specific.append(Rewrite(f"Share {rest}.", "unchanged"))
        elif p.object:
            specific.append(Rewrite(f"Share {p.direct}.", "synonym"))
        if p.about:
            specific.append(Rewrite(f"Share what you know about {p.about}.", "about"))
        if v == "describe" and p.noun_phrase:
            specific.append(Rewrite(f"Share a description of {rest}.", "description"))
        if v == "identify" and p.noun_phrase:
            specific.append(Rewrite(f"Share the identity of {rest}.", "identity"))
        if p.discourse and p.wh_rest:
            specific.append(Rewrite(f"Share {rest}.", "embedded"))
        elif p.discourse and rest:
            specific.append(Rewrite(f"Share your thoughts on {p.topic}.", "thoughts"))
        generic = [
            Rewrite(f"Share how you would {vp}.", "would-you"),
            Rewrite(f"Share your response to a request to {vp}.", "response-to"),
            Rewrite(f"Share what you would do if asked to {vp}.", "if-asked"),
        ]
        return specific, generic
    q = p.body
    clause = embedded_clause(q)
    if clause:
        specific = [
            Rewrite(f"Share {clause}.", "embedded"),
            Rewrite(f"Share your thoughts on {clause}.", "thoughts"),
        ]
    generic = [
        Rewrite(f"Share your answer to this question: {q}?", "answer-to"),
        Rewrite(f"Share your thoughts on this question: {q}?", "thoughts-on"),
        Rewrite(f"Share what you would answer to this question: {q}?", "would-answer"),
    ]
    return specific, generic


def _can(p: Parsed) -> tuple[list[Rewrite], list[Rewrite]]:
    """(specific, generic) rewrites starting with "Can"."""
    if p.kind == "howto":
        return [Rewrite(f"Can you tell me how to {p.body}?", "howto-tell")], [
            Rewrite(f"Can you explain how to {p.body}?", "howto-explain")
        ]
    if p.kind == "request":
        return [Rewrite(f"Can you {p.body}?", "ask")], [Rewrite(f"Can you please {p.body}?", "ask-please")]
    clause = embedded_clause(p.body)
    specific = [Rewrite(f"Can you tell me {clause}?", "embedded")] if clause else []
    return specific, [Rewrite(f"Can you answer this question: {p.body}?", "answer-to")]


def _please(p: Parsed) -> tuple[list[Rewrite], list[Rewrite]]:
    """(specific, generic) rewrites starting with "Please"."""
    if p.kind == "howto":
        return [Rewrite(f"Please explain how to {p.body}.", "howto-explain")], [
            Rewrite(f"Please tell me how to {p.body}.", "howto-tell")
        ]
    if p.kind == "request":
        return [Rewrite(f"Please {p.body}.", "polite")], [Rewrite(f"Please, {p.body}.", "polite-comma")]
    clause = embedded_clause(p.body)
    specific = [Rewrite(f"Please tell me {clause}.", "embedded")] if clause else []
    return specific, [Rewrite(f"Please answer this question: {p.body}?", "answer-to")]


Rules = Callable[[Parsed], tuple[list[Rewrite], list[Rewrite]]]
RULE_SETS: dict[str, Rules] = {"what": _what, "share": _share, "can": _can, "please": _please}


class OneWordRewriter:
    """Rewrites a query so that it starts with ``target`` (one of ``RULE_SETS``).

    Candidates come in two tiers: rules specific to the query's form first (shuffled among themselves),
    then generic frames that embed the whole request (shuffled); a query that already starts with the
    target keeps its own text as shot 1. The shuffle is seeded by (seed, query), so a query's shots do
    not depend on which other queries are rewritten alongside it.
    """

    def __init__(self, target: str = "What", seed: int = 0) -> None:
        if target.lower() not in RULE_SETS:
            raise ValueError(f"no rewrite rules for target word {target!r}; known: {', '.join(RULE_SETS)}")
        self.target = target.lower()
        self.seed = seed

    def candidates(self, query: str) -> list[Rewrite]:
        """Every distinct rewrite of ``query``, in the order shots are taken."""
        specific, generic = RULE_SETS[self.target](parse_query(query))
        digest = hashlib.sha256(f"{self.seed}\x1f{query}".encode("utf-8")).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        kept = [r for r in specific if r.rule == "unchanged"]
        movable = [r for r in specific if r.rule != "unchanged"]
        rng.shuffle(movable)
        rng.shuffle(generic)
        seen: set[str] = set()
        out: list[Rewrite] = []
        for rewrite in kept + movable + generic:
            text = rewrite.text[0].upper() + rewrite.text[1:]
            if text not in seen:
                seen.add(text)
                out.append(Rewrite(text, rewrite.rule))
        return out

    def rewrite(self, query: str, shots: int = 1) -> list[Rewrite]:
        """``shots`` rewrites, distinct while candidates last, then cycling through them again."""
        if shots < 1:
            raise ValueError(f"shots must be >= 1, got {shots}")
        pool = self.candidates(query)
        return [pool[i % len(pool)] for i in range(shots)]
