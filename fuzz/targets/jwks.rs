//! A JWKS document (inline or fetched from the IdP): every key type and
//! its parameters (RSA n/e, EC x/y, OKP, oct), then key selection.
use meshguard::jwt::jose::Alg;
use meshguard::jwt::jwk::KeySet;

pub fn run(data: &[u8]) {
    if let Ok(set) = KeySet::from_text(data, "fuzz") {
        for alg in ["RS256", "PS384", "ES256", "ES384", "EdDSA", "HS256"] {
            if let Some(a) = Alg::from_name(alg) {
                for k in set.candidates(a, Some("k")) {
                    let _ = k.supports(a);
                }
                for k in set.candidates(a, None) {
                    let _ = k.supports(a);
                }
            }
        }
        let _ = set.has_kid("k");
    }
}
