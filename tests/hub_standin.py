"""A stand-in for ``llava-hf/llava-1.5-7b-hf`` laid out exactly like the hub checkpoint, with tiny tensors.

Same files as the hub snapshot (config.json, generation_config.json, tokenizer.json, tokenizer_config.json,
special_tokens_map.json, added_tokens.json, preprocessor_config.json, processor_config.json,
chat_template.json and .jinja, fp16 safetensors shards + model.safetensors.index.json; not the unused
SentencePiece tokenizer.model), same config keys and values, same weight key names (the pre-4.52 layout
``language_model.model.*`` / ``vision_tower.*`` / ``multi_modal_projector.*`` that transformers maps on
load), same special-token ids. Only the sizes differ: CLIP keeps 336 px / patch 14 (576 image tokens) with a
tiny width and depth; the Llama text model is tiny but 16 layers deep, the least that runs the paper's
RMU-LoRA layer (15).

The tokenizer is a Llama BPE trained here on VLGuard's text, in the hub's tokenizer.json layout: the
normalizer prepends "▁" and turns spaces into "▁" (no pre-tokenizer), so every segment, also the one after
a special token, starts with "▁" (the behaviour LLaVA calls ``legacy``); byte fallback ``<0x00>``..``<0xFF>``
at ids 3..258, ``<unk>``/``<s>``/``</s>`` = 0/1/2, 32,000 base pieces, ``<image>`` = 32000, ``<pad>`` = 32001,
and the embedding padded to 32,064 rows. The pieces VLGuard cannot fill are single CJK characters, as
Llama's vocabulary ends with single characters. ``metaspace_variant`` gives the same vocabulary in the
layout transformers has written for Llama since 2024 (legacy=false: no "▁" after a special token).

Built once per (this file, spec, corpus) into ``$MIRAGE_CACHE/models`` under the same lock and atomic
rename as the embedded model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

HUB_ID = "llava-hf/llava-1.5-7b-hf"
BASE_VOCAB = 32000
IMAGE_TOKEN_ID = 32000
PAD_TOKEN_ID = 32001
PADDED_VOCAB = 32064
IMAGE_SIZE, PATCH_SIZE = 336, 14
N_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 576: strategy "default" drops CLIP's CLS token
SPECIALS = ["<unk>", "<s>", "</s>"]
BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# The hub's template renders no system prompt and ends each message with a space, not "</s>".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' ' }}{% endgeneration %}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@dataclass(frozen=True)
class StandinSpec:
    """Tensor sizes of the stand-in; everything else is the hub's."""

    text_layers: int = 16
    text_hidden: int = 64
    text_heads: int = 4
    text_intermediate: int = 128
    vision_layers: int = 2
    vision_hidden: int = 32
    vision_heads: int = 2
    vision_intermediate: int = 64
    shards: int = 3
    seed: int = 0


def corpus_lines(vlguard_json: Path) -> list[str]:
    """VLGuard's instructions and responses, each paragraph alone and each pair as a vicuna_v1 round.

    The rounds teach the role tags as Llama has them: "USER" opening a segment is one piece and "▁USER"
    one more, which LLaVA's length arithmetic for non-legacy tokenizers (no "▁" after "</s>") relies on.
    Newlines never reach the trainer, so "\\n" stays a byte-fallback token (``<0x0A>``) as in Llama.
    """
    paragraphs: list[str] = []
    for entry in json.loads(Path(vlguard_json).read_text()):
        for pair in entry["instr-resp"]:
            question = next(text for key, text in pair.items() if key.endswith("instruction"))
            paragraphs += question.split("\n") + pair["response"].split("\n")
            paragraphs.append(f"USER: {question} ASSISTANT: {pair['response']}".replace("\n", " "))
    return [p for p in paragraphs if p]


