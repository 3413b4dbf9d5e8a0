"""``hooked_forward``: the layer read-out RMU and its frozen reference share, plain and around a wrapper."""

from __future__ import annotations

import pytest
import torch

from mirage_ds.data.images import placeholder_png
from mirage_ds.data.preprocess import Preprocessor
from mirage_ds.data.schema import Record, Turn
from mirage_ds.data.streamer import collate_padded
from mirage_ds.data.template import Template
from mirage_ds.losses.base import model_inputs
from mirage_ds.models.hooks import hooked_forward


def _inputs(bundle) -> dict[str, torch.Tensor]:
    pre = Preprocessor(Template(bundle.tokenizer, bundle.n_image_tokens, 256), bundle.image_processor, True)
    samples = []
    for i, (q, a) in enumerate([("What is the blue shape?", "circle"), ("Which color is the square?", "It is red.")]):
        record = Record(id=f"h{i}", turns=[Turn(role="user", text=q), Turn(role="assistant", text=a)], role="sft", source="synthetic")
        samples.append(pre.train_example(record, placeholder_png(record.id), record.id))
    return model_inputs(collate_padded(bundle.tokenizer.pad_token_id)(samples))


class _Engine(torch.nn.Module):
    """Stands in for a DeepSpeed engine: the model sits at ``.module`` and calls go through the wrapper."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self.calls = 0

    def forward(self, **kwargs):
        self.calls += 1
        return self.module(**kwargs)


def test_hooked_forward_reads_the_layer_output_and_keeps_logits_only_when_asked(tiny_bundle) -> None:
    model = tiny_bundle.model.eval()
    inputs = _inputs(tiny_bundle)
    layer = 0
    with torch.no_grad():
        full = model(**inputs, output_hidden_states=True)
        expected = full.hidden_states[layer + 1]
        torch.testing.assert_close(hooked_forward(model, inputs, layer, truncate=False)["hidden"], expected, atol=0, rtol=0)
        truncated = hooked_forward(model, inputs, layer, truncate=True)
        assert set(truncated) == {"hidden"}
        torch.testing.assert_close(truncated["hidden"], expected, atol=1e-6, rtol=0)
        with_logits = hooked_forward(model, inputs, layer, truncate=False, logits=True)
        torch.testing.assert_close(with_logits["logits"], full.logits, atol=0, rtol=0)

        engine = _Engine(model)
        through = hooked_forward(engine, inputs, layer, truncate=True)
    assert engine.calls == 1
    torch.testing.assert_close(through["hidden"], truncated["hidden"], atol=0, rtol=0)
    assert len(model.model.language_model.layers) == len(full.hidden_states) - 1
    with pytest.raises(ValueError, match="truncated forward has no logits"):
        hooked_forward(model, inputs, layer, truncate=True, logits=True)
