"""Token minting: a fresh key and distinct signed tokens for the distinct-token
scenarios (the `cryptography` package, imported when called)."""

import base64
import json
import time

from .common import AUDIENCE, ISSUER


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def int_b64url(n):
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def make_distinct_tokens(count, alg="RS256"):
    """A fresh key (kid bench-rsa for RS256/PS256, bench-ec for ES256, bench-ed for EdDSA) and `count`
    distinct tokens signed by it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
    if alg in ("RS256", "PS256"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pub = key.public_key().public_numbers()
        kid = "bench-rsa"
        jwk = {"kty": "RSA", "kid": kid, "use": "sig", "alg": alg, "n": int_b64url(pub.n), "e": int_b64url(pub.e)}
        pad = (padding.PKCS1v15() if alg == "RS256"
               else padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32))

        def sign(data):
            return key.sign(data, pad, hashes.SHA256())
    elif alg == "EdDSA":
        key = ed25519.Ed25519PrivateKey.generate()
        from cryptography.hazmat.primitives import serialization
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        kid = "bench-ed"
        jwk = {"kty": "OKP", "kid": kid, "use": "sig", "alg": alg, "crv": "Ed25519", "x": b64url(raw)}

        def sign(data):
            return key.sign(data)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        pub = key.public_key().public_numbers()
        kid = "bench-ec"
        jwk = {"kty": "EC", "kid": kid, "use": "sig", "alg": alg, "crv": "P-256",
               "x": b64url(pub.x.to_bytes(32, "big")), "y": b64url(pub.y.to_bytes(32, "big"))}

        def sign(data):
            r, s = utils.decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    header = b64url(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}, separators=(",", ":")).encode())
    now = int(time.time())
    tokens = []
    for i in range(count):
        payload = b64url(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": f"user-{i}", "jti": f"bench-{i}",
                                     "iat": now - 60, "exp": now + 6 * 3600},
                                    separators=(",", ":")).encode())
        signing_input = f"{header}.{payload}".encode()
        tokens.append(f"{header}.{payload}.{b64url(sign(signing_input))}")
    return jwk, tokens
