"""aiokafka's OAUTHBEARER exchange, with the broker's refusal of a token read.

Upstream (aiokafka 0.14.0, aiokafka/conn.py): subclasses `OAuthAuthenticator`
(its `step(payload)` and `_token_sent`) and puts the subclass in its place in
the module, where `AIOKafkaConnection.authenticator_oauth` looks the name up at
each authentication. `install()` does that, for the whole process: the
`cameleer-merger` command calls it first (app/__main__.py), so the worker's and
the tools' clients have it; a test that connects with OAUTHBEARER itself calls it
too.

Why: a broker that refuses a token answers the client's first message with an
error challenge (RFC 7628 3.2.2: `{"status": "invalid_token"}`) and waits for
the client's single %x01 before it fails the authentication with its reason.
aiokafka's `step` takes any answer for success: the connection then hangs
half-open and the clients fail later with "node not ready". This one sends the
%x01, so the broker's SaslAuthenticate error (SaslAuthenticationFailedError,
with the broker's message) is raised where authentication happens, and a
refused token is one clear error at start.

Checked by tests/unit/test_upstream.py (the rows and tests of `oauthbearer`) and
tests/integration/test_security.py (a refused token on a real broker).
"""

from __future__ import annotations

import aiokafka.conn


class OAuthAuthenticator(aiokafka.conn.OAuthAuthenticator):
    """aiokafka's OAUTHBEARER exchange, answering the broker's error challenge."""

    _error_acknowledged = False

    async def step(self, payload):
        if self._token_sent and payload and not self._error_acknowledged:
            self._error_acknowledged = True
            return b"\x01", True
        return await super().step(payload)


def install() -> None:
    """Make aiokafka's connections use `OAuthAuthenticator` (idempotent)."""
    aiokafka.conn.OAuthAuthenticator = OAuthAuthenticator
