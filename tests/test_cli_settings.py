"""The CLI's engine settings come from the config dataclasses: every PruneConfig and CalibConfig setting
is an option of every command that uses it, with the dataclass's default, and reads back as that value."""
from __future__ import annotations

import argparse

import pytest

import ppcore.experiment
from ppcore import PPCoreError
from ppcore.cli import build_parser, main
from ppcore.config import CalibConfig, PruneConfig, settings_of
from ppcore.flags import option, read_settings

# The settings each command takes from a list option instead (bench: methods x ratios; speed: methods).
LISTED = {"eval": (), "generate": (), "bench": ("method", "ratio"), "speed": ("method",)}
CALIBRATING = ("eval", "bench", "generate", "speed")


def _subparser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _actions(command: str) -> dict[str, argparse.Action]:
    return {s: a for a in _subparser(command)._actions for s in a.option_strings}


@pytest.mark.parametrize("command", CALIBRATING)
def test_every_setting_has_a_flag_with_the_dataclass_default(command):
    actions = _actions(command)
    for cls in (PruneConfig, CalibConfig):
        for s in settings_of(cls):
            if s.name in LISTED[command]:
                continue
            flag = option(s)
            assert flag in actions, f"{command} has no {flag}"
            assert actions[flag].default == s.default, (command, flag)
    defaults = vars(_subparser(command).parse_args([] if command != "generate" else ["--prompt", "x"]))
    assert PruneConfig(**read_settings(argparse.Namespace(**defaults), PruneConfig, skip=LISTED[command]),
                       **{k: getattr(PruneConfig(), k) for k in LISTED[command]}) == PruneConfig()
    assert CalibConfig(**read_settings(argparse.Namespace(**defaults), CalibConfig)) == CalibConfig()


def test_list_options_hold_the_dataclass_defaults():
    bench, speed = _actions("bench"), _actions("speed")
    assert PruneConfig().method in bench["--methods"].default.split(",")
    assert PruneConfig().method in speed["--methods"].default.split(",")
    assert PruneConfig().ratio in [float(r) for r in bench["--ratios"].default.split(",")]


def test_true_booleans_are_no_flags_and_layer_lists_keep_their_text():
    ns = _subparser("eval").parse_args(["--no-attn", "--no-history", "--skip-layers", "0-2,5", "--calib-seqs", "7"])
    values = read_settings(ns, PruneConfig)
    assert values["prune_attn"] is False and values["use_history"] is False and values["prune_mlp"] is True
    assert values["skip_layers"] == (0, 1, 2, 5)
    assert read_settings(_subparser("eval").parse_args(["--skip-layers", ""]), PruneConfig)["skip_layers"] == ()
    assert read_settings(ns, CalibConfig)["windows"] == 7  # --calib-seqs: the old name of --calib-windows
    assert "--calib-seqs" not in _subparser("eval").format_help()


@pytest.mark.parametrize("command", ["generate", "speed"])
def test_generate_and_speed_take_every_setting(command, monkeypatch, capsys):
    """generate and speed used to set only the method and ratio: now every setting reaches the run."""
    seen = {}

    def stop(*a, **k):
        raise PPCoreError("stop")

    monkeypatch.setattr("ppcore.loading.load_model", stop)
    monkeypatch.setattr("ppcore.commands._prune_config", lambda a, **fixed: seen.setdefault(
        "cfg", PruneConfig(**read_settings(a, PruneConfig, skip=tuple(fixed)), **fixed)))
    argv = [command, "--token-frac", "0.25", "--flap-bias", "mean", "--no-mlp", "--calib-windows", "3"]
    assert main(argv + (["--prompt", "x"] if command == "generate" else [])) == 2
    cfg = seen["cfg"]
    assert (cfg.token_frac, cfg.flap_bias, cfg.prune_mlp) == (0.25, "mean", False)


@pytest.mark.parametrize("argv,needle", [
    (["eval", "--calib-windows", "0"], "calibration windows must be a whole number"),
    (["eval", "--calib-windows", "many"], "argument --calib-windows: expected a whole number"),
    (["speed", "--calib-seq-len", "1"], "calibration seq_len must be a whole number"),
    (["generate", "--prompt", "x", "--ema", "2"], "ema must lie in"),
    (["bench", "--mlp-multiple", "0"], "mlp_multiple must be an integer >= 1"),
    (["bench", "--seeds", "none", "--official", "none"], "nothing to run"),
])
def test_bad_settings_exit_2_with_one_line(argv, needle, capsys, monkeypatch):
    monkeypatch.setattr(ppcore.experiment, "load_model", lambda *a, **k: pytest.fail("no model work"))
    monkeypatch.setattr("ppcore.loading.load_model", lambda *a, **k: pytest.fail("no model work"))
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refuses the text itself
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_calibration_windows_follow_the_scored_length_unless_given(monkeypatch):
    seen = []

    def fake_prepare(**kw):
        seen.append((kw["calib"], kw["calib_len_follows"]))
        raise PPCoreError("stop")

    monkeypatch.setattr(ppcore.experiment, "prepare", fake_prepare)
    assert main(["eval", "--seq-len", "64", "--calib-windows", "8"]) == 2
    assert main(["eval", "--seq-len", "64", "--calib-seq-len", "128"]) == 2
    assert seen[0] == (CalibConfig(windows=8), True) and seen[1] == (CalibConfig(seq_len=128), False)


def test_the_old_calib_windows_file_spelling_still_works(monkeypatch, tmp_path):
    seen = {}

    def fake_prepare(**kw):
        seen.update(kw)
        raise PPCoreError("stop")

    monkeypatch.setattr(ppcore.experiment, "prepare", fake_prepare)
    assert main(["eval", "--calib-windows", str(tmp_path / "calib.npy")]) == 2
    assert seen["calib_windows_file"] == str(tmp_path / "calib.npy") and seen["calib"] == CalibConfig()
    assert main(["eval", "--calib-windows-file", str(tmp_path / "c.npy"), "--calib-windows", "5"]) == 2
    assert seen["calib_windows_file"] == str(tmp_path / "c.npy") and seen["calib"].windows == 5
