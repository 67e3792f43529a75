"""Loading the gateway's config: every way in (``GatewayConfig(**arguments)``,
``GatewayConfig.from_toml``, ``Gateway.from_config``, ``fleetgate check``) ends in
:func:`load`, which turns whatever goes wrong into one :class:`fleetgate.ConfigError`.

Each of its :attr:`~fleetgate.ConfigError.problems` names where the bad value came from
(the file, the ``FLEETGATE_*`` variable, ``argument`` for keyword arguments, or the
``FLEETGATE_ENV`` preset), the key in TOML terms (``[cache.semantic] threshold``,
``budgets.limits[0].dollars``) and what was expected; an unknown key gets the nearest
valid one. No problem ever repeats a value: a mistyped key may hold a secret
(``redis_ulr = "redis://:password@…"``), so neither the messages nor the exception's
chain carry what was written.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource
from pydantic_settings.exceptions import SettingsError

from fleetgate.config.environments import _ENV_NAMES
from fleetgate.errors import ConfigError, ConfigProblem

__all__ = ["ARGUMENT", "ENV_PREFIX", "OTHER_VARIABLES", "key_path", "load", "overridden"]

T = TypeVar("T", bound=BaseSettings)

#: Where a keyword argument's problem is said to come from.
ARGUMENT = "argument"
ENV_PREFIX = "FLEETGATE_"
#: ``FLEETGATE_*`` variables fleetgate reads elsewhere: not config keys, never typos of one.
OTHER_VARIABLES = frozenset({"FLEETGATE_EMBEDDING_MODEL", "FLEETGATE_BATCH_DIR", "FLEETGATE_TEST_REDIS_URL",
                             "FLEETGATE_TEST_CLUSTER_URL"})

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
#: Messages said in TOML's words rather than pydantic's class names.
_BY_TYPE = {
    "model_type": "should be a table",
    "model_attributes_type": "should be a table",
    "dict_type": "should be a table",
    "list_type": "should be an array",
    "missing": "is required: set it",
    "union_tag_invalid": "is not one of the allowed kinds",
    "union_tag_not_found": "needs a kind",
}


def load(settings_cls: type[T], make: Callable[[], None], arguments: Mapping[str, Any],
         toml_file: Path | None) -> None:
    """Run `make` (which validates a `settings_cls` from `arguments`, the environment and
    `toml_file`); anything wrong with the config is raised as one ConfigError naming
    every problem. Nothing of the input is carried along: the error is raised outside
    the handlers, with no ``__cause__`` or ``__context__``."""
    problems = _file_problems(toml_file) if toml_file is not None else []
    if problems:
        raise ConfigError(problems=problems)
    problems = _mistyped_variables(settings_cls)
    errors: list[Any] = []
    try:
        make()
    except ValidationError as e:
        errors = e.errors(include_url=False)
    except SettingsError as e:
        problems.append(_settings_problem(settings_cls, str(e)))
    except (OSError, tomllib.TOMLDecodeError) as e:  # the file changed or vanished since it was checked
        problems.append(ConfigProblem(str(toml_file), "", _unreadable(e)))
    if errors:
        sources = _sources(settings_cls, arguments, toml_file)
        problems += [_problem(settings_cls, error, sources) for error in errors]
    if problems:
        raise ConfigError(problems=problems)


def overridden(config: T, overrides: Mapping[str, Any]) -> T:
    """`config` with `overrides` (top-level fields) in place of its values, validated like
    any keyword argument: an unknown or bad override is a ConfigError too."""
    if not overrides:
        return config
    return type(config)(**{**dict(config), **overrides})


def key_path(loc: Sequence[str | int]) -> str:
    """A pydantic location as the key a TOML file has: ``max_upstream_retries``,
    ``[cache.semantic] threshold``, ``budgets.limits[0].dollars``."""
    parts = [str(p) for p in loc if p != "[key]"]
    if not parts:
        return "(top level)"
    if any(isinstance(p, int) for p in loc):
        out = ""
        for p in loc:
            if isinstance(p, int):
                out += f"[{p}]"
            elif p != "[key]":
                out += ("." if out else "") + _toml_key(p)
        return out
    if len(parts) == 1:
        return _toml_key(parts[0])
    return f"[{'.'.join(_toml_key(p) for p in parts[:-1])}] {_toml_key(parts[-1])}"


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- before validation: the file and the variables ---------------------------------------------

def _file_problems(path: Path) -> list[ConfigProblem]:
    if not path.exists():
        return [ConfigProblem(str(path), "", "no such file: check the path (relative paths are from the "
                                             f"working directory, {Path.cwd()})")]
    if not path.is_file():
        return [ConfigProblem(str(path), "", "not a file: give the path of a TOML file")]
    try:
        with path.open("rb") as f:
            tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        return [ConfigProblem(str(path), "", _unreadable(e))]
    return []


def _unreadable(e: OSError | tomllib.TOMLDecodeError) -> str:
    if isinstance(e, tomllib.TOMLDecodeError):
        return f"not valid TOML: {e}; fix the syntax there"
    return f"cannot be read ({e.strerror or type(e).__name__}): check that it exists and is readable"


def _mistyped_variables(settings_cls: type[BaseSettings]) -> list[ConfigProblem]:
    """``FLEETGATE_*`` variables that name no setting but nearly name one: without this a
    mistyped ``FLEETGATE_REDIS_ULR`` would be ignored and every pod would run alone."""
    fields = list(settings_cls.model_fields)
    problems = []
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in OTHER_VARIABLES:
            continue
        top = upper[len(ENV_PREFIX):].split("__")[0].lower()
        if top in fields:
            continue
        close = difflib.get_close_matches(top, fields, n=1, cutoff=0.8)
        if close:
            rest = upper[len(ENV_PREFIX) + len(top):]
            problems.append(ConfigProblem(name, "", f"not a fleetgate setting; did you mean "
                                                    f"`{ENV_PREFIX}{close[0].upper()}{rest}`?"))
    return problems


def _settings_problem(settings_cls: type[BaseSettings], said: str) -> ConfigProblem:
    """pydantic-settings could not parse a variable's value (JSON for a table or array)."""
    found = re.search(r'field "([^"]+)"', said)
    field = found.group(1) if found else ""
    where = _variable_for((field,)) if field else None
    return ConfigProblem(where or f"{ENV_PREFIX}* variables", key_path((field,)) if field else "",
                         "cannot be parsed: a table or array set in a variable is JSON; or set its keys one by "
                         f"one ({ENV_PREFIX}{field.upper()}__<KEY>), or in the config file")


