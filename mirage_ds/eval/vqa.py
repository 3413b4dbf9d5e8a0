"""VQA accuracy (VQAv2, TextVQA, VizWiz) with the EvalAI answer normalisation; ScienceQA letter accuracy.

Normalisation, as the official VQA evaluation (``vqaEval.py``, run by EvalAI) does it, applied here to
the prediction and to every human answer alike (as LLaVA's TextVQA evaluator does): newline/tab to
space; each punctuation mark is deleted where it touches a space (or anywhere, when the text holds a
digit comma like "1,000") and becomes a space otherwise; a period not followed by a digit is deleted (so
"2.5" stays); lowercase; number words "none", "zero" .. "ten" become digits; articles "a", "an", "the"
go; apostrophe-less contractions get their apostrophe ("dont" -> "don't"). (The official script
normalises the humans' answers less; VQAv2 annotations are stored normalised already, so it matters
only for raw answer lists such as the synthetic ones.)

Score of a prediction against n human answers: the mean over the n leave-one-out subsets of
``min(1, matches in the subset / 3)``; with 10 humans this is the official VQA accuracy. With a single
answer there is no leave-one-out subset, so the score is the exact match of the normalised strings.
lmms-eval's ``vqav2_val`` scores exactly so. Its ``textvqa_val`` and ``vizwiz_vqa_val`` first drop "," and
"?" and split "'s" off a word ("dog's" -> "dog 's"), so answers holding those can score differently there.

ScienceQA (``scienceqa_letter``, ``scienceqa_score``): a response names choice X (of "A", "B", ...) when,
stripped, it is the letter X in either case, or when it starts with the upper-case X and a period ("B.",
"B. the moon"); anything else is wrong. This is how lmms-eval's ``scienceqa_img`` reads a response.
LLaVA-1.5's own ``eval_science_qa.py`` reads three cases differently: a lower-case "b" is wrong there,
"B." needs a space after the period, and "The answer is B." anywhere in the text names B.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mirage_ds.eval.metrics import Estimate, bootstrap

# EvalAI's contraction map (apostrophe-less form -> written form). Its keys that start with a capital
# I ("Im", "Ive", "Id've", "I'dve") are left out: the text is lowercased before lookup, so they never
# match. "somebody'd" -> "somebodyd" runs backwards in EvalAI and is kept as it is, for equal scores.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
NUMBERS["none"] = "0"
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"
)
# EvalAI writes this as (?!<=\d)(\.)(?!\d): the first group is a lookahead, not a lookbehind, so in
# effect every period not followed by a digit is removed ("2." -> "2", "2.5" stays).
_PERIOD = re.compile(r"\.(?!\d)")
_DIGIT_COMMA = re.compile(r"(?<=\d),+(?=\d)")


def _punctuation(text: str) -> str:
    digit_comma = _DIGIT_COMMA.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        # The test is on the input text, as in EvalAI: a mark touching a space anywhere is deleted
        # everywhere; otherwise it separates words ("black-white" -> "black white").
        if mark + " " in text or " " + mark in text or digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out)


def _digits_articles(text: str) -> str:
    words = [NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(answer: str) -> str:
    """EvalAI's answer normalisation (see the module docstring)."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against its human answers (leave-one-out average, 3 to agree)."""
    if not answers:
        raise ValueError("a VQA question needs at least one human answer")
    pred = normalize_answer(prediction)
    matches = [normalize_answer(a) == pred for a in answers]
    if len(matches) == 1:
        return float(matches[0])
    total = sum(matches)
    # Dropping human j leaves total - matches[j] agreeing humans among the other n - 1.
    return sum(min(1.0, (total - m) / 3.0) for m in matches) / len(matches)


def vqa_score(
    predictions: Sequence[str], answers: Sequence[Sequence[str]], *, resamples: int = 1000, seed: int = 0
) -> Estimate:
    """Mean VQA accuracy over questions, with a bootstrap interval over questions."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answer lists")
    scores = [vqa_accuracy(p, a) for p, a in zip(predictions, answers)]
    return bootstrap(scores, resamples=resamples, seed=seed)


def scienceqa_letter(response: str) -> str | None:
    """The choice letter ``response`` names, upper-case, or None (see the module docstring)."""
    text = response.strip()
    if len(text) == 1 and text.isalpha():
        return text.upper()
    if len(text) >= 2 and text[0].isupper() and text[1] == ".":
        return text[0]
    return None


def scienceqa_score(
    predictions: Sequence[str], answers: Sequence[int], *, resamples: int = 1000, seed: int = 0
) -> Estimate:
    """ScienceQA letter accuracy: ``answers[i]`` is the index of question i's correct choice (0 = "A")."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answers")
    correct = [scienceqa_letter(p) == chr(ord("A") + a) for p, a in zip(predictions, answers)]
    return bootstrap(correct, resamples=resamples, seed=seed)
