"""Template ids and labels equal LLaVA-1.5's own, on the hub stand-in and on the embedded tokenizer.

The reference below is written from LLaVA's ``llava/mm_utils.py`` (``tokenizer_image_token``),
``llava/conversation.py`` (``SeparatorStyle.TWO``) and ``llava/train/train.py`` (``preprocess_multimodal``,
``preprocess_v1``): the whole prompt string is tokenised, split only at ``<image>``, and the labels come from
LLaVA's per-round length arithmetic, not from offsets as in the template. The only departure: ``<image>``
is expanded to the model's image tokens here (LLaVA keeps one ``-200`` and expands it inside the model).
"""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from tokenizers import pre_tokenizers
from transformers import AutoConfig, AutoProcessor, AutoTokenizer, LlavaProcessor

from mirage_ds.data.preprocess import Preprocessor, expand_to_square
from mirage_ds.data.schema import Turn
from mirage_ds.data.template import IGNORE_INDEX, Template
from mirage_ds.models.loading import image_token_count
from mirage_ds.specs.system_prompts import SYSTEM_PROMPTS

from conftest import VLGUARD
from hub_standin import metaspace_tokenizer

# ---- the reference ---------------------------------------------------------------------------------


def llava_call(tokenizer, text: str) -> list[int]:
    """``tokenizer(text).input_ids`` as LLaVA gets it from a Llama tokenizer, ``<s>`` first.

    The embedded byte-level tokenizer has no post-processor that adds ``<s>``; LLaVA's arithmetic
    assumes Llama's, so the reference adds it as Llama's call would.
    """
    ids = tokenizer(text).input_ids
    return ids if ids[:1] == [tokenizer.bos_token_id] else [tokenizer.bos_token_id, *ids]


def tokenizer_image_token(prompt: str, tokenizer, n_image: int, image_id: int) -> list[int]:
    """Each ``<image>``-separated chunk tokenised on its own; every chunk after the first drops its ``<s>``."""
    chunks = [llava_call(tokenizer, chunk) for chunk in prompt.split("<image>")]
    ids = list(chunks[0])
    for chunk in chunks[1:]:
        ids += [image_id] * n_image + chunk[1:]
    return ids


def conversation_prompt(system: str, turns: list[Turn], generation: bool) -> str:
    """``Conversation.get_prompt`` for sep " ", sep2 "</s>"; the first question gets ``<image>\\n``."""
    messages = [(t.role, t.text) for t in turns] + ([("assistant", None)] if generation else [])
    prompt = system + " "
    for i, (role, text) in enumerate(messages):
        tag = "USER" if role == "user" else "ASSISTANT"
        if i == 0:
            text = "<image>\n" + text.replace("<image>", "").strip()
        prompt += (f"{tag}: {text}" + (" " if i % 2 == 0 else "</s>")) if text else f"{tag}:"
    return prompt


def non_legacy_llama(tokenizer) -> bool:
    """LLaVA reads ``tokenizer.legacy``; transformers 5 keeps that flag only in tokenizer_config.json, so
    read the behaviour it names from the backend: a Metaspace that prepends "▁" to the first segment only
    (none after a special token) is the non-legacy Llama tokenizer."""
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    return isinstance(pre, pre_tokenizers.Metaspace) and pre.prepend_scheme == "first"


