"""The small grammar the one-word rewriter parses a query with: a query's first word, word lists and
three query forms.

``first_word`` is the one normalisation every first-word count in the project uses (shard metadata, the
shortcut table, the rewriter's rules).

A query is one of:

- ``howto``: asks for a procedure ("How do I X", "Can you tell me how to X", "Explain how to X");
  ``body`` is the action X (a verb phrase) and ``subject`` the asker ("I", "we" or "one").
- ``request``: an imperative, bare or behind politeness ("Describe X", "Can you provide X?",
  "Please identify X"); ``body`` is the verb phrase, ``verb`` its first word, ``rest`` the remainder.
- ``question``: anything else (wh-questions, yes/no questions); ``body`` is the question text.

Heuristics, not a parser: each rule applies only where its pattern matches, and the rewriter always
has generic frames that embed the whole query, so a form this grammar misreads still gets rewritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# A word: ASCII letters, with inner apostrophes kept ("what's", "can't").
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def first_word(text: str) -> str:
    """The first word of a query as every first-word count in the project sees it: lower-cased, leading
    punctuation and digits skipped, an inner apostrophe kept (typographic or not).

    "What's up?" -> "what's", "  'Can' you" -> "can", "N/A" -> "n", "1. Describe" -> "describe", "" -> "".
    """
    found = _WORD.search(text.lower().replace("\u2019", "'"))
    return found.group(0) if found else ""


WH = frozenset({"what", "which", "who", "whom", "whose", "where", "when", "why", "how"})
COPULA = frozenset({"is", "are", "was", "were"})
DO = frozenset({"do", "does"})
MODALS = frozenset({"can", "could", "would", "should", "will", "might", "may", "must", "shall"})
AUX = COPULA | DO | MODALS | {"did", "has", "have", "had", "am"}

# First words that make a query a question rather than an imperative.
NON_VERBS = WH | AUX | frozenset(
    "i you we they he she it this that these those the a an my your our their his her its there here some any "
    "all each every in on at based given considering according from with without if as after before for to "
    "by of n na not no yes".split()
)

# Imperatives whose object can be fronted: "Provide X" -> "What X can you provide?", "Share X."
OBJECT_VERBS = frozenset(
    "provide give generate create write suggest list recommend offer compose draft share name propose "
    "find produce design develop craft make".split()
)
# Imperatives that ask for talk about a topic: "Describe X" -> "What can you say about X?"
DISCOURSE_VERBS = frozenset(
    "describe explain discuss analyze analyse detail elaborate comment summarize interpret assess evaluate "
    "examine".split()
)
DETERMINERS = frozenset("a an the some any your my".split())
# A fronted object must be a noun phrase; these open something else.
NOT_OBJECT = WH | frozenset("this that these those it them whether if to".split())

PREPOSITIONS = frozenset(
    "in on at under behind near inside outside above below between from for about of to with within into "
    "onto over around across through".split()
)
# Words that, right after "is/are", show the wh-phrase is the subject ("What is shown", "What is in ...").
PREDICATE_WORDS = PREPOSITIONS | frozenset(
    "being going not likely unlikely possible visible present available unusual interesting important "
    "wrong special notable noteworthy significant happening".split()
)
IRREGULAR_PARTICIPLES = frozenset(
    "shown seen written drawn done made known given taken worn held found built sold shot meant said told "
    "hidden eaten grown thrown broken chosen spoken stolen driven ridden begun brought bought caught taught "
    "thought kept lost paid sent spent stood understood won".split()
)
# -ing words that are nouns, never the progressive after a subject ("the building", "the clothing").
ING_NOUNS = frozenset(
    "building clothing painting drawing ceiling ring thing something anything everything nothing king wing "
    "string spring morning evening ending meaning feeling setting wedding lighting packaging marketing "
    "advertising training housing parking writing sibling".split()
)
# Base-form verbs that end a do/modal subject: "What does the sign say" -> subject "the sign".
BASE_VERBS = frozenset(
    "say mean represent suggest show indicate depict symbolize convey signify look seem appear do want need "
    "sell promote advertise offer contain feel think see tell use make know find expect imply communicate "
    "reveal describe feature display involve include like require cost evoke express reflect highlight "
    "portray illustrate provide happen cause affect become get give take learn infer conclude deduce "
    "determine identify observe notice read be have wear hold eat drink buy try serve play call work help "
    "mention state emphasize target aim".split()
)
# Adverbs that stay after an auxiliary moved in front of them ("the people are likely engaged in").
ADVERBS = frozenset(
    "likely probably possibly typically usually currently commonly generally mainly primarily actually "
    "really also still just often most".split()
)
# Verbs an instruction may coordinate ("Describe X and speculate about Y"): the object then is not one NP.
SUBORDINATORS = frozenset(
    "while when if because that which who whom whose where as since although though until whether".split()
)
COORDINATED_VERBS = OBJECT_VERBS | DISCOURSE_VERBS | frozenset("speculate predict identify tell explain".split())
SUBJECTS = {"i": "I", "we": "we"}

_HOW_SUBJECT = r"(?P<s>i|we|one|someone|people|you|a person)"
_HOWTO = [
    re.compile(r"^how\s+to\s+(?P<x>.+)$", re.I),
    re.compile(rf"^how\s+(?:do|does|can|could|should|would|might|may|will)\s+{_HOW_SUBJECT}\s+(?P<x>.+)$", re.I),
    re.compile(
        r"^(?:(?:explain|describe|detail|outline)(?:\s+to\s+(?:me|us))?|(?:tell|show|teach)\s+(?:me|us))\s+how\s+"
        rf"(?:to\s+|{_HOW_SUBJECT}\s+(?:can|could|should|would|might|may)\s+)(?P<x>.+)$",
        re.I,
    ),
    re.compile(
        r"^(?:is|would)\s+it\s+(?:be\s+)?possible\s+(?:for\s+(?:me|us|someone|you)\s+)?to\s+(?P<x>.+)$", re.I
    ),
]
_POLITE = re.compile(
    r"^(?:please\s*,?\s+|(?:please\s+)?(?:can|could|would|will)\s+you\s+(?:please\s+)?"
    r"|i\s+(?:want|need|would\s+like)\s+you\s+to\s+|i'd\s+like\s+you\s+to\s+)(?P<x>.+)$",
    re.I,
)
_INDIRECT = re.compile(r"^(?P<io>(?:me|us)(?:\s+with)?)\s+(?P<x>.+)$", re.I)


QueryForm = Literal["howto", "request", "question"]


@dataclass(frozen=True)
class Parsed:
    """A query read as one of three forms (see the module docstring); unused fields stay empty."""

    kind: QueryForm
    body: str
    subject: str = "one"
    first: str = ""  # question: ``first_word`` of the query
    lead: str = ""  # question: first two words, lowercased
    verb: str = ""
    rest: str = ""
    object: str = ""  # fronted object without its determiner ("" when the verb takes none)
    direct: str = ""  # the object as written, determiner kept, indirect object dropped
    indirect: str = ""  # " me", " us with", ...: what followed the verb before the object
    about: str = ""  # "tell me about X": X
    noun_phrase: bool = False  # rest opens a noun phrase (not a clause)
    why: str = ""  # "explain why X": X
    discourse: bool = False
    topic: str = ""  # rest without a leading "on"/"about"
    wh_rest: bool = False  # rest is an embedded question ("explain why ...", "describe what ...")


def lower_first(text: str) -> str:
    """``text`` with its first letter lower-cased, unless the first word is "I", an "I'" form or an acronym."""
    word = text.split(" ", 1)[0]
    if word == "I" or word.startswith("I'") or (len(word) > 1 and word.isupper()):
        return text
    return text[:1].lower() + text[1:]


def _request(text: str) -> Parsed:
    verb, _, rest = text.partition(" ")
    verb = verb.lower()
    head = rest.split(" ", 1)[0].lower() if rest else ""
    direct, indirect = rest, ""
    found = _INDIRECT.match(rest)
    if verb in OBJECT_VERBS and found:
        direct, indirect = found.group("x"), " " + found.group("io").lower()
    words = direct.split(" ", 1)
    obj = words[1] if len(words) > 1 and words[0].lower() in DETERMINERS else direct
    fronted = verb in OBJECT_VERBS and bool(obj) and obj.split(" ", 1)[0].lower() not in NOT_OBJECT
    low_rest = rest.lower().split()
    coordinated = any(a in {"and", "or"} and b in COORDINATED_VERBS for a, b in zip(low_rest, low_rest[1:]))
    if coordinated:
        # "Describe X and speculate about Y": no single object or topic; only the generic frames apply.
        return Parsed(kind="request", body=f"{verb} {rest}".strip(), verb=verb, rest=rest)
    about = ""
    if verb == "tell" and re.match(r"^(?:me|us)\s+about\s+", rest, re.I):
        about = rest.split(" ", 2)[2]
    return Parsed(
        kind="request",
        body=f"{verb} {rest}".strip(),
        verb=verb,
        rest=rest,
        object=obj if fronted else "",
        direct=direct if fronted else "",
        indirect=indirect if fronted else "",
        about=about,
        noun_phrase=bool(rest) and head not in WH | {"whether", "if", "to", "that"},
        why=rest[4:] if verb in DISCOURSE_VERBS and head == "why" and len(rest) > 4 else "",
        discourse=verb in DISCOURSE_VERBS,
        topic=re.sub(r"^(?:on|about)\s+", "", rest, flags=re.I),
        wh_rest=head in WH | {"whether"},
    )


def parse_query(query: str) -> Parsed:
    """The form of ``query`` (whitespace collapsed, final punctuation dropped): howto, request or question."""
    text = " ".join(query.split()).rstrip(" .?!")
    for pattern in _HOWTO:
        found = pattern.match(text)
        if found:
            subject = SUBJECTS.get((found.groupdict().get("s") or "").lower(), "one")
            return Parsed(kind="howto", body=lower_first(found.group("x")), subject=subject)
    polite = _POLITE.match(text)
    if polite:
        inner = parse_query(polite.group("x"))
        return inner if inner.kind == "howto" else _request(polite.group("x"))
    first = first_word(text)
    # A contraction reads as its first part: "What's X" is a question like "What is X".
    if first and first.split("'")[0] not in NON_VERBS:
        return _request(text)
    return Parsed(kind="question", body=text, first=first, lead=" ".join(text.lower().split()[:2]))


def _participle(word: str, after_subject: bool = True) -> bool:
    """A past or present participle. Right after the auxiliary an -ing word is always the verb ("is
    advertising"); after a subject, -ing nouns ("the tall building") are excluded."""
    if word in IRREGULAR_PARTICIPLES:
        return True
    return len(word) > 4 and word.endswith(("ed", "ing")) and not (after_subject and word in ING_NOUNS)


def _predicate_at(low_rest: list[str]) -> int | None:
    """Where the predicate participle starts after the subject of a copula question, or None.

    "the man doing (in the image)": the participle ends the question or a preposition follows it.
    "the person holding the gun" (an object follows) and "the software advertised in this image" (a
    long phrase follows an -ed form) are reduced relatives inside the subject, so the search goes on;
    it stops at a second auxiliary or a subordinator, whose clause has its own verb.
    """
    for k in range(1, len(low_rest)):
        word, tail = low_rest[k], low_rest[k + 1 :]
        if word in AUX or word in SUBORDINATORS:
            return None
        if low_rest[k - 1] in DETERMINERS | PREPOSITIONS or not _participle(word):
            continue
        if word.endswith("ing") and (not tail or tail[0] in PREPOSITIONS | ADVERBS | {"here", "there", "now"}):
            return k
        if not word.endswith("ing") and (not tail or (tail[0] in PREPOSITIONS and len(tail) <= 2)):
            return k
    return None


def _before_adverbs(low: list[str], at: int) -> int:
    while at > 1 and low[at - 1] in ADVERBS:
        at -= 1
    return at


def _third_person(verb: str) -> str:
    """Present tense, third person singular ("say" -> "says", "try" -> "tries", "do" -> "does")."""
    if verb == "have":
        return "has"
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if len(verb) > 1 and verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def embedded_clause(question: str) -> str | None:
    """A wh-question as an embedded clause ("What is the man doing" -> "what the man is doing"), or None.

    Finds the first auxiliary; words before it are the wh-phrase. The auxiliary moves after the subject
    unless the wh-phrase is itself the subject ("What is shown ..." stays as it is).
    """
    words = " ".join(question.split()).rstrip(" .?!").split(" ")
    low = [w.lower() for w in words]
    if low[0] not in WH:
        return None
    # A second question joined on ("..., and what is X?") would need its own reordering.
    if any(b in WH and (a.endswith(",") or a in {"and", "or"}) for a, b in zip(low[1:], low[2:])):
        return None
    aux_at = next((i for i in range(1, len(words)) if low[i] in AUX), None)
    if aux_at is None:
        return lower_first(" ".join(words))
    wh, aux, rest, low_rest = words[:aux_at], words[aux_at], words[aux_at + 1 :], low[aux_at + 1 :]
    if not rest:
        return None
    aux_low = aux.lower()
    if aux_low in COPULA:
        if low_rest[0] in PREDICATE_WORDS or _participle(low_rest[0], after_subject=False):
            clause = wh + [aux] + rest
        else:
            at = _predicate_at(low_rest)
            if at is None:
                clause = wh + rest + [aux]
            else:
                at = _before_adverbs(low_rest, at)
                clause = wh + rest[:at] + [aux] + rest[at:]
    elif aux_low in DO | MODALS:
        if aux_low in MODALS and low_rest[0] in BASE_VERBS:
            clause = wh + [aux] + rest
        else:
            at = next((k for k in range(1, len(rest)) if low_rest[k] in BASE_VERBS), None)
            if at is None:
                return None
            if aux_low in DO:
                verb = _third_person(low_rest[at]) if aux_low == "does" else low_rest[at]
                clause = wh + rest[:at] + [verb] + rest[at + 1 :]
            else:
                at = _before_adverbs(low_rest, at)
                clause = wh + rest[:at] + [aux] + rest[at:]
    else:
        return None
    return lower_first(" ".join(clause))
