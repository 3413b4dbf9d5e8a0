"""The template and label mask on a real VLGuard conversation (printed; run with -s to see it)."""

from __future__ import annotations

import json

from mirage_ds.data.schema import Turn
from mirage_ds.data.template import IGNORE_INDEX, SYSTEM_PROMPT, Template, render_masked

from conftest import VLGUARD


def _vlguard_safe_record() -> dict:
    records = json.loads((VLGUARD / "train.json").read_text())
    return next(r for r in records if r["safe"])


def test_masked_template_on_real_vlguard_conversation(tiny_bundle) -> None:
    record = _vlguard_safe_record()
    first, second = record["instr-resp"]
    turns = [
        Turn(role="user", text=first["safe_instruction"]),
        Turn(role="assistant", text=first["response"]),
        Turn(role="user", text=second["unsafe_instruction"]),
        Turn(role="assistant", text=second["response"]),
    ]
    tok = tiny_bundle.tokenizer
    template = Template(tok, n_image_tokens=tiny_bundle.n_image_tokens, max_length=4096)
    enc = template.encode(turns)
    view = render_masked(enc, tok)
    print("\n" + view)

    assert len(enc.input_ids) == len(enc.labels) == len(enc.image_mask)
    assert enc.input_ids[0] == tok.bos_token_id and enc.labels[0] == IGNORE_INDEX
    assert sum(enc.image_mask) == tiny_bundle.n_image_tokens == 16
    expected = (
        f"<s>{SYSTEM_PROMPT} USER: <image x16>\n{first['safe_instruction']} ASSISTANT:"
        f"[[ {first['response']}</s>]]USER: {second['unsafe_instruction']} ASSISTANT:[[ {second['response']}</s>]]"
    )
    assert view == expected
    # Trained positions are exactly the two answers and their </s>; everything else is ignored.
    trained = [i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX]
    answer_ids = tok(f" {first['response']}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert [enc.input_ids[i] for i in trained[: len(answer_ids)]] == answer_ids
    assert all(enc.labels[i] == enc.input_ids[i] for i in trained)
    assert sum(1 for i in trained if enc.input_ids[i] == tok.eos_token_id) == 2


def test_generation_prompt_is_training_prefix(tiny_bundle) -> None:
    template = Template(tiny_bundle.tokenizer, tiny_bundle.n_image_tokens, 512)
    q, a = Turn(role="user", text="What is the blue shape?"), Turn(role="assistant", text="circle")
    train = template.encode([q, a])
    prompt = template.encode([q], add_generation_prompt=True)
    assert train.input_ids[: len(prompt.input_ids)] == prompt.input_ids
    assert all(label == IGNORE_INDEX for label in prompt.labels)


def test_truncation_keeps_image_and_fails_when_it_cannot(tiny_bundle) -> None:
    import pytest

    from mirage_ds.data.schema import SampleError

    template = Template(tiny_bundle.tokenizer, tiny_bundle.n_image_tokens, 70)
    long = [Turn(role="user", text="What is it?"), Turn(role="assistant", text="word " * 200)]
    enc = template.encode(long)
    assert len(enc.input_ids) == 70 and sum(enc.image_mask) == 16 and enc.n_answer_tokens > 0
    with pytest.raises(SampleError, match=r"do not fit data.max_length=20"):
        Template(tiny_bundle.tokenizer, tiny_bundle.n_image_tokens, 20).encode(long, "s.tar:k")
