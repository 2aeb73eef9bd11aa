"""What one setting is: its definition, its checks, and the one way it is read or given on the command line.

A :class:`Setting` has a keyword, a default, inclusive bounds, one line of help and, if it is an
environment variable, its name. It refuses a bad value with one line naming the setting and what it
accepts (:class:`ConfigurationError`, a ``ValueError``; the CLI prints it and exits 2), reads its
variable (:meth:`Setting.read`), gives a click option (:meth:`Setting.option`) and a pydantic
``Field``'s arguments (:meth:`Setting.field_kwargs`). Every setting of mailglass is defined in
``settings.py``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import click

from mailglass_pipeline.errors import ConfigurationError


@dataclass(frozen=True)
class Setting:
    """One setting: its keyword, default, inclusive bounds, help, and its environment variable if it has one."""

    name: str
    default: Any
    minimum: int | float | None = None
    maximum: int | float | None = None
    description: str = ""
    env: str = ""
    #: The value's type when the default (``None``: unset means "not configured") does not show it.
    kind: type = str
    unit: str = ""
    #: The README's default column, where the default is not a plain value.
    default_text: str = ""
    #: A text setting's whole value must match this regular expression.
    pattern: str = ""

    @property
    def type(self) -> type:
        return self.kind if self.default is None else type(self.default)

    def accepts(self) -> str:
        """What a valid value is, in words: ``a whole number of seconds >= 1``."""
        if self.type is bool:
            return "true or false"
        if self.type is str:
            return f"text matching {self.pattern}" if self.pattern else "text"
        noun = ("a whole number" if self.type is int else "a number") + (f" of {self.unit}" if self.unit else "")
        low, high = (_number(bound) if bound is not None else None for bound in (self.minimum, self.maximum))
        if low is not None and high is not None:
            return f"{noun} from {low} to {high}"
        return f"{noun} >= {low}" if low is not None else f"{noun} <= {high}" if high is not None else noun

    def check(self, value: object) -> Any:
        """``value`` if it has this setting's type and bounds; else ``ConfigurationError`` (a ``ValueError``)."""
        if self.type in (bool, str):
            valid = isinstance(value, self.type)
            valid = valid and not (self.pattern and re.fullmatch(self.pattern, value) is None)  # type: ignore[arg-type]
        else:
            # bool is an int subclass; True as a limit is a bug, not a 1.
            numeric = int if self.type is int else (int, float)
            valid = isinstance(value, numeric) and not isinstance(value, bool) and math.isfinite(value)
            valid = valid and (self.minimum is None or value >= self.minimum)  # type: ignore[operator]
            valid = valid and (self.maximum is None or value <= self.maximum)  # type: ignore[operator]
        if not valid:
            raise ConfigurationError(f"{self.name} must be {self.accepts()}, got {value!r}")
        return float(value) if self.type is float else value  # type: ignore[arg-type]

    def parse(self, text: str) -> Any:
        """``text`` (from the environment or the command line) as a checked value."""
        try:
            return self.check(text if self.type is str else self.type(text.strip()))
        except ValueError:
            raise ConfigurationError(f"{self.env or self.name} must be {self.accepts()}, got {text!r}") from None

    def read(self, environ: Mapping[str, str] | None = None) -> Any:
        """The value of this setting's environment variable: its default when unset or blank, else parsed and checked.

        The one way a ``MAILGLASS_*`` variable is read (no module reads ``os.environ`` for one).
        """
        assert self.env, f"{self.name} is not read from the environment"
        raw = (os.environ if environ is None else environ).get(self.env, "")
        return self.default if not raw.strip() else self.parse(raw)

    def shown_default(self) -> str:
        if self.default_text:
            return self.default_text
        return _number(self.default)

    def field_kwargs(self, *, unset_reads_env: bool = False) -> dict[str, Any]:
        """A pydantic ``Field``'s arguments (bounds only where set); ``unset_reads_env``: None means the variable."""
        kwargs: dict[str, Any] = {"default": self.default, "description": self.description}
        if unset_reads_env:
            help = f"{self.description[:1].upper()}{self.description[1:]}"
            kwargs = {"default": None, "description": f"{help}; unset: ${self.env}, else {self.shown_default()}."}
        if self.minimum is not None:
            kwargs["ge"] = self.minimum
        if self.maximum is not None:
            kwargs["le"] = self.maximum
        return kwargs

    def option(self, *flags: str, **extra: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """A click option whose default, bounds and help come from this definition (refusals say what it takes)."""
        kwargs: dict[str, Any] = {"default": self.default, "help": self.description, **extra}
        if self.type is bool:
            return click.option(*flags, self.name, is_flag=True, **kwargs)
        kind = _IntSetting if self.type is int else _FloatSetting
        return click.option(*flags, self.name, type=kind(self), show_default=True, **kwargs)


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)  # 30.0 -> 30, 1000000 stays 1000000


class _Refused(click.BadParameter):
    """``--limit must be a whole number from 1 to 10000, got 'abc'``: the option, what it takes, what it got."""

    def format_message(self) -> str:
        return f"{' / '.join(self.param.opts) if self.param else 'value'} {self.message}"


class _SettingType:
    """Click's range type (its help shows the range) refusing with the setting's one-line message."""

    def __init__(self, setting: Setting) -> None:
        super().__init__(setting.minimum, setting.maximum)  # type: ignore[call-arg]
        self.setting = setting

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.setting.check(super().convert(value, param, ctx))  # type: ignore[misc]
        except (click.BadParameter, ValueError):
            raise _Refused(f"must be {self.setting.accepts()}, got {value!r}", ctx=ctx, param=param) from None


class _IntSetting(_SettingType, click.IntRange):
    pass


class _FloatSetting(_SettingType, click.FloatRange):
    pass
