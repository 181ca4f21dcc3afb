"""Checking a heatmap method's keyword options where users give them (the registry's boundary).

Method constructors are plain Python; :func:`wsolkit.maps.registry.make_method` (behind
:func:`wsolkit.heatmaps`, the apps and ``--option KEY=VALUE``) runs :func:`check_options` once
before building a method, so an unknown option or a value of the wrong type is a one-line
:class:`~wsolkit.errors.InputError` instead of a ``TypeError`` deep in a constructor.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from wsolkit.errors import InputError

if TYPE_CHECKING:
    from wsolkit.maps.base import HeatmapMethod


def option_defaults(method: type[HeatmapMethod]) -> dict[str, object]:
    """Keyword options of a method's constructor (``layer``, ``fc``, ...) and their defaults.

    Constructors that take ``**options`` pass them up the class hierarchy, so their parents'
    keywords count too, unless the class declares what ``**options`` takes in its
    ``config_options`` (name -> default, e.g. rCAM's configuration fields).
    """
    found: dict[str, object] = {}
    for klass in method.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        parameters = list(inspect.signature(vars(klass)["__init__"]).parameters.values())
        for parameter in parameters[1:]:  # skip self
            if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD):
                found.setdefault(parameter.name, parameter.default)
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
        declared = getattr(klass, "config_options", None)
        if declared is not None:
            for name, default in declared.items():
                found.setdefault(name, default)
            break
    found.pop("model", None)
    return found


def check_options(method: type[HeatmapMethod], options: dict[str, object]) -> None:
    """Raise :class:`InputError` for an option the method does not take or of a wrong type.

    A value must be a number where the default is a number, and a bool where it is a bool.
    """
    defaults = option_defaults(method)
    label = method.name or method.__name__
    for key, value in options.items():
        if key not in defaults:
            raise InputError(f"option {key!r} is unknown to {label}; "
                             f"it takes {', '.join(sorted(defaults))}")
        default = defaults[key]
        if isinstance(default, bool):
            wanted, ok = "true or false", isinstance(value, bool)
        elif isinstance(default, int):
            wanted = "an integer"
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            wanted = "a number"
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            continue
        if not ok:
            raise InputError(f"option {key}={value!r} of {label}: expected {wanted}")
