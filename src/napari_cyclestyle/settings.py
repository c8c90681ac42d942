"""Configuration fields that carry what the front ends need: help, choices, bounds.

The checks the configuration classes run on construction live here too, so that each
error message is written once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration value is impossible; the message names the field and the fix."""


@dataclass(frozen=True)
class Setting:
    """What a configuration field is, for the front ends that offer it.

    Attributes
    ----------
    name : str
        The field's name.
    default : object
        Its default value.
    help : str
        One line saying what it does (the CLI's help text).
    choices : tuple of str, optional
        The values it may take (checked on construction).
    bounds : (number, number), optional
        The range a form offers (the widgets' spin boxes); construction checks only
        what the class docstring says.
    """

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    bounds: tuple[float, float] | None = None


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    bounds: tuple[float, float] | None = None,
) -> Any:
    """A dataclass field that carries its :class:`Setting` facts."""
    return field(default=default, metadata={"help": help, "choices": choices, "bounds": bounds})


def settings(kind: type) -> dict[str, Setting]:
    """The :class:`Setting` of every field of ``kind`` (``ModelConfig`` or
    ``TrainConfig``), by name."""
    return {f.name: Setting(f.name, f.default, **f.metadata) for f in dataclasses.fields(kind)}


def check_choices(config: Any) -> None:
    """Raise :class:`ConfigError` if a field of ``config`` with choices holds another value."""
    for setting in settings(type(config)).values():
        if setting.choices is not None:
            check_choice(setting.name, getattr(config, setting.name), setting.choices)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {', '.join(choices)}.")


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a number above 0 (or at least 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {bound}, got {value!r}.")


def check_int(name: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {type(value).__name__} {value!r}.")
