"""Helpers for Strata stages written in Python: the verbs of the
`strata:pipeline` contract (answer, escalate, reject, next), request
attributes, the stage's config, the answer bank and the host log.

`config` needs the `configured` or `plugin` world and the `config` grant;
`cached`, `lookup` and `log` need the `plugin` world and the `cache` or
`log` grant. In a stage built against a narrower world they raise
`RuntimeError` naming the world they need; every other helper works.

Written by `strata new` for `strata:pipeline@0.2.0`.
"""

import json
from typing import Any, Optional

from wit_world.imports.types import (
    Answer,
    Attribute,
    Escalation,
    Outcome,
    Outcome_Escalate,
    Outcome_Next,
    Outcome_Reject,
    Outcome_Respond,
    Rejection,
    Request,
)

# componentize-py bundles what is imported when the component is built, so
# the host interfaces are imported here, once, where the world has them.
try:
    from wit_world.imports import config as _host_config
except ImportError:
    _host_config = None
try:
    from wit_world.imports import cache as _host_cache
except ImportError:
    _host_cache = None
try:
    from wit_world.imports import log as _host_log
except ImportError:
    _host_log = None


def _need(interface: Any, name: str, worlds: str) -> Any:
    if interface is None:
        raise RuntimeError(f"strata.{name} needs a stage built against the {worlds} world")
    return interface


def answer(output: str, confidence: float = 0.9) -> Outcome:
    """Answer the request with `output`, at `confidence` (0.0 to 1.0)."""
    return Outcome_Respond(Answer(output=output, confidence=confidence))


def escalate(reason: str, draft: Optional[str] = None) -> Outcome:
    """Hand the request to a person, with an optional draft answer."""
    return Outcome_Escalate(Escalation(reason=reason, draft=draft))


def reject(code: str, message: str) -> Outcome:
    """Refuse the request; `code` and `message` reach the client."""
    return Outcome_Reject(Rejection(code=code, message=message))


def next(request: Request) -> Outcome:  # noqa: A001 (read as `strata.next`)
    """Pass the request, possibly changed, on to the next stage."""
    return Outcome_Next(request)


def attribute(request: Request, key: str) -> Optional[str]:
    """The value of attribute `key`, if set."""
    for pair in request.attributes:
        if pair.key == key:
            return pair.value
    return None


def set_attribute(request: Request, key: str, value: str) -> None:
    """Set attribute `key` to `value`, replacing any earlier value."""
    request.attributes = [a for a in request.attributes if a.key != key]
    request.attributes.append(Attribute(key=key, value=value))


def config(key: str, default: Optional[str] = None) -> Optional[str]:
    """One value of the stage's config table (strings as they are, anything
    else as JSON), or `default`."""
    value = _need(_host_config, "config", "configured or plugin").get(key)
    return default if value is None else value


def config_json() -> dict[str, Any]:
    """The stage's whole config table."""
    return json.loads(_need(_host_config, "config_json", "configured or plugin").get_json())


def cached(key: str) -> Optional[Any]:
    """The answer bank's entry stored under `key` exactly, if any: an object
    with `answer`, `source` and `approved`."""
    return _need(_host_cache, "cached", "plugin").get(key)


def lookup(question: str) -> Optional[Any]:
    """The answer bank's best match for `question`, if any: an object with
    `answer`, `score`, `source`, `approved`, `label` and `trusted` (whether
    the match is within the pipeline's error budget)."""
    return _need(_host_cache, "lookup", "plugin").lookup(question)


def log(message: str, level: str = "info") -> None:
    """Write to the host log at `level` (debug, info, warn or error)."""
    host_log = _need(_host_log, "log", "plugin")
    levels = {
        "debug": host_log.Level.DEBUG,
        "info": host_log.Level.INFO,
        "warn": host_log.Level.WARN,
        "error": host_log.Level.ERROR,
    }
    host_log.log(levels[level], message)

