"""LLaVA-1.5 conversation templates and THE one place where labels are masked.

Prompt (LLaVA's ``conv_vicuna_v1`` / ``conv_llava_v1``: sep " ", sep2 "</s>")::

    <s>SYSTEM USER: <image>\\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>

The ids are LLaVA's (``tokenizer_image_token``): the prompt string is split only at ``<image>`` and each
side is tokenised whole, the text before the image as a call with ``<s>``, the text after it as a call of
its own (so a Llama tokenizer puts a "▁" before its leading "\\n", as in LLaVA's training). A Llama
tokenizer therefore sees "▁A1" after "ASSISTANT:", never an extra "▁" from tokenising the answer alone.
``<image>`` becomes ``n_image_tokens`` copies of the image token id, as the model expects after
``LlavaProcessor`` expansion (576 for LLaVA-1.5 at 336 px).

Labels are what LLaVA's ``preprocess_v1`` trains: each answer from the token that holds the space after
"ASSISTANT:" through its "</s>". They are read from the tokenizer's character offsets, so the mask needs
none of ``preprocess_v1``'s per-round length arithmetic. Training and evaluation both call ``encode``;
evaluation passes turns that end with a user turn and gets the prompt ending in "ASSISTANT:".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from mirage_ds.data.schema import SampleError, Turn
from mirage_ds.specs.system_prompts import SYSTEM_PROMPTS

if TYPE_CHECKING:  # annotations only: the CLI lists the templates without importing transformers
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
# Evaluation asks as the Safety Mirage evaluation scripts do (docs/paper-protocol.md, section 4); training
# defaults to LLaVA-1.5's own vicuna_v1 (``data.template``), and so does the utility eval (LLaVA-1.5's VQA scripts).
EVAL_TEMPLATE = "llava_v1"


@dataclass(frozen=True)
class Encoded:
    """``input_ids`` and ``labels`` side by side (same length); labels are IGNORE_INDEX outside answers.

    ``image_mask`` marks the expanded image tokens (RMU's "text" token mask is its complement).
    """

    input_ids: list[int]
    labels: list[int]
    image_mask: list[bool]

    @property
    def n_answer_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


class Template:
    """LLaVA's prompt for ``turns`` under the system prompt ``name`` (a key of ``SYSTEM_PROMPTS``)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, n_image_tokens: int, max_length: int,
                 name: str = "vicuna_v1") -> None:
        if name not in SYSTEM_PROMPTS:
            raise ValueError(f"unknown template {name!r}; known: {', '.join(SYSTEM_PROMPTS)}")
        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs bos and eos tokens for LLaVA's templates")
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError("the template needs a fast (tokenizers-backed) tokenizer: labels come from its offsets")
        self.tokenizer = tokenizer
        self.n_image_tokens = n_image_tokens
        self.max_length = max_length
        self.system = SYSTEM_PROMPTS[name]
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {IMAGE_PLACEHOLDER!r} token")
        # The Rust tokenizer directly: it gives the offsets the mask needs, and the Python wrapper's per-call
        # overhead would be most of the template's cost.
        self._backend = backend
        # The text before the image never changes: tokenised once, with <s> in front as Llama's call adds it.
        self._head_text = f"{self.system} USER: "
        self._head_ids = [tokenizer.bos_token_id] + backend.encode(self._head_text, add_special_tokens=False).ids

    def _render(self, turns: Sequence[Turn], add_generation_prompt: bool) -> tuple[str, list[tuple[int, int]]]:
        """LLaVA's prompt string and the character spans of the trained parts (" " + answer + "</s>")."""
        text = f"{self.system} "
        spans: list[tuple[int, int]] = []
        for i, turn in enumerate(turns):
            if turn.role == "user":
                # LLaVA's preprocess_multimodal: the image leads the first question, which is stripped.
                question = f"{IMAGE_PLACEHOLDER}\n{turn.text.strip()}" if i == 0 else turn.text
                text += f"USER: {question} "
            else:
                text += "ASSISTANT:"
                start = len(text)
                text += f" {turn.text}{self.tokenizer.eos_token}"
                spans.append((start, len(text)))
        if add_generation_prompt:
            text += "ASSISTANT:"
        return text, spans

    def text(self, turns: Sequence[Turn], add_generation_prompt: bool = False) -> str:
        """The prompt string (one ``<image>`` placeholder), as LLaVA's ``conv.get_prompt()`` builds it."""
        return self._render(turns, add_generation_prompt)[0]

    def encode(self, turns: Sequence[Turn], where: str = "<sample>", add_generation_prompt: bool = False) -> Encoded:
        """Token ids and labels for a conversation; with ``add_generation_prompt`` the last turn is a user turn."""
        if add_generation_prompt and turns[-1].role != "user":
            raise ValueError(f"{where}: a generation prompt must end with a user turn")
        text, spans = self._render(turns, add_generation_prompt)
        if not text.startswith(self._head_text + IMAGE_PLACEHOLDER) or text.count(IMAGE_PLACEHOLDER) != 1:
            raise SampleError(f"{where}: the first turn must be the user's and no text may hold {IMAGE_PLACEHOLDER!r}")
        tail_start = len(self._head_text) + len(IMAGE_PLACEHOLDER)
        tail = self._backend.encode(text[tail_start:], add_special_tokens=False)
        trained = self._trained(tail.offsets, [(s - tail_start, e - tail_start) for s, e in spans], where)

        n_head, n_image = len(self._head_ids), self.n_image_tokens
        input_ids = self._head_ids + [self.image_token_id] * n_image + tail.ids
        labels = [IGNORE_INDEX] * (n_head + n_image) + [i if t else IGNORE_INDEX for i, t in zip(tail.ids, trained)]
        image_mask = [False] * n_head + [True] * n_image + [False] * len(tail.ids)

        if len(input_ids) > self.max_length:
            if n_head + n_image >= self.max_length or add_generation_prompt:
                raise SampleError(
                    f"{where}: {len(input_ids)} tokens do not fit data.max_length={self.max_length} "
                    f"(the image alone takes {n_image})"
                )
            # Truncate the tail, as LLaVA does; the image and the first question stay whole.
            input_ids, labels, image_mask = (x[: self.max_length] for x in (input_ids, labels, image_mask))
        return Encoded(input_ids=input_ids, labels=labels, image_mask=image_mask)

    @staticmethod
    def _trained(offsets: list[tuple[int, int]], spans: list[tuple[int, int]], where: str) -> list[bool]:
        """Per token: does it lie inside an answer span? Tokens come in text order, and so do the spans."""
        trained: list[bool] = []
        k = 0
        for start, end in offsets:
            while k < len(spans) and start >= spans[k][1]:
                k += 1
            inside = k < len(spans) and start >= spans[k][0]
            # Llama's and byte-level pieces never join the space before an answer to the text before it,
            # nor "</s>" to anything: a token across a boundary would mean a tokenizer this mask cannot serve.
            if k < len(spans) and (start < spans[k][0] < end or (inside and end > spans[k][1])):
                raise ValueError(f"{where}: a token spans an answer boundary; this tokenizer cannot be masked exactly")
            trained.append(inside)
        return trained


def render_masked(encoded: Encoded, tokenizer: PreTrainedTokenizerBase) -> str:
    """Human-readable view: trained spans in ``[[...]]``, image tokens collapsed to ``<image xN>``."""
    out: list[str] = []
    i = 0
    n = len(encoded.input_ids)
    while i < n:
        j = i
        if encoded.image_mask[i]:
            while j < n and encoded.image_mask[j]:
                j += 1
            out.append(f"<image x{j - i}>")
        else:
            trained = encoded.labels[i] != IGNORE_INDEX
            while j < n and not encoded.image_mask[j] and (encoded.labels[j] != IGNORE_INDEX) == trained:
                j += 1
            text = tokenizer.decode(encoded.input_ids[i:j], skip_special_tokens=False)
            out.append(f"[[{text}]]" if trained else text)
        i = j
    return "".join(out)
