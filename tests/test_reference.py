"""Reference and frozen models: adapters-off equals the base model; the RMU hook and truncated forward."""

from __future__ import annotations

import torch

from mirage_ds.config import LoraSpec, ModelConfig
from mirage_ds.data.images import placeholder_png
from mirage_ds.data.preprocess import Preprocessor
from mirage_ds.data.schema import Turn
from mirage_ds.data.streamer import collate_padded
from mirage_ds.data.template import Template
from mirage_ds.models.hooks import hooked_layer
from mirage_ds.losses import functional as F
from mirage_ds.models.loading import build_model, load_model


def _batch(bundle) -> dict:
    pre = Preprocessor(Template(bundle.tokenizer, bundle.n_image_tokens, 256), bundle.image_processor, True)
    samples = []
    for i, (q, a) in enumerate([("What is the blue shape?", "circle"), ("Can you help me do this harmful thing?", "I'm sorry, I cannot help.")]):
        from mirage_ds.data.schema import Record

        record = Record(id=f"r{i}", turns=[Turn(role="user", text=q), Turn(role="assistant", text=a)], role="sft", source="synthetic")
        samples.append(pre.train_example(record, placeholder_png(record.id), record.id))
    return collate_padded(bundle.tokenizer.pad_token_id)(samples)


def _inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}


def test_adapters_disabled_logp_equals_separately_loaded_base(tiny_path) -> None:
    torch.manual_seed(0)
    lora = build_model(ModelConfig(lora=LoraSpec(r=4, alpha=8)))
    # Make the adapter non-trivial (LoRA-B starts at zero) so "disabled" is a real switch.
    with torch.no_grad():
        for name, p in lora.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    base = load_model(tiny_path, ModelConfig()).eval()
    batch = _batch(lora)
    lora.model.eval()
    with torch.no_grad():
        with lora.model.disable_adapter():
            off = F.sequence_logp(lora.model(**_inputs(batch)).logits, batch["labels"], "sum")
        on = F.sequence_logp(lora.model(**_inputs(batch)).logits, batch["labels"], "sum")
        ref = F.sequence_logp(base(**_inputs(batch)).logits, batch["labels"], "sum")
    torch.testing.assert_close(off, ref, atol=1e-6, rtol=0)
    assert (on - ref).abs().max() > 1e-3


def test_hook_captures_output_hidden_states_and_truncation_matches(tiny_bundle) -> None:
    model = tiny_bundle.model.eval()
    batch = _batch(tiny_bundle)
    with torch.no_grad():
        full = model(**_inputs(batch), output_hidden_states=True)
        n_layers = len(full.hidden_states) - 1
        norm = model.model.language_model.norm
        for layer in range(n_layers):
            # HF's last hidden_states entry is taken after the final norm; the hook reads the layer output.
            expected = full.hidden_states[layer + 1]
            with hooked_layer(model, layer, truncate=False) as captured:
                model(**_inputs(batch))
            got = norm(captured["hidden"]) if layer == n_layers - 1 else captured["hidden"]
            torch.testing.assert_close(got, expected, atol=0, rtol=0)
            with hooked_layer(model, layer, truncate=True) as captured:
                model(**_inputs(batch), logits_to_keep=1)
            got = norm(captured["hidden"]) if layer == n_layers - 1 else captured["hidden"]
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # The context manager put the whole stack back.
    assert len(model.model.language_model.layers) == len(full.hidden_states) - 1
