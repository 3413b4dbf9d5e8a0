"""The lmms-eval adapter, offline: lmms-eval's own task definitions over local data in their schemas.

- The four task profiles ask the LLaVA-1.5 prompts (docs/paper-protocol.md, section 4), read from lmms-eval's
  task objects built from local task YAMLs.
- ``mirage-ds utility`` scores the tiny model on local ``vqav2_val`` and ``scienceqa_img`` exactly as the
  built-in scorers (``eval/vqa.py``) score the tiny model's answers to the same items asked directly.
  The tiny model's answers are noise, so the reference answers are made from them: some items are
  right, some wrong, and equal scores cannot come from two zeros.
- The built-in scorers read hand-picked edge cases as lmms-eval's ``vqav2_val`` and ``scienceqa_img``
  scoring functions do.
- ``loglikelihood`` equals the model's own token cross-entropy over the continuation.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import datasets
import lmms_eval.tasks  # installed by `make venv` (no skip: the adapter is part of the product)
import pytest
import torch

from mirage_ds.data.images import placeholder_png
from mirage_ds.data.schema import Turn
from mirage_ds.data.template import IGNORE_INDEX
from mirage_ds.eval.generation import Generator, Prompt, load_for_eval
from mirage_ds.eval.lmms import MirageLMM, cut, decoding, task_manager
from mirage_ds.eval.utility_tasks import task_spec
from mirage_ds.eval.vqa import scienceqa_letter, scienceqa_score, vqa_score

REPO = Path(__file__).resolve().parent.parent
UPSTREAM = Path(lmms_eval.tasks.__file__).parent
SHORT = "\nAnswer the question using a single word or phrase."
LETTERS = string.ascii_uppercase
WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "rock", "fish", "bird", "star", "leaf",
         "rain", "snow", "wind", "fire", "sand", "salt", "iron", "gold", "milk", "corn", "rice", "bean", "seed"]

IMAGE = datasets.Image()
TEXT = datasets.Value("string")
SCHEMAS: dict[str, tuple[str, str, datasets.Features]] = {
    # task: (upstream YAML, split, the hub dataset's columns that the task reads)
    "vqav2_val": ("vqav2/vqav2_val.yaml", "validation", datasets.Features({
        "question_id": datasets.Value("int64"), "question": TEXT, "image": IMAGE,
        "answers": [{"answer": TEXT, "answer_confidence": TEXT, "answer_id": datasets.Value("int64")}]})),
    "textvqa_val": ("textvqa/textvqa_val.yaml", "validation", datasets.Features({
        "question_id": datasets.Value("int64"), "question": TEXT, "image": IMAGE,
        "answers": [TEXT], "ocr_tokens": [TEXT]})),
    "vizwiz_vqa_val": ("vizwiz_vqa/vizwiz_vqa_val.yaml", "val", datasets.Features({
        "question_id": TEXT, "question": TEXT, "image": IMAGE, "answers": [TEXT], "category": TEXT})),
    "scienceqa_img": ("scienceqa/scienceqa_img.yaml", "test", datasets.Features({
        "question": TEXT, "image": IMAGE, "choices": [TEXT], "answer": datasets.Value("int64"), "hint": TEXT,
        "subject": TEXT, "lecture": TEXT, "solution": TEXT})),
}


def write_local_task(tasks_dir: Path, task: str, rows: dict[str, list[Any]], extra: str = "") -> None:
    """``task``'s upstream YAML, included by path, reading ``rows`` from a local parquet file instead of the hub."""
    upstream, split, features = SCHEMAS[task]
    rows = {**rows, "image": [{"bytes": png, "path": None} for png in rows["image"]]}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tasks_dir / f"{task}.parquet"))
    (tasks_dir / f"{task}.yaml").write_text(
        f"include: {UPSTREAM / upstream}\ntask: {task}\ndataset_path: parquet\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    {split}: {task}.parquet\n{extra}")


