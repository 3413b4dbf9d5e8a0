"""Reference and frozen models: adapters-off equals the base model; the RMU hook and truncated forward."""

from __future__ import annotations

from collections.abc import Iterator

import deepspeed
import pytest
import torch

from conftest import load_untrained
from launch import free_port
from mirage_ds.data.images import placeholder_png
from mirage_ds.data.preprocess import Preprocessor
from mirage_ds.data.schema import Turn
from mirage_ds.data.streamer import collate_padded
from mirage_ds.data.template import Template
from mirage_ds.engine.distributed import init_distributed, teardown_distributed
from mirage_ds.engine.ds_config import build_ds_config
from mirage_ds.engine.reference import build_reference
from mirage_ds.models.hooks import hooked_layer
from mirage_ds.losses import functional as F
from mirage_ds.losses.registry import build_loss
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


@pytest.fixture(scope="module")
def one_rank() -> Iterator[None]:
    """A world of one (gloo), as a plain ``python launcher/run.py`` gets, torn down after the module."""
    with pytest.MonkeyPatch.context() as env:
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(free_port())}.items():
            env.setenv(key, value)
        init_distributed()
        try:
            yield
        finally:
            teardown_distributed(clean=True)


@pytest.mark.parametrize("recipe", ["npo_lora", "rmu_lora"])
def test_adapters_off_reference_equals_separately_loaded_base(recipe: str, one_rank, tiny_path) -> None:
    """The LoRA reference that training builds (``build_reference`` on the run's engine) is the base model:
    equal to a separately loaded copy without adapters, different from the adapted policy."""
    cfg = load_untrained(recipe, ["micro_batch_size=2"])
    needs = build_loss(cfg.loss, cfg.model).needs
    torch.manual_seed(0)
    bundle = build_model(cfg.model)
    # Make the adapter non-trivial (LoRA-B starts at zero) so "adapters off" is a real switch.
    with torch.no_grad():
        for name, p in bundle.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    # The recipe's own DeepSpeed config (ZeRO-3) with the persistence threshold of many ranks, not one rank's
    # keep-everything (ds_config.keep_one_rank_parameters): the forwards go through ZeRO-3's gather hooks.
    hidden = bundle.model.config.text_config.hidden_size
    ds_config = build_ds_config(cfg, 1, hidden)
    ds_config["zero_optimization"]["stage3_param_persistence_threshold"] = 10 * hidden
    del ds_config["zero_optimization"]["stage3_model_persistence_threshold"]
    engine, *_ = deepspeed.initialize(model=bundle.model, config=ds_config)
    engine.eval()
    reference = build_reference(cfg, engine, ds_config, needs)
    base = load_model(tiny_path, cfg.model).eval()
    batch = _batch(bundle)
    with torch.no_grad():
        got = reference(batch)
        if needs.hooked_layer is None:
            off = F.sequence_logp(got["logits"], batch["labels"], "sum")
            want = F.sequence_logp(base(**_inputs(batch)).logits, batch["labels"], "sum")
            adapted = F.sequence_logp(engine(**_inputs(batch)).logits, batch["labels"], "sum")
        else:
            off = got["hidden"]
            want = base(**_inputs(batch), output_hidden_states=True).hidden_states[needs.hooked_layer + 1]
            adapted = engine(**_inputs(batch), output_hidden_states=True).hidden_states[needs.hooked_layer + 1]
    torch.testing.assert_close(off, want, atol=1e-5, rtol=1e-6)
    # ``adapted`` ran after the reference, so this also shows the adapters were switched back on.
    assert (adapted - want).abs().max() > 1e-3


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
