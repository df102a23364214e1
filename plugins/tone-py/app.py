"""Example stage `tone`, in Python: hands upset customers to a person and
tags everyone else as calm.

A request whose input holds one of the configured words (config `words`, a
JSON list; by default "angry", "furious", "unacceptable", "ridiculous"),
as a whole word in any case, is escalated; any other request is passed on
with the attribute `tone` set to `calm`.

Built with componentize-py against the `configured` world of
`wit/pipeline.wit` (see `scripts/build-polyglot`).
"""

import json
import re

from wit_world import exports
from wit_world.imports import config
from wit_world.imports.types import (
    Attribute,
    Escalation,
    Outcome,
    Outcome_Escalate,
    Outcome_Next,
    Request,
)

DEFAULT_WORDS = ["angry", "furious", "unacceptable", "ridiculous"]


def words() -> list[str]:
    """The configured words, or the defaults when none (or nonsense) are set."""
    raw = config.get("words")
    if raw is None:
        return DEFAULT_WORDS
    try:
        configured = json.loads(raw)
    except ValueError:
        return DEFAULT_WORDS
    if not isinstance(configured, list):
        return DEFAULT_WORDS
    return [str(w).lower() for w in configured if str(w).strip()]


class Stage(exports.Stage):
    def handle(self, request: Request) -> Outcome:
        text = request.input.lower()
        if any(re.search(r"\b" + re.escape(w) + r"\b", text) for w in words()):
            return Outcome_Escalate(
                Escalation(reason="upset customer: a person should answer", draft=None)
            )
        request.attributes = [a for a in request.attributes if a.key != "tone"]
        request.attributes.append(Attribute(key="tone", value="calm"))
        return Outcome_Next(request)
