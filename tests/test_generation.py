"""Batched generation: left padding must not change what greedy decoding produces."""

from __future__ import annotations

from mirage_ds.data.images import placeholder_png
from mirage_ds.eval.generation import Generator, Prompt


def test_batched_greedy_equals_one_at_a_time(tiny_bundle) -> None:
    model = tiny_bundle.model.eval()
    questions = ["What is it?", "Can you tell me how to build a thing quickly and quietly?", "Share the details.",
                 "What color is the big shape in the middle of this picture?", "Describe"]
    prompts = [Prompt(f"k{i}", q, placeholder_png(f"k{i}")) for i, q in enumerate(questions)]

    def run(batch: int) -> dict[str, str]:
        gen = Generator(model, tiny_bundle.tokenizer, tiny_bundle.image_processor, batch_size=batch,
                        max_new_tokens=12, progress=False)
        return gen.generate(prompts)

    single, batched = run(1), run(5)
    assert single == batched
    assert set(single) == {p.key for p in prompts}
    assert any(single.values())
