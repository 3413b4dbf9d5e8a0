"""LLaVA-1.5 ``vicuna_v1`` template and THE one place where labels are masked.

Prompt shape (LLaVA's ``conv_vicuna_v1``: sep " ", sep2 "</s>")::

    <s>SYSTEM USER: <image>\\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>

Loss is taken only on assistant answers and their ``</s>``. Each segment is tokenised on its own and the
ids are concatenated, so the mask boundaries are exact by construction (no re-tokenisation offsets).
``<image>`` becomes ``n_image_tokens`` copies of the image token id, as the model expects after
``LlavaProcessor`` expansion (576 for LLaVA-1.5 at 336 px; (image_size/patch)^2 for the tiny model).
Training and evaluation both call ``encode``; evaluation passes only the user turn and gets the prompt
ending in ``ASSISTANT:``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from transformers import PreTrainedTokenizerBase

from mirage_ds.data.schema import SampleError, Turn

IGNORE_INDEX = -100
SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


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
    def __init__(self, tokenizer: PreTrainedTokenizerBase, n_image_tokens: int, max_length: int) -> None:
        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs bos and eos tokens for the vicuna_v1 template")
        self.tokenizer = tokenizer
        self.n_image_tokens = n_image_tokens
        self.max_length = max_length
        self.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError("the tokenizer has no '<image>' token")

        backend = getattr(tokenizer, "backend_tokenizer", None)
        # The Rust tokenizer directly: the Python wrapper's per-call overhead is most of the template's cost.
        self._encode = (lambda text: backend.encode(text, add_special_tokens=False).ids) if backend is not None else (
            lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
        )
        self._constant: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        return self._encode(text)

    def _constant_ids(self, text: str) -> list[int]:
        """Segments that never change (system prompt, role tags) are tokenised once."""
        if text not in self._constant:
            self._constant[text] = self._encode(text)
        return self._constant[text]

    def encode(self, turns: Sequence[Turn], where: str = "<sample>", add_generation_prompt: bool = False) -> Encoded:
        """Token ids and labels for a conversation; with ``add_generation_prompt`` the last turn is a user turn."""
        segments: list[tuple[list[int], bool, bool]] = [([self.tokenizer.bos_token_id], False, False)]
        for i, turn in enumerate(turns):
            if turn.role == "user":
                head = f"{SYSTEM_PROMPT} USER: " if i == 0 else "USER: "
                body = f"\n{turn.text} ASSISTANT:" if i == 0 else f"{turn.text} ASSISTANT:"
                segments.append((self._constant_ids(head), False, False))
                if i == 0:
                    segments.append(([self.image_token_id] * self.n_image_tokens, False, True))
                segments.append((self._ids(body), False, False))
            else:
                segments.append((self._ids(f" {turn.text}") + [self.tokenizer.eos_token_id], True, False))
        if add_generation_prompt and turns[-1].role != "user":
            raise ValueError(f"{where}: a generation prompt must end with a user turn")

        input_ids: list[int] = []
        labels: list[int] = []
        image_mask: list[bool] = []
        for ids, trained, is_image in segments:
            input_ids += ids
            labels += ids if trained else [IGNORE_INDEX] * len(ids)
            image_mask += [is_image] * len(ids)

        if len(input_ids) > self.max_length:
            image_end = max(i for i, m in enumerate(image_mask) if m) + 1
            if image_end >= self.max_length or add_generation_prompt:
                raise SampleError(
                    f"{where}: {len(input_ids)} tokens do not fit data.max_length={self.max_length} "
                    f"(the image alone takes {self.n_image_tokens})"
                )
            # Truncate the tail, as LLaVA does; the image and the first question stay whole.
            input_ids, labels, image_mask = (x[: self.max_length] for x in (input_ids, labels, image_mask))
        return Encoded(input_ids=input_ids, labels=labels, image_mask=image_mask)


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
