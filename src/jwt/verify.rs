//! Signature verification, one function per algorithm family.
//!
//! RS256/384/512 and ES256/384 first try Envoy's native `verify_signature`
//! (see [`super::native`]); when the host lacks it pure Rust is used
//! (`rsassa`, `ecdsa`) and the worker
//! remembers not to try native again. ECDSA goes native only after the host verified a
//! known-good signature for that curve once ([`NativePaths`]). PS* and
//! EdDSA always use pure Rust: Envoy's function cannot do them. RSA in
//! pure Rust is `rsassa` (4.5x faster under V8 than the `rsa`
//! crate's exponentiation).

use super::jose::Alg;
use super::jwk::{Jwk, KeyMaterial};
use super::native::{self, Curve};
use crate::host::Host;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha384, Sha512};

/// Per-worker knowledge of one native path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NativeState {
    /// Not tried yet.
    #[default]
    Unknown,
    /// The host answers (for ECDSA: it verified the self-test signature).
    Available,
    /// The host lacks the function, answered garbage, or (ECDSA) failed
    /// the self-test: pure Rust only.
    Unavailable,
}

/// Per-worker knowledge of the native paths: RSA PKCS#1 v1.5, and ECDSA
/// per curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NativePaths {
    pub rsa: NativeState,
    pub p256: NativeState,
    pub p384: NativeState,
}

impl NativePaths {
    fn ec(&mut self, curve: Curve) -> &mut NativeState {
        match curve {
            Curve::P256 => &mut self.p256,
            Curve::P384 => &mut self.p384,
        }
    }
}

/// Counts of work done, for tests and debugging.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyStats {
    /// Signature checks attempted (one per candidate key).
    pub signature_checks: u64,
    /// Checks answered by the host (self-tests not included).
    pub native_calls: u64,
}

impl VerifyStats {
    /// The work done since `before` (an earlier copy of these counts).
    pub fn since(&self, before: VerifyStats) -> VerifyStats {
        VerifyStats {
            signature_checks: self
                .signature_checks
                .saturating_sub(before.signature_checks),
            native_calls: self.native_calls.saturating_sub(before.native_calls),
        }
    }
}

/// Verifies `sig` over `msg` with `key` for `alg`. The key type must already
/// match (see [`Jwk::supports`]); a mismatch is simply "invalid".
pub fn verify(
    host: &impl Host,
    native: &mut NativePaths,
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
            if native.rsa != NativeState::Unavailable {
                if let Some(ok) = verify_native(host, alg.hash().envoy_name(), spki_der, msg, sig) {
                    native.rsa = NativeState::Available;
                    stats.native_calls += 1;
                    return ok;
                }
                native.rsa = NativeState::Unavailable;
            }
            key.verify_pkcs1(alg.hash(), msg, sig)
        }
        (KeyMaterial::Rsa { key, .. }, Alg::PS256 | Alg::PS384 | Alg::PS512) => {
            key.verify_pss(alg.hash(), msg, sig)
        }
        (KeyMaterial::Ec { key: k, spki_der }, Alg::ES256 | Alg::ES384) => {
            let curve = k.curve();
            match verify_native_ec(host, native, stats, curve, spki_der, msg, sig) {
                Some(ok) => ok,
                None => k.verify(msg, sig),
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
    hash: &str,
    spki_der: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> Option<bool> {
    let args = native::encode_args(hash, spki_der, sig, msg);
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

/// ECDSA through the host: `Some(valid)` when the host verifies this curve
/// (learned once per worker by [`self_test`]), `None` to verify in wasm.
fn verify_native_ec(
    host: &impl Host,
    native: &mut NativePaths,
    stats: &mut VerifyStats,
    curve: Curve,
    spki_der: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> Option<bool> {
    let state = native.ec(curve);
    if *state == NativeState::Unknown {
        *state = self_test(host, curve);
    }
    if *state != NativeState::Available {
        return None;
    }
    // Not `r || s` of the curve's size: the wasm path refuses it at once.
    let der = native::ecdsa_der(curve, sig)?;
    match verify_native(host, curve.hash_name(), spki_der, msg, &der) {
        Some(ok) => {
            stats.native_calls += 1;
            Some(ok)
        }
        None => {
            *native.ec(curve) = NativeState::Unavailable;
            None
        }
    }
}

/// Does the host verify ECDSA on `curve`? It must accept the known-good
/// signature and refuse it with one bit flipped (a host answering `true`
/// to anything must never be trusted).
fn self_test(host: &impl Host, curve: Curve) -> NativeState {
    let (point, sig) = native::self_test_vector(curve);
    let (Some(spki), Some(der)) = (
        native::ec_spki_der(curve, point),
        native::ecdsa_der(curve, sig),
    ) else {
        return NativeState::Unavailable;
    };
    let msg = native::SELF_TEST_MESSAGE;
    let good = verify_native(host, curve.hash_name(), &spki, msg, &der);
    if good.is_none() {
        // The call itself failed: `fallback` said so.
        return NativeState::Unavailable;
    }
    let mut flipped = msg.to_vec();
    if let Some(b) = flipped.last_mut() {
        *b ^= 1;
    }
    let bad = verify_native(host, curve.hash_name(), &spki, &flipped, &der);
    if good == Some(true) && bad == Some(false) {
        return NativeState::Available;
    }
    log::warn!(
        "meshguard: the host's {} foreign function does not verify {curve:?} ECDSA (self-test: known-good signature {good:?}, altered message {bad:?}); ES{} signatures are verified in wasm, several times the CPU per distinct token",
        native::FUNCTION,
        curve.scalar_len() * 8,
    );
    NativeState::Unavailable
}

/// The native call failed: says so once per worker (the fallback is
/// correct but costs several times the CPU per distinct token), and falls
/// back.
fn fallback(why: &str) -> Option<bool> {
    thread_local! {
        static WARNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !WARNED.with(|w| w.replace(true)) {
        log::warn!(
            "meshguard: the host's {} foreign function is unavailable ({why}): RS* and ES* signatures are verified in wasm, several times the CPU per distinct token (RSA about 3x, ES256 about 9x)",
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
