"""Command-line options derived from the config dataclasses: one helper adds every setting of
`PruneConfig` or `CalibConfig` to a parser (name, default, help, choices and text form all come from
`ppcore.config.settings_of`), another reads them back as the dataclass's keyword arguments.

Booleans that default to True are switched off by `--no-<flag>`; text is parsed by the setting's own
`parse` (a bad value exits 2 with the ConfigError message on one line).
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Iterable, Optional

from .config import Setting, settings_of
from .errors import ConfigError

# Old spellings still accepted (hidden from --help) so that existing scripts keep running.
ALIASES = {"calib-windows": ("calib-seqs",)}


def option(s: Setting) -> str:
    """The option string of a setting: `--no-<flag>` for a boolean that defaults to True, else `--<flag>`."""
    return f"--no-{s.flag}" if s.kind is bool and s.default is True else f"--{s.flag}"


def dest(s: Setting) -> str:
    """The attribute the parsed value lands on: the flag with '_' for '-' (unique across the configs)."""
    return s.flag.replace("-", "_")


class _Given(argparse.Action):
    """Stores the value and remembers that the flag was given (`given(ns)`), e.g. so that a calibration
    window length not given can follow the scored windows' length."""

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        setattr(ns, self.dest, self.const if self.nargs == 0 else values)
        ns.__dict__.setdefault("_given", set()).add(self.dest)


def _typed(s: Setting, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(raw: str) -> Any:
        try:
            return parse(raw)
        except ConfigError as e:  # argparse would replace a ValueError's message with its own
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = s.name
    return convert


def add_settings(parser: argparse.ArgumentParser, cls: type, *, skip: Iterable[str] = (),
                 parse: Optional[dict[str, Callable[[str], Any]]] = None,
                 notes: Optional[dict[str, str]] = None) -> None:
    """Add one option per setting of `cls` (a config dataclass) but those named in `skip`.

    The default is the dataclass's; `parse` replaces a setting's text parser by name (it must accept
    everything the setting's own does); `notes` adds to a setting's help text, by name.
    """
    for s in settings_of(cls):
        if s.name in skip:
            continue
        common: dict[str, Any] = {"dest": dest(s), "action": _Given, "default": s.default}
        if s.kind is bool:
            state = "on by default; this flag turns it off" if s.default else "off by default"
            parser.add_argument(option(s), nargs=0, const=not s.default, help=f"{s.help} ({state})", **common)
            continue
        shown = s.text(s.default)
        shown = repr(shown) if s.kind is str or shown != str(s.default) else shown
        text_default = f" (default {shown}{(notes or {}).get(s.name, '')})"
        kw = dict(common, type=_typed(s, (parse or {}).get(s.name, s.parse)), choices=s.choices,
                  metavar=None if s.choices else s.flag.rsplit("-", 1)[-1].upper())
        parser.add_argument(option(s), help=s.help + text_default, **kw)
        for old in ALIASES.get(s.flag, ()):
            parser.add_argument(f"--{old}", **dict(kw, default=argparse.SUPPRESS, help=argparse.SUPPRESS))


def read_settings(ns: argparse.Namespace, cls: type, *, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The values of `cls`'s settings in `ns` but those named in `skip`, by field name (the keyword
    arguments of `cls`; constructing it validates them, raising ConfigError)."""
    return {s.name: getattr(ns, dest(s)) for s in settings_of(cls) if s.name not in skip}


def given(ns: argparse.Namespace) -> set[str]:
    """The destinations of the derived options given on the command line."""
    return ns.__dict__.get("_given", set())
