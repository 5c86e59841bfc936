"""A local Bot Framework token issuer: OpenID metadata, a JWKS with one RSA key, and RS256 tokens.

It stands in for https://login.botframework.com. botbuilder fetches the metadata and keys with blocking
`requests` calls from inside the event loop, so the server runs on its own thread (http.server), never on
the loop that serves the bot.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

BOT_FRAMEWORK_ISSUER = "https://api.botframework.com"
METADATA_PATH = "/v1/.well-known/openidconfiguration"
KEYS_PATH = "/v1/keys"


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class TokenIssuer:
    """Serves `METADATA_PATH` and `KEYS_PATH` on 127.0.0.1 (port 0) and signs tokens with its key."""

    def __init__(self, *, endorsements: tuple[str, ...] = ("msteams",)) -> None:
        self.key = new_rsa_key()
        self.kid = f"test-{uuid.uuid4().hex[:12]}"
        self.endorsements = list(endorsements)
        self.requests: list[str] = []  # paths asked for, in order
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ server

    def start(self) -> TokenIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                issuer.requests.append(self.path)
                if self.path == METADATA_PATH:
                    body = issuer.metadata()
                elif self.path == KEYS_PATH:
                    body = issuer.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="token-issuer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the token issuer is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def metadata_url(self) -> str:
        return self.base_url + METADATA_PATH

    def metadata(self) -> dict[str, Any]:
        return {"issuer": BOT_FRAMEWORK_ISSUER, "jwks_uri": self.base_url + KEYS_PATH,
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"]}

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256", "endorsements": self.endorsements})
        return {"keys": [jwk]}

    @property
    def key_fetches(self) -> int:
        return self.requests.count(KEYS_PATH)

    # ------------------------------------------------------------------ tokens

    def token(self, *, audience: str, service_url: str | None, issuer: str = BOT_FRAMEWORK_ISSUER,
              lifetime: float = 3600.0, issued_ago: float = 60.0, signing_key: rsa.RSAPrivateKey | None = None,
              kid: str | None = None, **claims: Any) -> str:
        """A token as the Bot Connector sends it; every part can be made wrong for negative tests."""
        now = time.time()
        payload = {"iss": issuer, "aud": audience, "nbf": int(now - issued_ago), "iat": int(now - issued_ago),
                   "exp": int(now - issued_ago + lifetime), **claims}
        if service_url is not None:
            payload["serviceurl"] = service_url
        return jwt.encode(payload, signing_key or self.key, algorithm="RS256",
                          headers={"kid": kid or self.kid, "typ": "JWT"})

    def header(self, **kwargs: Any) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.token(**kwargs)}
