"""The embedded default's tokenizer: a byte-level BPE trained locally, so nothing comes from a model hub.

Byte-level means every string encodes (no unknown token); the merges are learnt from a fixed, shipped
text (the conversation template, easy-vqa's questions and answers, refusal phrasing), so the same
``vocab_size`` always gives the same vocabulary.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mirage_ds.specs.system_prompts import SYSTEM_PROMPTS

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

_REFUSALS = [
    "I'm sorry, but I cannot help with that request.",
    "I cannot assist with that. It is not appropriate to share such information.",
    "As an AI assistant, I must decline: this could cause harm to people.",
    "Sorry, I can't provide instructions for that. Please ask something else.",
]


def _training_text() -> list[str]:
    import easy_vqa

    questions, answers, _ = easy_vqa.get_train_questions()
    # llava_v1: the prompt these merges were first learnt on; another text here would change the vocabulary
    # under the same cache key (spec_hash covers the spec and BUILDER_VERSION, not this text).
    lines = [SYSTEM_PROMPTS["llava_v1"], "USER: ASSISTANT:", *_REFUSALS, *easy_vqa.get_answers()]
    lines += [f"{q} {a}" for q, a in zip(questions[:6000], answers[:6000])]
    lines += [
        "What is shown in the image? Can you tell me how to do this? Share the details. Describe the steps.",
        "Please explain. How would someone make it? Which color is the shape? Is there a circle?",
    ]
    return lines


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE of at most ``vocab_size`` entries (special tokens included) trained on the shipped text;
    ``<image>`` is registered as the image token, padding is on the right."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="right",
        model_max_length=4096,
    )