def test_profiles_ask_llava_prompts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path / "hf"))
    image = [placeholder_png("prompt")]
    write_local_task(tmp_path, "vqav2_val", {"question_id": [1], "question": ["What is on the table?"], "image": image,
                                             "answers": [[{"answer": "cup", "answer_confidence": "yes", "answer_id": 1}]]})
    write_local_task(tmp_path, "textvqa_val", {"question_id": [1], "question": ["What brand is the camera?"],
                                               "image": image, "answers": [["kodak"]], "ocr_tokens": [["kodak", "film"]]})
    write_local_task(tmp_path, "vizwiz_vqa_val", {"question_id": ["VizWiz_val_1"], "question": ["What is this?"],
                                                  "image": image, "answers": [["soup"]], "category": ["other"]})
    write_local_task(tmp_path, "scienceqa_img", {"question": ["Which is a mammal?"], "image": image,
                                                 "choices": [["whale", "shark"]], "answer": [0], "hint": ["Look closely."],
                                                 "subject": [""], "lecture": [""], "solution": [""]})
    expected = {
        "vqav2_val": "What is on the table?" + SHORT,
        "textvqa_val": "What brand is the camera?\nReference OCR token: kodak, film" + SHORT,
        "vizwiz_vqa_val": "What is this?\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT,
        "scienceqa_img": "Context: Look closely.\nWhich is a mammal?\nA. whale\nB. shark\n"
                         "Answer with the option's letter from the given choices directly.",
    }
    loaded = lmms_eval.tasks.get_task_dict([task_spec(t) for t in expected], task_manager([tmp_path]))
    for name, prompt in expected.items():
        task = loaded[name]
        assert task.doc_to_text(task.eval_docs[0]) == prompt, name


def _generate(generator: Generator, prompts: list[tuple[str, bytes]]) -> list[str]:
    out = generator.generate([Prompt(str(i), text, png) for i, (text, png) in enumerate(prompts)])
    # lmms-eval stops a task that names no stop string at "\n\n" (its few-shot delimiter).
    return [cut(out[str(i)], ["\n\n"]) for i in range(len(prompts))]


