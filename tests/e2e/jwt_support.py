"""Helpers for the JWT end-to-end tests: the committed fixtures
(tests/fixtures/jwt, made with Python `cryptography`), HMAC tokens minted at
test time with the standard library (the `hs-1` secret of the fixture JWKS),
and a small JWKS server on 127.0.0.1 that counts fetches."""

import base64
import copy
import hashlib
import hmac
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(os.path.dirname(HERE), "fixtures", "jwt")

ISSUER = "https://issuer.test"
FAR = 4102444800  # 2100-01-01
IAT = 1700000000


def _load(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return json.load(f)


JWKS = _load("jwks.json")
TOKENS = _load("tokens.json")
ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
        "ES256", "ES384", "EdDSA", "HS256", "HS384", "HS512"]


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def b64u_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def jwk(kid):
    """A copy of the fixture JWK with this kid."""
    return copy.deepcopy(next(k for k in JWKS["keys"] if k["kid"] == kid))


HS_SECRET = b64u_decode(jwk("hs-1")["k"])


def claims(**over):
    """The fixture's default claims, with overrides (None drops a claim)."""
    c = {"iss": ISSUER, "sub": "user-1", "aud": "api", "exp": FAR, "iat": IAT,
         "scope": "orders:read orders:write", "roles": ["admin", "dev"],
         "org": {"id": "acme", "tier": 2}, "email_verified": True}
    for k, v in over.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def mint_hs(claims_doc, kid="hs-1", alg="HS256", secret=HS_SECRET):
    """An HMAC-signed compact JWS (stdlib only)."""
    h = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        h["kid"] = kid
    si = b64u(json.dumps(h, separators=(",", ":")).encode()) + "." + \
        b64u(json.dumps(claims_doc, separators=(",", ":")).encode())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    return si + "." + b64u(hmac.new(secret, si.encode(), digest).digest())


def payload_of(token):
    return json.loads(b64u_decode(token.split(".")[1]))


class JwksServer:
    """An IdP stand-in on 127.0.0.1: serves `self.jwks` as JSON on any GET,
    counts fetches, optionally answers after `delay` seconds (first
    `delay_count` fetches only, if set). `stop()` closes the socket so
    nothing listens any more."""

    def __init__(self, jwks, delay=0.0, delay_count=None, fail_first=0):
        self.jwks = jwks
        self.fail_first = fail_first  # answer 500 to this many first fetches
        self.delay = delay
        self.delay_count = delay_count
        self.fetches = []  # (monotonic time, path, headers dict)
        self.lock = threading.Lock()
        self.stopped = False
        self.conns = set()  # open client connections (Envoy keeps them alive)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with outer.lock:
                    outer.conns.add(self.connection)

            def finish(self):
                with outer.lock:
                    outer.conns.discard(self.connection)
                super().finish()

            def do_GET(self):
                with outer.lock:
                    outer.fetches.append((time.monotonic(), self.path,
                                          {k.lower(): v for k, v in self.headers.items()}))
                    n = len(outer.fetches)
                    body = json.dumps(outer.jwks).encode()
                    delay = outer.delay if (outer.delay_count is None or n <= outer.delay_count) else 0
                if delay:
                    time.sleep(delay)
                if n <= outer.fail_first:
                    body = b'{"error":"boom"}'
                    self.send_response(500)
                else:
                    self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def count(self):
        with self.lock:
            return len(self.fetches)

    def set_jwks(self, jwks):
        with self.lock:
            self.jwks = jwks

    def stop(self):
        if not self.stopped:
            self.stopped = True
            self.server.shutdown()
            self.server.server_close()
            # Also drop kept-alive connections: otherwise the handler threads
            # keep answering Envoy's pooled connection after the "stop".
            with self.lock:
                conns = list(self.conns)
            for c in conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def wait_until(pred, timeout=10.0, interval=0.05):
    """Bounded polling; returns the last value of pred()."""
    end = time.monotonic() + timeout
    v = pred()
    while not v and time.monotonic() < end:
        time.sleep(interval)
        v = pred()
    return v
