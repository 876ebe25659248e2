//! Signature verification, one function per algorithm family.
//!
//! RS256/384/512 first try Envoy's native `verify_signature` (see
//! [`super::native`]); when the host lacks it the pure-Rust `rsa` crate is
//! used and the worker remembers not to try native again. PS* always use
//! pure Rust: Envoy's function does PKCS#1 v1.5 only.

use super::jose::{Alg, Hash};
use super::jwk::{Jwk, KeyMaterial};
use super::native;
use crate::host::Host;
use hmac::{Hmac, Mac};
use rsa::{Pkcs1v15Sign, Pss, RsaPublicKey};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// Per-worker knowledge of the native RSA path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NativeRsa {
    /// Not tried yet.
    #[default]
    Unknown,
    /// The host answered a call.
    Available,
    /// The host lacks the function (or answered garbage): pure Rust only.
    Unavailable,
}

/// Counts of work done, for tests and debugging.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyStats {
    /// Signature checks attempted (one per candidate key).
    pub signature_checks: u64,
    /// RSA checks answered by the host.
    pub native_calls: u64,
}

/// Verifies `sig` over `msg` with `key` for `alg`. The key type must already
/// match (see [`Jwk::supports`]); a mismatch is simply "invalid".
pub fn verify(
    host: &impl Host,
    native_rsa: &mut NativeRsa,
    stats: &mut VerifyStats,
    alg: Alg,
    key: &Jwk,
    msg: &[u8],
    sig: &[u8],
) -> bool {
    if !key.supports(alg) {
        return false;
    }
    stats.signature_checks += 1;
    match (&key.material, alg) {
        (KeyMaterial::Rsa { key, spki_der }, Alg::RS256 | Alg::RS384 | Alg::RS512) => {
            if *native_rsa != NativeRsa::Unavailable {
                if let Some(ok) = verify_native(host, alg.hash(), spki_der, msg, sig) {
                    *native_rsa = NativeRsa::Available;
                    stats.native_calls += 1;
                    return ok;
                }
                *native_rsa = NativeRsa::Unavailable;
                log::info!("meshguard: host has no usable verify_signature; RSA uses pure Rust");
            }
            verify_rsa_pkcs1(key, alg.hash(), msg, sig)
        }
        (KeyMaterial::Rsa { key, .. }, Alg::PS256 | Alg::PS384 | Alg::PS512) => {
            verify_rsa_pss(key, alg.hash(), msg, sig)
        }
        (KeyMaterial::P256(k), Alg::ES256) => {
            use p256::ecdsa::signature::Verifier;
            match p256::ecdsa::Signature::from_slice(sig) {
                Ok(s) => k.verify(msg, &s).is_ok(),
                Err(_) => false,
            }
        }
        (KeyMaterial::P384(k), Alg::ES384) => {
            use p384::ecdsa::signature::Verifier;
            match p384::ecdsa::Signature::from_slice(sig) {
                Ok(s) => k.verify(msg, &s).is_ok(),
                Err(_) => false,
            }
        }
        (KeyMaterial::Ed25519(k), Alg::EdDSA) => match ed25519_dalek::Signature::from_slice(sig) {
            Ok(s) => k.verify_strict(msg, &s).is_ok(),
            Err(_) => false,
        },
        (KeyMaterial::Oct(secret), Alg::HS256) => hmac_ok::<Hmac<Sha256>>(secret, msg, sig),
        (KeyMaterial::Oct(secret), Alg::HS384) => hmac_ok::<Hmac<Sha384>>(secret, msg, sig),
        (KeyMaterial::Oct(secret), Alg::HS512) => hmac_ok::<Hmac<Sha512>>(secret, msg, sig),
        _ => false,
    }
}

/// `Some(valid)` when the host answered; `None` when it cannot (fall back).
fn verify_native(
    host: &impl Host,
    hash: Hash,
    spki_der: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> Option<bool> {
    let args = native::encode_args(hash.envoy_name(), spki_der, sig, msg);
    let reply = match host.call_foreign(native::FUNCTION, &args) {
        Ok(Some(reply)) => reply,
        Ok(None) => return fallback("it returned nothing"),
        Err(e) => return fallback(&e.0),
    };
    match native::decode_result(&reply) {
        Some(r) => Some(r.result),
        None => fallback("its result could not be read"),
    }
}

/// The native call failed: says so once per worker (the fallback is
/// correct but costs ~12x the CPU per distinct token), and falls back.
fn fallback(why: &str) -> Option<bool> {
    thread_local! {
        static WARNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !WARNED.with(|w| w.replace(true)) {
        log::warn!(
            "meshguard: the host's {} foreign function is unavailable ({why}): RSA signatures are verified in wasm, about 12x the CPU per distinct token",
            native::FUNCTION
        );
    }
    None
}

fn hmac_ok<M: Mac + hmac::digest::KeyInit>(secret: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    match <M as Mac>::new_from_slice(secret) {
        Ok(mut m) => {
            m.update(msg);
            // constant-time comparison
            m.verify_slice(sig).is_ok()
        }
        Err(_) => false,
    }
}

fn digest(hash: Hash, msg: &[u8]) -> Vec<u8> {
    match hash {
        Hash::Sha256 => Sha256::digest(msg).to_vec(),
        Hash::Sha384 => Sha384::digest(msg).to_vec(),
        Hash::Sha512 => Sha512::digest(msg).to_vec(),
    }
}

/// Pure-Rust RSASSA-PKCS1-v1_5.
pub fn verify_rsa_pkcs1(key: &RsaPublicKey, hash: Hash, msg: &[u8], sig: &[u8]) -> bool {
    let scheme = match hash {
        Hash::Sha256 => Pkcs1v15Sign::new::<Sha256>(),
        Hash::Sha384 => Pkcs1v15Sign::new::<Sha384>(),
        Hash::Sha512 => Pkcs1v15Sign::new::<Sha512>(),
    };
    key.verify(scheme, &digest(hash, msg), sig).is_ok()
}

/// Pure-Rust RSASSA-PSS with MGF1 and salt length = hash length (RFC 7518 3.5).
pub fn verify_rsa_pss(key: &RsaPublicKey, hash: Hash, msg: &[u8], sig: &[u8]) -> bool {
    let scheme = match hash {
        Hash::Sha256 => Pss::new::<Sha256>(),
        Hash::Sha384 => Pss::new::<Sha384>(),
        Hash::Sha512 => Pss::new::<Sha512>(),
    };
    key.verify(scheme, &digest(hash, msg), sig).is_ok()
}
