"""Stage `{{name}}`: answers "ping" and passes every other request on
unchanged.
{{about}}
Replace `handle` with what your stage should do, add a case to `cases.toml`
for each decision it makes, and run `strata test`.

`strata build` makes the component with componentize-py against the
`{{world}}` world of `wit/pipeline.wit`.
"""

import strata
from wit_world import exports
from wit_world.imports.types import Outcome, Request


class Stage(exports.Stage):
    def handle(self, request: Request) -> Outcome:
        if request.input.strip().lower() == "ping":
            return strata.answer({{reply}}, 0.99)
{{lookup}}        return strata.next(request)