def test_utility_scores_equal_builtin_scorers(tiny_path: Path, tmp_path: Path) -> None:
    model, tokenizer, image_processor = load_for_eval(tiny_path)
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()

    # vqav2_val: 10 human answers per question; k of them are the model's own answer (k = 0..4).
    questions = [f"What is shown in picture {i}?" for i in range(8)]
    images = [placeholder_png(f"vqa-{i}") for i in range(8)]
    answers = _generate(Generator(model, tokenizer, image_processor, batch_size=4, max_new_tokens=16,
                                  template="vicuna_v1", progress=False),
                        [(q + SHORT, png) for q, png in zip(questions, images)])
    humans = [[a] * k + ["zebra crossing"] * (10 - k) for a, k in zip(answers, [3, 1, 0, 2, 4, 0, 1, 3])]
    builtin_vqa = vqa_score(answers, humans).value
    write_local_task(tasks_dir, "vqav2_val", {
        "question_id": list(range(8)), "question": questions, "image": images,
        "answers": [[{"answer": h, "answer_confidence": "yes", "answer_id": j + 1} for j, h in enumerate(hs)] for hs in humans]})

    # scienceqa_img with 26 choices, asked for one new token: the tiny model's first token is now and
    # then a letter, never a letter alone. Where it names a letter, the correct choice is that letter for
    # three items in four (the fourth is wrong on purpose); elsewhere it is A.
    n = 24
    hints = ["" if i % 2 else f"Hint {i}." for i in range(n)]
    sqa_questions = [f"Which word goes with picture {i}?" for i in range(n)]
    sqa_images = [placeholder_png(f"sqa-{i}") for i in range(n)]
    options = "\n".join(f"{LETTERS[j]}. {w}" for j, w in enumerate(WORDS))
    prompts = [(("Context: " + h + "\n" if h else "") + q + "\n" + options +
                "\nAnswer with the option's letter from the given choices directly.", png)
               for h, q, png in zip(hints, sqa_questions, sqa_images)]
    sqa_answers = _generate(Generator(model, tokenizer, image_processor, batch_size=4, max_new_tokens=1,
                                      template="vicuna_v1", progress=False), prompts)
    letters = [scienceqa_letter(a) for a in sqa_answers]
    correct = [0 if letter is None else (LETTERS.index(letter) + (i % 4 == 3)) % 26 for i, letter in enumerate(letters)]
    builtin_sqa = scienceqa_score(sqa_answers, correct).value
    write_local_task(tasks_dir, "scienceqa_img", {
        "question": sqa_questions, "image": sqa_images, "choices": [WORDS] * n, "answer": correct, "hint": hints,
        "subject": ["natural science"] * n, "lecture": [""] * n, "solution": [""] * n},
        extra="generation_kwargs:\n  max_new_tokens: 1\n  temperature: 0\n  do_sample: false\n")
    assert 0 < builtin_vqa < 1 and 0 < builtin_sqa < 1, (answers, sqa_answers)

    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "LMMS_EVAL_DATASETS_CACHE": str(tmp_path / "hf" / "datasets"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mirage_ds.cli.main", "utility", "--model", str(tiny_path), "--task", "vqav2_val",
         "--task", "scienceqa_img", "--include-path", str(tasks_dir), "--batch-size", "4", "--device", "cpu",
         "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    scores = json.loads((out / "utility.json").read_text())["tasks"]
    assert scores["vqav2_val"]["n"] == 8 and scores["scienceqa_img"]["n"] == n
    assert scores["vqav2_val"]["value"] == pytest.approx(builtin_vqa, abs=1e-12)
    assert scores["scienceqa_img"]["value"] == pytest.approx(builtin_sqa, abs=1e-12)


def test_loglikelihood_is_the_models_token_cross_entropy(tiny_path: Path) -> None:
    plugin = MirageLMM.from_export(tiny_path)
    image = placeholder_png("loglikelihood")
    logprob, greedy = plugin.continuation_logprob("What is in the picture?", " a red circle", image, "test")
    # Reference: HF's own shifted cross-entropy (token mean) with labels on the continuation only.
    pre = plugin.preprocessor
    encoded = pre.template.encode([Turn(role="user", text="What is in the picture?"),
                                   Turn(role="assistant", text="a red circle")])
    labels = list(encoded.labels)
    labels[max(p for p, label in enumerate(labels) if label != IGNORE_INDEX)] = IGNORE_INDEX  # the closing </s>
    n = sum(label != IGNORE_INDEX for label in labels)
    with torch.no_grad():
        loss = plugin.model(input_ids=torch.tensor([encoded.input_ids]), pixel_values=pre.pixels(image, "test")[None],
                            labels=torch.tensor([labels])).loss.item()
    assert n >= 3 and logprob == pytest.approx(-loss * n, rel=1e-5)
    assert greedy is False  # the untrained model does not pick "a red circle"


def test_decoding_is_greedy_only() -> None:
    assert decoding({"max_new_tokens": 16, "temperature": 0, "do_sample": False}, "t") == (16, ())
    assert decoding({"until": "ASSISTANT:"}, "t") == (128, ("ASSISTANT:",))
    with pytest.raises(ValueError, match="greedily"):
        decoding({"temperature": 0.7}, "t")
    with pytest.raises(ValueError, match="image_aspect_ratio"):
        decoding({"image_aspect_ratio": "original"}, "t")
    assert cut("yes\n\nUSER: more", ["\n\n"]) == "yes"


@pytest.mark.parametrize("response", ["B", " b \n", "B.", "B. the moon", "C.x", "b. the moon", "The answer is B.", "(B)",
                                      "Bb", "", "e", "E. fish"])
def test_builtin_scienceqa_reads_as_lmms_eval(response: str) -> None:
    from lmms_eval.tasks.scienceqa.utils import sqa_process_results

    for answer in range(5):
        doc = {"choices": WORDS[:5], "answer": answer}
        theirs = sqa_process_results(doc, [response])["exact_match"]
        assert scienceqa_score([response], [answer], resamples=10).value == theirs, (response, answer)


@pytest.mark.parametrize("prediction", ["Two.", "two", "None", "a dog", "The Dog.", "yes!", "dont", "1,000", "2.5",
                                        "black-white", "black - white", "(left)", "  red\n"])
def test_builtin_vqa_reads_as_lmms_eval_vqav2(prediction: str) -> None:
    from lmms_eval.tasks.vqav2.utils import vqav2_process_results

    humans = ["2", "two", "0", "dog", "dog", "yes", "don't", "1000", "2.5", "black white"]
    doc = {"question_id": 0, "answers": [{"answer": h, "answer_id": j} for j, h in enumerate(humans)]}
    theirs = vqav2_process_results(doc, [prediction])["exact_match"]
    assert vqa_score([prediction], [humans], resamples=10).value == pytest.approx(theirs, abs=1e-12)