# -- after validation: which source each error's value came from ----------------------------------

class _Source(typing.NamedTuple):
    where: str
    values: Any


def _sources(settings_cls: type[BaseSettings], arguments: Mapping[str, Any],
             toml_file: Path | None) -> list[_Source]:
    """What each source held, highest precedence first (as the settings read them)."""
    sources = [_Source(ARGUMENT, dict(arguments))]
    try:
        sources.append(_Source("env", EnvSettingsSource(settings_cls)()))
    except SettingsError:
        pass  # a variable that cannot be parsed is its own problem; its keys are not known
    file: dict[str, Any] = {}
    if toml_file is not None:
        try:
            with toml_file.open("rb") as f:
                file = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError):
            file = {}
        sources.append(_Source(str(toml_file), file))
    chosen = next((s.values.get("env") for s in sources if isinstance(s.values, dict) and s.values.get("env")),
                  None)
    if isinstance(chosen, str):
        from fleetgate.config.environments import ENVIRONMENTS

        name = _ENV_NAMES.get(chosen.lower(), chosen.lower())
        if name in ENVIRONMENTS:
            sources.append(_Source(f"the {name} preset ({ENV_PREFIX}ENV)", ENVIRONMENTS[name]))
    return sources


def _depth(values: Any, loc: Sequence[str | int]) -> int:
    """How many parts of `loc` `values` holds (a model object holds all of its own)."""
    depth = 0
    for part in loc:
        if isinstance(values, BaseModel):
            return len(loc)
        if isinstance(values, Mapping) and isinstance(part, str) and part in values:
            values = values[part]
        elif isinstance(values, Sequence) and not isinstance(values, str) and isinstance(part, int) \
                and 0 <= part < len(values):
            values = values[part]
        else:
            break
        depth += 1
    return depth


def _where(settings_cls: type[BaseSettings], loc: Sequence[str | int], sources: list[_Source]) -> str:
    """The source whose value is at `loc` (or deepest towards it), highest precedence first."""
    best, best_depth = None, 0
    for source in sources:
        depth = _depth(source.values, loc)
        if depth > best_depth:
            best, best_depth = source, depth
    if best is None:
        return "defaults"
    if best.where == "env":
        return _variable_for(loc) or f"{ENV_PREFIX}* variables"
    return best.where


def _variable_for(loc: Sequence[str | int]) -> str | None:
    """The ``FLEETGATE_*`` variable that set the value at `loc` (the one naming most of it)."""
    want = [str(p).lower() for p in loc]
    best, best_len = None, 0
    for name in os.environ:
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        if want[:len(path)] == path and len(path) > best_len:
            best, best_len = name, len(path)
    return best


def _problem(settings_cls: type[BaseSettings], error: Any, sources: list[_Source]) -> ConfigProblem:
    loc: tuple[str | int, ...] = tuple(error["loc"])
    where = _where(settings_cls, loc, sources)
    kind = error["type"]
    if kind == "extra_forbidden":
        message = _unknown(settings_cls, loc, where)
    elif kind in _BY_TYPE:
        message = _BY_TYPE[kind]
    else:
        message = str(error["msg"]).removeprefix("Value error, ").replace("Input should", "should")
        if _repeats_input(message, error.get("input")):  # a validator that quoted what it was given
            message = f"is not valid ({kind})"
    return ConfigProblem(where, key_path(loc), message)


def _repeats_input(message: str, given: Any) -> bool:
    """Whether `message` quotes the value (or a string inside it) it was given."""
    if isinstance(given, str):
        return len(given) >= 4 and given in message
    if isinstance(given, Mapping):
        return any(_repeats_input(message, v) for v in given.values())
    if isinstance(given, (list, tuple)):
        return any(_repeats_input(message, v) for v in given)
    return False


def _unknown(settings_cls: type[BaseSettings], loc: tuple[str | int, ...], where: str) -> str:
    """An unknown key, with the nearest known one (or the known ones)."""
    model = _model_at(settings_cls, loc[:-1])
    known = list(model.model_fields) if model is not None else []
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if close:
        name = close[0]
        if where.upper().startswith(ENV_PREFIX):
            shown = ENV_PREFIX + "__".join(str(p).upper() for p in (*loc[:-1], name))
            return f"unknown key; did you mean `{shown}`?"
        return f"unknown key; did you mean `{name}`?"
    if known:
        return f"unknown key; the keys here are: {', '.join(known)}"
    return "unknown key: remove it"


def _model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class the settings hold at `loc` (None when it is not one)."""
    annotation: Any = root
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return None
            annotation = field.annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        elif typing.get_origin(annotation) is list:
            annotation = typing.get_args(annotation)[0]
        else:
            return None
    annotation = _unwrap(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """`X | None` and ``Annotated[X, ...]`` as `X`."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            annotation = models[0] if models else args[0]
        else:
            return annotation
