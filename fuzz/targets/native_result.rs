//! Around Envoy's `verify_signature`: its protobuf answer, and the DER
//! meshguard builds from untrusted bytes for it (a JWS's raw ECDSA
//! signature, a JWKS's EC point and RSA modulus / exponent).
use meshguard::jwt::native::{self, Curve};

pub fn run(data: &[u8]) {
    let _ = native::decode_result(data);
    for c in [Curve::P256, Curve::P384] {
        if let Some(der) = native::ecdsa_der(c, data) {
            assert!(der.len() <= data.len() + 9);
        }
        let _ = native::ec_spki_der(c, data);
    }
    let (n, e) = data.split_at(data.len() / 2);
    let _ = native::rsa_spki_der(n, e);
}
