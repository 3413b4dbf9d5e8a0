"""The template and label mask on a real VLGuard conversation (printed; run with -s to see it)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from mirage_ds.data.schema import SampleError, Turn
from mirage_ds.data.template import IGNORE_INDEX, Template, render_masked
from mirage_ds.specs.system_prompts import SYSTEM_PROMPTS

from conftest import VLGUARD


def _two_turns() -> list[Turn]:
    record = next(r for r in json.loads((VLGUARD / "train.json").read_text()) if r["safe"])
    first, second = record["instr-resp"]
    return [
        Turn(role="user", text=first["safe_instruction"]),
        Turn(role="assistant", text=first["response"]),
        Turn(role="user", text=second["unsafe_instruction"]),
        Turn(role="assistant", text=second["response"]),
    ]


def _check_mask(encoded, tokenizer, n_image: int) -> None:
    assert len(encoded.input_ids) == len(encoded.labels) == len(encoded.image_mask)
    assert encoded.input_ids[0] == tokenizer.bos_token_id and encoded.labels[0] == IGNORE_INDEX
    assert sum(encoded.image_mask) == n_image
    trained = [i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX]
    assert all(encoded.labels[i] == encoded.input_ids[i] for i in trained)
    assert sum(1 for i in trained if encoded.input_ids[i] == tokenizer.eos_token_id) == 2


@pytest.mark.usefixtures("vlguard")
def test_masked_template_on_real_vlguard_conversation(tiny_bundle) -> None:
    turns = _two_turns()
    tok = tiny_bundle.tokenizer
    enc = Template(tok, n_image_tokens=tiny_bundle.n_image_tokens, max_length=4096).encode(turns)
    view = render_masked(enc, tok)
    print("\n" + view)

    _check_mask(enc, tok, 16)
    q1, a1, q2, a2 = (t.text for t in turns)
    assert view == (
        f"<s>{SYSTEM_PROMPTS['vicuna_v1']} USER: <image x16>\n{q1} ASSISTANT:[[ {a1}</s>]]"
        f"USER: {q2} ASSISTANT:[[ {a2}</s>]]"
    )


def test_masked_template_on_the_hub_standin(hub_path) -> None:
    """The same conversation through the stand-in's Llama tokenizer (its decoder drops a run's leading space)."""
    turns = _two_turns()
    tok = AutoTokenizer.from_pretrained(hub_path, local_files_only=True)
    enc = Template(tok, n_image_tokens=576, max_length=4096, name="llava_v1").encode(turns)
    view = render_masked(enc, tok)
    print("\n" + view)

    _check_mask(enc, tok, 576)
    q1, a1, q2, a2 = (t.text for t in turns)
    assert view == (
        f"<s> {SYSTEM_PROMPTS['llava_v1']} USER: <image x576>\n{q1} ASSISTANT:[[{a1}</s>]]"
        f"USER: {q2} ASSISTANT:[[{a2}</s>]]"
    )


def test_generation_prompt_is_training_prefix(tiny_bundle) -> None:
    template = Template(tiny_bundle.tokenizer, tiny_bundle.n_image_tokens, 512)
    q, a = Turn(role="user", text="What is the blue shape?"), Turn(role="assistant", text="circle")
    train = template.encode([q, a])
    prompt = template.encode([q], add_generation_prompt=True)
    assert train.input_ids[: len(prompt.input_ids)] == prompt.input_ids
    assert all(label == IGNORE_INDEX for label in prompt.labels)


def test_truncation_keeps_image_and_fails_when_it_cannot(tiny_bundle) -> None:
    template = Template(tiny_bundle.tokenizer, tiny_bundle.n_image_tokens, 70)
    long = [Turn(role="user", text="What is it?"), Turn(role="assistant", text="word " * 200)]
    enc = template.encode(long)
    assert len(enc.input_ids) == 70 and sum(enc.image_mask) == 16 and enc.n_answer_tokens > 0
    with pytest.raises(SampleError, match=r"do not fit data.max_length=20"):
        Template(tiny_bundle.tokenizer, tiny_bundle.n_image_tokens, 20).encode(long, "s.tar:k")
