"""Test component `connect-py`: a Python stage that tries to open a TCP
connection to the address in its input (`HOST:PORT`, numeric) and answers
`connected` or `refused: <error>`, so tests can see the sandbox hold.

Built against the `bare` world; componentize-py makes every Python
component import wasi:sockets and wasi:filesystem, so its stage must be
granted both, confined (no address, no directory) unless the manifest says
otherwise.
"""

import socket

# CPython encodes socket host names with the lazily imported "idna" codec;
# importing it here puts it in the component.
import encodings.idna  # noqa: F401

from wit_world import exports
from wit_world.imports.types import Answer, Outcome, Outcome_Respond, Request


class Stage(exports.Stage):
    def handle(self, request: Request) -> Outcome:
        host, _, port = request.input.strip().rpartition(":")
        try:
            # socket() and connect() with a numeric address: no name lookup,
            # which the host refuses.
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.settimeout(2)
                s.connect((host, int(port)))
            finally:
                s.close()
            text = "connected"
        except Exception as error:  # every failure is the answer
            text = f"refused: {error!r}"
        return Outcome_Respond(Answer(output=text, confidence=1.0))
