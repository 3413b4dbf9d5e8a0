"""The llava-hf/llava-1.5-7b-hf stand-in is laid out like the hub checkpoint and loads like it."""

from __future__ import annotations

import json

import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

from mirage_ds.config import ModelConfig
from mirage_ds.models.loading import build_model

from hub_standin import IMAGE_TOKEN_ID, N_IMAGE_TOKENS, PAD_TOKEN_ID, PADDED_VOCAB, hub_key

HUB_FILES = {
    "added_tokens.json", "chat_template.jinja", "chat_template.json", "config.json", "generation_config.json",
    "model.safetensors.index.json", "preprocessor_config.json", "processor_config.json",
    "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
}


def test_files_and_weights_have_the_hub_layout(hub_path) -> None:
    shards = sorted(p.name for p in hub_path.glob("*.safetensors"))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert {p.name for p in hub_path.iterdir()} == HUB_FILES | set(shards)

    index = json.loads((hub_path / "model.safetensors.index.json").read_text())
    stored: dict[str, str] = {}
    for shard in shards:
        with safe_open(hub_path / shard, framework="pt") as f:
            stored |= {key: shard for key in f.keys()}
            assert {f.get_slice(key).get_dtype() for key in f.keys()} == {"F16"}
    assert index["weight_map"] == stored
    prefixes = {key.split(".layers.")[0] if ".layers." in key else key.rsplit(".", 2)[0] for key in stored}
    assert {p.split(".")[0] for p in prefixes} == {"language_model", "vision_tower", "multi_modal_projector"}
    assert "language_model.lm_head.weight" in stored and "language_model.model.embed_tokens.weight" in stored
    assert "vision_tower.vision_model.pre_layrnorm.weight" in stored  # CLIP's own misspelling, as on the hub

    config = json.loads((hub_path / "config.json").read_text())
    assert (config["image_token_index"], config["pad_token_id"], config["vocab_size"]) == (32000, 32001, 32064)
    assert (config["vision_feature_layer"], config["vision_feature_select_strategy"]) == (-2, "default")
    assert (config["projector_hidden_act"], config["torch_dtype"]) == ("gelu", "float16")
    assert config["tie_word_embeddings"] is False
    assert (config["vision_config"]["image_size"], config["vision_config"]["patch_size"]) == (336, 14)


def test_loads_with_no_missing_or_unexpected_keys(hub_path) -> None:
    model, info = LlavaForConditionalGeneration.from_pretrained(
        hub_path, local_files_only=True, output_loading_info=True
    )
    assert {k: v for k, v in info.items() if v} == {}
    assert model.dtype == torch.float16
    # Every parameter holds the tensor stored under its hub key.
    stored = {}
    for shard in hub_path.glob("*.safetensors"):
        with safe_open(shard, framework="pt") as f:
            stored |= {key: f.get_tensor(key) for key in f.keys()}
    loaded = model.state_dict()
    assert len(loaded) == len(stored)
    assert all(loaded[name].equal(stored[hub_key(name)]) for name in loaded)
    assert model.get_input_embeddings().weight.shape[0] == PADDED_VOCAB
    # The project's own loader reads the same directory as model.path.
    bundle = build_model(ModelConfig(path=str(hub_path)))
    assert bundle.n_image_tokens == N_IMAGE_TOKENS == 576
    assert bundle.tokenizer.pad_token_id == PAD_TOKEN_ID


def test_tokenizer_is_llama_shaped(hub_path) -> None:
    tok = AutoTokenizer.from_pretrained(hub_path, local_files_only=True)
    assert len(tok) == 32002 and tok.padding_side == "left"
    pieces = ["<unk>", "<s>", "</s>", "<0x00>", "<0x0A>", "<0xFF>"]
    assert [tok.convert_tokens_to_ids(t) for t in pieces] == [0, 1, 2, 3, 13, 258]
    assert (tok.convert_tokens_to_ids("<image>"), tok.pad_token_id) == (IMAGE_TOKEN_ID, PAD_TOKEN_ID)
    # Every call and every segment after a special token starts with "▁"; "\n" falls back to a byte.
    tokens = tok.convert_ids_to_tokens(tok("\nWhat</s>USER:").input_ids)
    assert tokens == ["<s>", "▁", "<0x0A>", "What", "</s>", "▁", "USER", ":"]
    text = "I'm sorry, I cannot assist with that request: naïve 42°C résumé ✓"
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


def test_processor_and_chat_template(hub_path) -> None:
    processor = AutoProcessor.from_pretrained(hub_path, local_files_only=True)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]},
        {"role": "user", "content": [{"type": "text", "text": "Why?"}]},
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "USER: <image>\nWhat is shown? ASSISTANT: A red square. USER: Why? ASSISTANT:"
    inputs = processor(text=prompt, images=Image.new("RGB", (500, 300), (200, 20, 20)), return_tensors="pt")
    assert int((inputs["input_ids"] == IMAGE_TOKEN_ID).sum()) == 576
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 336, 336)