def preprocess_v1(prompt: str, tokenizer, n_image: int, image_id: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) as LLaVA's ``preprocess_v1`` computes them for one conversation with an image."""
    ids = tokenizer_image_token(prompt, tokenizer, n_image, image_id)
    labels = list(ids)
    sep = " ASSISTANT: "
    cursor = 1
    labels[:cursor] = [IGNORE_INDEX] * cursor
    for i, round_text in enumerate(prompt.split("</s>")):
        if round_text == "":
            break
        parts = round_text.split(sep)
        if len(parts) != 2:
            break
        # The round counts its own <s> where the conversation has the round's </s>; the instruction part
        # ends in "ASSISTANT: ", whose trailing "▁" joins the answer's first word in the conversation: -2.
        round_len = len(tokenizer_image_token(round_text, tokenizer, n_image, image_id))
        instruction_len = len(tokenizer_image_token(parts[0] + sep, tokenizer, n_image, image_id)) - 2
        if i != 0 and non_legacy_llama(tokenizer):
            # After "</s>" a non-legacy Llama tokenizer writes "USER" without the "▁" a call of its own adds.
            round_len -= 1
            instruction_len -= 1
        labels[cursor : cursor + instruction_len] = [IGNORE_INDEX] * instruction_len
        cursor += round_len
    labels[cursor:] = [IGNORE_INDEX] * (len(labels) - cursor)
    # LLaVA masks the whole sample on a length mismatch; the reference refuses instead.
    assert cursor == len(ids), f"LLaVA's round arithmetic does not add up: {cursor} vs {len(ids)}"
    return ids, labels


# ---- conversations and tokenizers ---------------------------------------------------------------


def vlguard_pairs(n: int) -> list[list[Turn]]:
    """The first n (instruction, response) pairs of VLGuard's train.json, one single-turn conversation each."""
    out: list[list[Turn]] = []
    for entry in json.loads((VLGUARD / "train.json").read_text()):
        for pair in entry["instr-resp"]:
            question = next(text for key, text in pair.items() if key.endswith("instruction"))
            out.append([Turn(role="user", text=question), Turn(role="assistant", text=pair["response"])])
    return out[:n]


def vlguard_two_turns() -> list[Turn]:
    """A safe image's two pairs (safe, then unsafe instruction) as one two-turn conversation."""
    entry = next(e for e in json.loads((VLGUARD / "train.json").read_text()) if e["safe"])
    first, second = entry["instr-resp"]
    return [
        Turn(role="user", text=first["safe_instruction"]),
        Turn(role="assistant", text=first["response"]),
        Turn(role="user", text=second["unsafe_instruction"]),
        Turn(role="assistant", text=second["response"]),
    ]


@pytest.fixture(scope="module", params=["hub", "metaspace", "embedded"])
def tokenizer_and_image(request):
    """(tokenizer, image tokens per image): the stand-in's Llama tokenizer in the hub's layout and in the
    Metaspace layout (no "▁" after a special token), and the embedded byte-level one."""
    path = request.getfixturevalue("tiny_path" if request.param == "embedded" else "hub_path")
    n_image = image_token_count(AutoConfig.from_pretrained(path, local_files_only=True))
    if request.param == "metaspace":
        return metaspace_tokenizer(path), n_image
    return AutoTokenizer.from_pretrained(path, local_files_only=True), n_image


def check_against_reference(turns: list[Turn], tokenizer, n_image: int, name: str = "vicuna_v1") -> None:
    template = Template(tokenizer, n_image, max_length=100_000, name=name)
    for generation in (False, True):
        shown = turns[:-1] if generation else turns
        prompt = conversation_prompt(SYSTEM_PROMPTS[name], shown, generation)
        assert template.text(shown, add_generation_prompt=generation) == prompt
        encoded = template.encode(shown, add_generation_prompt=generation)
        ids = tokenizer_image_token(prompt, tokenizer, n_image, template.image_token_id)
        assert encoded.input_ids == ids
        assert encoded.image_mask == [i == template.image_token_id for i in ids]
        if not generation:
            assert encoded.labels == preprocess_v1(prompt, tokenizer, n_image, template.image_token_id)[1]


# ---- tests --------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("vlguard")
def test_twenty_vlguard_conversations_equal_llava(tokenizer_and_image) -> None:
    tokenizer, n_image = tokenizer_and_image
    for turns in vlguard_pairs(20):
        check_against_reference(turns, tokenizer, n_image)


@pytest.mark.usefixtures("vlguard")
def test_two_turn_conversation_equals_llava(tokenizer_and_image) -> None:
    tokenizer, n_image = tokenizer_and_image
    check_against_reference(vlguard_two_turns(), tokenizer, n_image)
    check_against_reference(vlguard_two_turns(), tokenizer, n_image, name="llava_v1")


