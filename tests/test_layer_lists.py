"""Kind 6, one parser for layer lists (issue 9): the CLI's --skip-layers and the app's "Skipped layers"
(URL parameter and sidebar) both go through ppcore.config.parse_layer_list. The same text gives the same
layers, or the same ConfigError: exit 2 with one line in the CLI, one message on the page."""
from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import ppcore.experiment
from app.state import Settings, parse_skip, prune_config
from ppcore import ConfigError, PPCoreError
from ppcore.cli import main
from ppcore.config import MAX_LAYER_INDEX, MAX_LAYER_LIST_CHARS, parse_layer_list

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")

VALID = [  # (text, layers)
    ("", ()),
    ("   ", ()),
    ("0-2", (0, 1, 2)),
    ("0,1,2", (0, 1, 2)),
    ("0-2,5", (0, 1, 2, 5)),
    (" 0 - 2 , 5 ", (0, 1, 2, 5)),
    ("5,0-2,1", (0, 1, 2, 5)),  # sorted, duplicates once
    ("7", (7,)),
    ("3-3", (3,)),
    ("0,2,", (0, 2)),  # a trailing comma is harmless
]

BAD = [  # (text, what the message must say)
    ("3-1", "runs backwards"),
    ("none", "an empty list '' skips no layers"),
    ("None", "an empty list '' skips no layers"),
    ("abc", "is not a layer index or range"),
    ("0-100000000", f"index 100000000 is above {MAX_LAYER_INDEX}"),
    ("1-", "is not a layer index or range"),
    ("-1", "is not a layer index or range"),
    ("0-2-4", "is not a layer index or range"),
    ("1.5", "is not a layer index or range"),
    (f"0-{MAX_LAYER_INDEX + 1}", f"index {MAX_LAYER_INDEX + 1} is above {MAX_LAYER_INDEX}"),
    (",".join(["1"] * 300), "too long"),
]
CLI_BAD = ["3-1", "none", "abc", "0-100000000", "1-"]


def message(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_layer_list(text)
    return str(e.value)


@pytest.mark.parametrize("text,layers", VALID)
def test_layer_list_valid_texts_parse_to_sorted_indices(text, layers):
    assert parse_layer_list(text) == layers


@pytest.mark.parametrize("text,needle", BAD, ids=[b[0][:20] for b in BAD])
def test_layer_list_bad_texts_are_one_config_error(text, needle):
    msg = message(text)
    assert needle in msg and "\n" not in msg and len(msg) < 300


def test_layer_list_bounds_are_checked_before_any_range_is_expanded():
    assert parse_layer_list(f"0-{MAX_LAYER_INDEX}") == tuple(range(MAX_LAYER_INDEX + 1))
    assert len(",".join(["1"] * 200)) <= MAX_LAYER_LIST_CHARS and parse_layer_list(",".join(["1"] * 200)) == (1,)
    tracemalloc.start()
    try:
        for text in ("0-100000000", "0-" + "9" * 390, "5-100000000000"):
            with pytest.raises(ConfigError):
                parse_layer_list(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # expanding 0-100000000 would take gigabytes


@pytest.mark.parametrize("text", CLI_BAD)
def test_layer_list_cli_exits_2_with_the_parser_message(text, capsys, monkeypatch):
    def no_loading(*a, **k):
        raise AssertionError("the skip list must be refused before any model work")

    monkeypatch.setattr(ppcore.experiment, "load_model", no_loading)
    with pytest.raises(SystemExit) as e:
        sys.exit(main(["eval", f"--skip-layers={text}"]))
    assert e.value.code == 2
    err = capsys.readouterr().err
    # argparse names the flag, then the parser's own ConfigError message, word for word.
    assert err == f"python -m ppcore eval: error: argument --skip-layers: {message(text)}\n"


class _Stop(PPCoreError):
    pass


@pytest.mark.parametrize("text,layers", [v for v in VALID if v[0].strip()] + [("", ())])
def test_layer_list_valid_texts_are_the_same_layers_in_cli_and_app(text, layers, monkeypatch, capsys):
    seen = {}

    class FakeSetup:
        def run(self, cfg, level="none"):
            seen["skip"] = cfg.skip_layers
            raise _Stop("stop here: the config is all this test needs")

    monkeypatch.setattr(ppcore.experiment, "prepare", lambda **kw: FakeSetup())
    assert main(["eval", f"--skip-layers={text}", "--ratio", "0.1"]) == 2
    assert "stop here" in capsys.readouterr().err
    assert seen["skip"] == layers
    assert prune_config(Settings(skip_layers=text)).skip_layers == layers == parse_skip(text)


def test_layer_list_cli_default_is_the_first_three_layers(monkeypatch, capsys):
    seen = {}

    class FakeSetup:
        def run(self, cfg, level="none"):
            seen["skip"] = cfg.skip_layers
            raise _Stop("stop")

    monkeypatch.setattr(ppcore.experiment, "prepare", lambda **kw: FakeSetup())
    assert main(["eval"]) == 2
    assert seen["skip"] == (0, 1, 2) == prune_config(Settings()).skip_layers


def _errors(at: AppTest) -> list[str]:
    assert not at.exception, [e.value for e in at.exception]
    return [e.value for e in at.error]


def test_layer_list_app_url_and_sidebar_give_the_cli_message(local_mode, monkeypatch):
    """Every bad list, from a shared URL and typed into the sidebar: one error, the engine's message, and no
    model work (the settings are checked first). The page starts it with a capital ('Layer list ...')."""
    import app.engine as engine
    from app.messages import sentence

    def no_model(*a, **k):
        raise AssertionError("the skip list must be refused before the model loads")

    monkeypatch.setattr(engine, "get_model", no_model)
    for text in CLI_BAD:
        at = AppTest.from_file(APP, default_timeout=120)
        at.query_params.update({"skip": text})
        at.run()
        assert _errors(at) == [sentence(message(text))], text
    for text in CLI_BAD:
        at.text_input(key="s_skip_layers").set_value(text)
        at.button(key="run").click().run()
        assert _errors(at) == [sentence(message(text))], text