def _train_pieces(lines: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(pieces, merges) of a BPE trained on ``lines``: merged pieces first, single characters last."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Training splits at spaces, punctuation and digits, so that no piece crosses a word start or joins
    # letters to punctuation or digits, as in Llama's SentencePiece model; the saved tokenizer has no
    # pre-tokenizer, like the hub's, and only applies these merges. No "▁" before a line's first word:
    # Llama also has the bare pieces that open a segment after a special token or a newline.
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
        pre_tokenizers.Punctuation("isolated"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    budget = BASE_VOCAB - len(BYTE_PIECES)
    bpe.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=budget, special_tokens=SPECIALS, show_progress=False))
    model = json.loads(bpe.to_str())["model"]
    learnt = [piece for piece, _ in sorted(model["vocab"].items(), key=lambda item: item[1]) if piece not in SPECIALS]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    chars = [piece for piece in learnt if len(piece) == 1]
    merged = [piece for piece in learnt if len(piece) > 1]
    return merged + chars, merges


def _cjk_fill(pieces: list[str], n: int) -> list[str]:
    taken = set(pieces)
    fill = [chr(code) for code in range(0x4E00, 0xA000) if chr(code) not in taken]
    return fill[:n]


def build_tokenizer_json(lines: list[str]) -> str:
    """tokenizer.json in the hub's layout (Prepend + Replace normalizer, no pre-tokenizer)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    pieces, merges = _train_pieces(lines)
    base = SPECIALS + BYTE_PIECES + pieces
    base += _cjk_fill(base, BASE_VOCAB - len(base))
    assert len(base) == BASE_VOCAB, len(base)
    vocab = {piece: i for i, piece in enumerate(base)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in [*SPECIALS, "<image>", "<pad>"]])
    return tok.to_str(pretty=True)


def metaspace_variant(tokenizer_json: str) -> str:
    """The same tokenizer as transformers converts Llama since 2024 (legacy=false): no normalizer, a
    Metaspace pre-tokenizer that puts "▁" before the first segment of a call only."""
    layout = json.loads(tokenizer_json)
    layout["normalizer"] = None
    layout["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    return json.dumps(layout)


def metaspace_tokenizer(standin: Path):
    """The stand-in's tokenizer in the Metaspace layout (``metaspace_variant``), as a transformers tokenizer."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(metaspace_variant((standin / "tokenizer.json").read_text()))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side="left")


def _special(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def tokenizer_config() -> dict:
    decoder = {str(i): {**_special(t), "special": True} for i, t in enumerate(SPECIALS)}
    decoder |= {str(IMAGE_TOKEN_ID): {**_special("<image>"), "special": True}}
    decoder |= {str(PAD_TOKEN_ID): {**_special("<pad>"), "special": True}}
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "add_prefix_space": None,
        "added_tokens_decoder": decoder,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "extra_special_tokens": {"image_token": "<image>"},
        "image_token": "<image>",
        "legacy": False,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<pad>",
        "padding_side": "left",
        "processor_class": "LlavaProcessor",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "trust_remote_code": False,
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }


def model_config(spec: StandinSpec) -> dict:
    """config.json: the hub's keys and values; only the sizes are the spec's."""
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "ignore_index": -100,
        "image_token_index": IMAGE_TOKEN_ID,
        "model_type": "llava",
        "pad_token_id": PAD_TOKEN_ID,
        "projector_hidden_act": "gelu",
        "text_config": {
            "_name_or_path": "lmsys/vicuna-7b-v1.5",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": spec.text_hidden,
            "intermediate_size": spec.text_intermediate,
            "max_position_embeddings": 4096,
            "model_type": "llama",
            "num_attention_heads": spec.text_heads,
            "num_hidden_layers": spec.text_layers,
            "num_key_value_heads": spec.text_heads,
            "rms_norm_eps": 1e-05,
            "torch_dtype": "float16",
            "vocab_size": PADDED_VOCAB,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.36.0.dev0",
        "vision_config": {
            "hidden_size": spec.vision_hidden,
            "image_size": IMAGE_SIZE,
            "intermediate_size": spec.vision_intermediate,
            "model_type": "clip_vision_model",
            "num_attention_heads": spec.vision_heads,
            "num_hidden_layers": spec.vision_layers,
            "patch_size": PATCH_SIZE,
            "projection_dim": spec.vision_hidden,
            "vocab_size": 32000,
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": PADDED_VOCAB,
    }


def side_files() -> dict[str, dict]:
    """The hub's non-weight JSON files other than config.json and the tokenizer's."""
    return {
        "generation_config.json": {
            "_from_model_config": True,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": PAD_TOKEN_ID,
            "transformers_version": "4.36.0.dev0",
        },
        "special_tokens_map.json": {
            "bos_token": _special("<s>"),
            "eos_token": _special("</s>"),
            "pad_token": _special("<pad>"),
            "unk_token": _special("<unk>"),
        },
        "preprocessor_config.json": {
            "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            "do_center_crop": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": CLIP_MEAN,
            "image_processor_type": "CLIPImageProcessor",
            "image_std": CLIP_STD,
            "processor_class": "LlavaProcessor",
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "size": {"shortest_edge": IMAGE_SIZE},
        },
        "processor_config.json": {
            "image_token": "<image>",
            "num_additional_image_tokens": 1,
            "patch_size": PATCH_SIZE,
            "processor_class": "LlavaProcessor",
            "vision_feature_select_strategy": "default",
        },
        "added_tokens.json": {"<image>": IMAGE_TOKEN_ID, "<pad>": PAD_TOKEN_ID},
        "chat_template.json": {"chat_template": CHAT_TEMPLATE},
    }


def hub_key(name: str) -> str:
    """transformers-5 parameter name -> the hub checkpoint's key."""
    for new, old in (
        ("model.language_model.", "language_model.model."),
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("lm_head.", "language_model.lm_head."),
    ):
        if name.startswith(new):
            return old + name[len(new) :]
    raise ValueError(f"no hub key for parameter {name!r}")


def write_weights(config: dict, spec: StandinSpec, out_dir: Path) -> None:
    """fp16 safetensors shards with the hub's key names and the index that maps each key to its shard."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(LlavaConfig.from_dict(config))
    # In module order (vision tower, projector, language model, head), so the shards split as the hub's do.
    tensors = {hub_key(name): t.detach().to(torch.float16).contiguous() for name, t in model.state_dict().items()}
    keys = list(tensors)
    nbytes = {key: t.numel() * t.element_size() for key, t in tensors.items()}
    total = sum(nbytes.values())
    shards: list[list[str]] = [[]]
    size = 0
    for key in keys:
        if shards[-1] and size + nbytes[key] > total / spec.shards and len(shards) < spec.shards:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes[key]
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: tensors[k] for k in shard}, out_dir / name, metadata={"format": "pt"})
        weight_map |= {k: name for k in shard}
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def build_hub_standin(spec: StandinSpec, vlguard_json: Path, out_dir: Path) -> None:
    """Write every file of the stand-in checkpoint into out_dir."""
    (out_dir / "tokenizer.json").write_text(build_tokenizer_json(corpus_lines(vlguard_json)))
    config = model_config(spec)
    files = {"config.json": config, "tokenizer_config.json": tokenizer_config(), **side_files()}
    for name, content in files.items():
        (out_dir / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    write_weights(config, spec, out_dir)


def ensure_hub_standin(vlguard_json: Path, spec: StandinSpec = StandinSpec()) -> Path:
    """Path of the cached stand-in, built once (atomically) per builder source, spec and corpus."""
    from mirage_ds.cache import build_lock, cache_root

    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(json.dumps(asdict(spec), sort_keys=True).encode())
    digest.update(Path(vlguard_json).read_bytes())
    # No "." in the name: build_lock names its lock file by replacing the name's suffix.
    target = cache_root() / "models" / f"llava-1_5-7b-hf-standin-{digest.hexdigest()[:12]}"
    with build_lock(target):
        if not (target / "config.json").is_file():
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".building-"))
            try:
                build_hub_standin(spec, vlguard_json, tmp)
                shutil.rmtree(target, ignore_errors=True)  # an incomplete leftover (no config.json)
                tmp.rename(target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target