def test_answer_tokens_are_the_conversation_tokens(hub_path) -> None:
    """The old bug: an answer tokenised alone as " " + answer starts with a bare "▁" the model never saw."""
    tokenizer = AutoTokenizer.from_pretrained(hub_path, local_files_only=True)
    turns = vlguard_pairs(1)[0]
    encoded = Template(tokenizer, 576, 4096).encode(turns)
    trained = [i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    alone = tokenizer(" " + turns[1].text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    assert tokenizer.convert_ids_to_tokens(alone[:2]) == ["▁", "▁I"]
    assert tokenizer.convert_ids_to_tokens(trained[:3]) == ["▁I", "'", "m"]
    assert trained == alone[1:]


def test_template_names() -> None:
    assert "curious user" in SYSTEM_PROMPTS["vicuna_v1"] and "the user's questions" in SYSTEM_PROMPTS["vicuna_v1"]
    assert "curious human" in SYSTEM_PROMPTS["llava_v1"] and "the human's questions" in SYSTEM_PROMPTS["llava_v1"]


def test_unknown_template_name_is_refused(hub_path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(hub_path, local_files_only=True)
    with pytest.raises(ValueError, match="unknown template 'vicuna_v2'; known: vicuna_v1, llava_v1"):
        Template(tokenizer, 576, 4096, name="vicuna_v2")


def _png(size: tuple[int, int]) -> bytes:
    image = Image.new("RGB", size)
    image.putdata([((x * 7) % 256, (y * 5) % 256, (x + y) % 256) for y in range(size[1]) for x in range(size[0])])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("layout", ["hub", "metaspace"])
def test_processor_expands_the_image_as_our_preprocessing(hub_path, layout: str) -> None:
    """HF's LlavaProcessor and our Preprocessor: the same ids with 576 image tokens, the same pixels.

    With the hub's tokenizer.json every id agrees. With the Metaspace layout one token differs, by design:
    LLaVA tokenises the text after ``<image>`` as a call of its own, so "\\n" follows a "▁"; the processor
    tokenises the expanded string in one pass, and that layout adds no "▁" after a special token. We keep
    LLaVA-1.5's training tokens.
    """
    processor = AutoProcessor.from_pretrained(hub_path, local_files_only=True)
    if layout == "metaspace":
        processor = LlavaProcessor(
            image_processor=processor.image_processor, tokenizer=metaspace_tokenizer(hub_path), patch_size=14,
            vision_feature_select_strategy="default", num_additional_image_tokens=1,
        )
    template = Template(processor.tokenizer, 576, 4096, name="llava_v1")
    question = [Turn(role="user", text="What is shown in the image?")]
    png = _png((400, 300))

    pre = Preprocessor(template, processor.image_processor, pad_to_square=False)
    ours = pre.prompt_example(question[0].text, png, "q")
    theirs = processor(text=template.text(question, add_generation_prompt=True),
                       images=Image.open(io.BytesIO(png)), return_tensors="pt")
    hf_ids = theirs["input_ids"][0].tolist()
    image_at = hf_ids.index(template.image_token_id)
    assert hf_ids.count(template.image_token_id) == ours["input_ids"].count(template.image_token_id) == 576
    assert ours["input_ids"][: image_at + 576] == hf_ids[: image_at + 576]
    space = [processor.tokenizer.convert_tokens_to_ids("▁")] if layout == "metaspace" else []
    assert ours["input_ids"][image_at + 576 :] == space + hf_ids[image_at + 576 :]
    assert ours["pixel_values"].equal(theirs["pixel_values"][0])

    # Pad to square fills with LLaVA's colour, int(mean * 255) (truncated), then the same processor.
    padded = Preprocessor(template, processor.image_processor, pad_to_square=True)
    assert padded.fill == (122, 116, 104)
    square = expand_to_square(Image.open(io.BytesIO(png)).convert("RGB"), (122, 116, 104))
    expected = processor.image_processor(images=square, return_tensors="pt")["pixel_values"][0]
    assert padded.pixels(png, "q").equal(expected)
