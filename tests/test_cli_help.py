"""The command line's grammar: every option of every (nested) command says what it does, every --help runs,
and the spellings shared across commands (overrides, --judge, --dtype/--device, --template) mean the same."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirage_ds.cli.main import build_parser
from mirage_ds.cli.options import LOAD_DTYPES, Renamed, judge_choice
from mirage_ds.config import DataConfig, load_config
from mirage_ds.data.schema import DataError
from mirage_ds.specs.system_prompts import SYSTEM_PROMPTS

REPO = Path(__file__).resolve().parent.parent
# Suppressed on purpose: set by the deepspeed launcher, never by a user (launcher/run.py).
INTERNAL = {"--local_rank"}
# The commands that load a model, hence take --dtype and --device.
LOADING = [("eval",), ("utility",), ("data", "harmful-responses"), ("export",)]


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser reachable from ``parser``, with the words that select it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


COMMANDS = dict(_commands(build_parser()))


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings}


def test_the_walk_reaches_the_nested_commands() -> None:
    for words in [("data", "build", "synthetic"), ("data", "harmful-responses"), ("eval",), ("export",), ("sweep",)]:
        assert words in COMMANDS


@pytest.mark.parametrize("words", list(COMMANDS), ids=lambda words: " ".join(words) or "mirage-ds")
def test_every_argument_has_help(words: tuple[str, ...]) -> None:
    for action in COMMANDS[words]._actions:
        if isinstance(action, argparse._HelpAction) or INTERNAL & set(action.option_strings):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help is not argparse.SUPPRESS, f"mirage-ds {' '.join(words)}: {name} has no help"
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help, f"mirage-ds {' '.join(words)} {choice.dest}: no help"


def test_the_launcher_arguments_have_help() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "launcher" / "run.py"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--set KEY=VALUE" in proc.stdout and "--local_rank" not in proc.stdout


@pytest.mark.parametrize("words", list(COMMANDS), ids=lambda words: " ".join(words) or "mirage-ds")
def test_every_help_runs(words: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*words, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: mirage-ds")


def test_the_top_help_runs_as_a_program() -> None:
    proc = subprocess.run([sys.executable, "-m", "mirage_ds.cli.main", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for command in ("recipes", "data", "eval", "export", "reproduce", "utility"):
        assert command in proc.stdout


def test_overrides_are_accepted_positionally_and_after_set_in_the_order_typed() -> None:
    parser = build_parser()
    args = parser.parse_args(["recipes", "sft_lora", "max_steps=3", "--set", "optim.lr=0.5", "--show"])
    assert (args.names, args.overrides) == (["sft_lora"], ["max_steps=3", "optim.lr=0.5"])
    args = parser.parse_args(["recipes", "--set", "max_steps=4", "sft_lora", "max_steps=5"])
    assert (args.names, args.overrides) == (["sft_lora"], ["max_steps=4", "max_steps=5"])
    assert load_config(args.names[0], args.overrides).max_steps == 5  # the last one wins, as typed
    for words in (["reproduce"], ["data", "build", "synthetic", "--out", "x"]):
        assert parser.parse_args([*words, "a.b=1", "--set", "c=2"]).overrides == ["a.b=1", "c=2"]


def test_synthetic_overrides_are_the_recipe_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mirage_ds.cli.data import _spec_overrides

    parser = build_parser()
    args = parser.parse_args(["data", "build", "synthetic", "--out", str(tmp_path), "data.synthetic.what_rate=0.5",
                              "--set", "data.synthetic.unsafe_first_words=[Share]", "--seed", "3"])
    assert _spec_overrides(args) == {"what_rate": 0.5, "unsafe_first_words": ["Share"], "seed": 3}
    wrong = parser.parse_args(["data", "build", "synthetic", "--out", str(tmp_path), "--set", "what_rate=0.5"])
    with pytest.raises(DataError, match=r"override 'what_rate=0.5': .* data\.synthetic\.what_rate=\.\.\."):
        _spec_overrides(wrong)


@pytest.mark.parametrize(("old", "new"), [(["--keywords", "vlguard-v1"], "--judge keyword:VERSION"),
                                          (["--judge-model", "/models/qwen"], "--judge model:PATH"),
                                          (["--judge-model=/models/qwen"], "--judge model:PATH")])
def test_old_eval_spellings_fail_in_one_line_naming_the_new(old: list[str], new: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["eval", "--model", "m", *old])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {old[0].split('=')[0]} was replaced by {new}\n"


def test_every_old_spelling_points_somewhere() -> None:
    renamed = [action for _, parser in COMMANDS.items() for action in parser._actions if isinstance(action, Renamed)]
    assert {option for action in renamed for option in action.option_strings} == {"--keywords", "--judge-model"}


def test_one_judge_grammar(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert judge_choice([]).model is None and judge_choice(["keyword"]) == judge_choice([])
    both = judge_choice(["keyword:vlguard-v1", f"model:{tmp_path}"])
    assert (both.keywords, both.model) == ("vlguard-v1", tmp_path)
    for bad, message in [("keyword:v9", "unknown refusal keyword version 'v9'"), ("model:", "expected keyword"),
                         (f"model:{tmp_path / 'none'}", "has no config.json"), ("judge", "expected keyword")]:
        with pytest.raises(DataError, match=message):
            judge_choice([bad])
    with pytest.raises(DataError, match="a second keyword judge"):
        judge_choice(["keyword", "keyword:strict-v1"])
    for words in (["eval"], ["data", "harmful-responses", "x", "--model", "m", "--out", "o"]):
        assert build_parser().parse_args([*words, "--judge", "keyword:strict-v1"]).judge == ["keyword:strict-v1"]


@pytest.mark.parametrize("words", LOADING, ids=" ".join)
def test_model_loading_commands_take_dtype_and_device(words: tuple[str, ...]) -> None:
    options = _options(COMMANDS[words])
    assert {"--dtype", "--device"} <= set(options)
    if words != ("export",):  # export's --dtype is the written tensors' (with 'source'); it merges in fp32
        assert options["--dtype"].choices == ("auto", *LOAD_DTYPES) and options["--dtype"].default == "auto"


def test_template_choices_are_the_templates_and_each_default_says_why() -> None:
    assert tuple(SYSTEM_PROMPTS) == DataConfig.model_fields["template"].annotation.__args__
    defaults = {}
    for words, parser in COMMANDS.items():
        action = _options(parser).get("--template")
        if action is not None:
            assert action.choices == tuple(SYSTEM_PROMPTS) and f"default {action.default}: " in action.help
            defaults[words] = action.default
    # The paper's safety evaluation asks with llava_v1; LLaVA-1.5's VQA scripts (utility) with vicuna_v1.
    assert defaults == {("eval",): "llava_v1", ("utility",): "vicuna_v1", ("data", "harmful-responses"): "llava_v1"}


def test_dtype_auto_is_the_checkpoints_own_on_cuda_and_fp32_on_cpu(tmp_path: Path) -> None:
    from mirage_ds.models.loading import resolve_dtype

    (tmp_path / "config.json").write_text('{"torch_dtype": "float16"}')
    assert resolve_dtype("auto", tmp_path, "cuda:0") == "fp16"
    assert resolve_dtype("auto", tmp_path, "cpu") == "fp32"
    assert resolve_dtype("bf16", tmp_path, "cpu") == "bf16"
    (tmp_path / "config.json").write_text('{"dtype": "bfloat16"}')
    assert resolve_dtype("auto", tmp_path, "cuda") == "bf16"
    (tmp_path / "config.json").write_text("{}")
    assert resolve_dtype("auto", tmp_path, "cuda") == "fp32"


def test_export_without_merge_says_what_the_export_is(tiny_path: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from mirage_ds.cli.main import main

    run = tmp_path / "run"
    shutil.copytree(tiny_path, run / "export")
    assert main(["export", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{run / 'export'}: full checkpoint, LlavaForConditionalGeneration,") and "fp32" in out
    assert main(["export", str(tmp_path / "none")]) == 2
    assert main(["export", str(run), "--out", str(tmp_path / "m")]) == 2
    (run / "export-merged").mkdir()
    assert main(["export", str(run), "--merge"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("none/export does not exist (RUN is a training output_dir or its export/ directory)")
    assert err[1] == "error: --out: only with --merge"
    assert err[2] == f"error: {run / 'export-merged'} already exists (use --overwrite to replace it)"
