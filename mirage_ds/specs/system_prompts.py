"""LLaVA-1.5's system prompts, by template name: the conversation template (``data/template.py``) opens with
one, the recipes' ``data.template`` names one, and the embedded tokenizer (``models/tokenizer.py``) learns
its merges on one.
"""

SYSTEM_PROMPTS: dict[str, str] = {
    # LLaVA-1.5 was trained with this one (``--version v1``): fine-tuning starts from it.
    "vicuna_v1": (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    ),
    # LLaVA's ``conv_llava_v1``: the Safety Mirage evaluation scripts prompt with it.
    "llava_v1": (
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions."
    ),
}
