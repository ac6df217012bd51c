//! RSASSA-PKCS1-v1_5 signature verification (JWS `RS256`, `RS384`, `RS512`) with a
//! Montgomery modular exponentiation written for the public-key operation.
//!
//! Why it exists: the generic RSA code behind `jsonwebtoken`'s pure-Rust backend uses
//! constant-time big integers, which is right for private keys and several times slower than
//! needed for verification, where every input (modulus, exponent, signature, message) is public.
//! Under Envoy's Wasm runtime that difference was most of the filter's cost per new token.
//!
//! What it does not do: sign, decrypt, verify PSS (`PS*` stays on `jsonwebtoken`), or run in
//! constant time (nothing secret goes through it). Limbs are 32 bits because wasm32 has no
//! 64×64→128 multiply; the same code runs on the host, where the tests compare it with
//! `jsonwebtoken` on real keys.
//!
//! With the `native-crypto` feature (native hosts only: it does not build for wasm32), keys of
//! 2048 to 8192 bits are verified with `ring` instead: the same answer (tests compare them),
//! with 64-bit limbs and assembly, several times faster. Other sizes stay on the code here, so
//! which keys are accepted does not depend on the build.

use sha2::{Digest, Sha256, Sha384, Sha512};

/// The DER `DigestInfo` prefixes of RFC 8017 §9.2, note 1.
const SHA256_PREFIX: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
const SHA384_PREFIX: [u8; 19] = [
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0x04, 0x30,
];
const SHA512_PREFIX: [u8; 19] = [
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05,
    0x00, 0x04, 0x40,
];

/// The hash of an `RS*` algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaHash {
    Sha256,
    Sha384,
    Sha512,
}

/// An RSA public key prepared for repeated verification (Montgomery constants computed once).
#[derive(Clone)]
pub struct RsaPublicKey {
    /// The modulus, little-endian 32-bit limbs.
    n: Vec<u32>,
    /// -n⁻¹ mod 2³².
    n0_inv: u32,
    /// R² mod n, R = 2^(32·limbs).
    r2: Vec<u32>,
    e: u64,
    /// Modulus length in bytes (the signature length).
    k: usize,
    /// The big-endian modulus and exponent, for `ring` (`native-crypto`).
    #[cfg(feature = "native-crypto")]
    components: (Vec<u8>, Vec<u8>),
}

impl std::fmt::Debug for RsaPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RsaPublicKey({} bits, e={})", self.k * 8, self.e)
    }
}

fn limbs_from_be(bytes: &[u8], limbs: usize) -> Vec<u32> {
    let mut out = vec![0u32; limbs];
    for (i, byte) in bytes.iter().rev().enumerate() {
        if let Some(limb) = out.get_mut(i / 4) {
            *limb |= u32::from(*byte) << (8 * (i % 4));
        }
    }
    out
}

/// a ≥ b, equal lengths.
fn geq(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x > y;
        }
    }
    true
}

/// a -= b (a ≥ b), equal lengths.
fn sub_in_place(a: &mut [u32], b: &[u32]) {
    let mut borrow = 0u64;
    for (x, y) in a.iter_mut().zip(b) {
        let d = u64::from(*x)
            .wrapping_sub(u64::from(*y))
            .wrapping_sub(borrow);
        *x = d as u32;
        borrow = (d >> 63) & 1;
    }
}

impl RsaPublicKey {
    /// Prepares a key from its big-endian modulus and exponent (JWK `n`, `e`). None for an
    /// even or empty modulus, or an exponent that is even, below 3 or above 64 bits.
    pub fn new(modulus: &[u8], exponent: &[u8]) -> Option<RsaPublicKey> {
        let modulus = modulus.get(modulus.iter().take_while(|b| **b == 0).count()..)?;
        let exponent = exponent.get(exponent.iter().take_while(|b| **b == 0).count()..)?;
        if modulus.last().is_none_or(|b| b & 1 == 0) || exponent.len() > 8 {
            return None;
        }
        let e = exponent
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        if e < 3 || e & 1 == 0 {
            return None;
        }
        let k = modulus.len();
        let limbs = k.div_ceil(4);
        let n = limbs_from_be(modulus, limbs);
        // Newton's iteration doubles the correct low bits: 1 → 2 → … → 32.
        let n_low = *n.first()?;
        let mut inv: u32 = 1;
        for _ in 0..5 {
            inv = inv.wrapping_mul(2u32.wrapping_sub(n_low.wrapping_mul(inv)));
        }
        // R² mod n by doubling 1 modulo n, 2·32·limbs times.
        let mut r2 = vec![0u32; limbs];
        *r2.first_mut()? = 1;
        for _ in 0..(64 * limbs) {
            let mut carry = 0u32;
            for limb in r2.iter_mut() {
                let next = *limb >> 31;
                *limb = (*limb << 1) | carry;
                carry = next;
            }
            if carry == 1 || geq(&r2, &n) {
                sub_in_place(&mut r2, &n);
            }
        }
        Some(RsaPublicKey {
            n,
            n0_inv: inv.wrapping_neg(),
            r2,
            e,
            k,
            #[cfg(feature = "native-crypto")]
            components: (modulus.to_vec(), exponent.to_vec()),
        })
    }

    /// Modulus size in bits (rounded to bytes).
    pub fn bits(&self) -> usize {
        self.k * 8
    }

    /// a·b·R⁻¹ mod n (CIOS Montgomery multiplication); inputs below n.
    ///
    /// Indexing here is bounded by construction: `a`, `b` and `n` are cut to `s` limbs and `t`
    /// to `s + 2` at entry (those cuts are the only place that could go out of bounds, and
    /// every caller passes `s`-limb values and a `2s + 2` scratch; the property tests run
    /// all of them), so the loops index without `get` to stay as fast as they were measured.
    #[allow(clippy::indexing_slicing)]
    fn mont_mul(&self, a: &[u32], b: &[u32], t: &mut [u32]) -> Vec<u32> {
        let s = self.n.len();
        let (a, b, n) = (&a[..s], &b[..s], &self.n[..s]);
        let t = &mut t[..s + 2];
        t.iter_mut().for_each(|x| *x = 0);
        for &bi in b {
            let bi = u64::from(bi);
            let mut carry = 0u64;
            for (tj, aj) in t[..s].iter_mut().zip(a) {
                let sum = u64::from(*tj) + u64::from(*aj) * bi + carry;
                *tj = sum as u32;
                carry = sum >> 32;
            }
            let sum = u64::from(t[s]) + carry;
            t[s] = sum as u32;
            t[s + 1] = (sum >> 32) as u32;
            let m = u64::from(t[0].wrapping_mul(self.n0_inv));
            let mut carry = (u64::from(t[0]) + m * u64::from(n[0])) >> 32;
            for j in 1..s {
                let sum = u64::from(t[j]) + m * u64::from(n[j]) + carry;
                t[j - 1] = sum as u32;
                carry = sum >> 32;
            }
            let sum = u64::from(t[s]) + carry;
            t[s - 1] = sum as u32;
            t[s] = t[s + 1] + (sum >> 32) as u32;
        }
        let mut out = t[..s].to_vec();
        if t[s] != 0 || geq(&out, n) {
            sub_in_place(&mut out, n);
        }
        out
    }

    /// a²·R⁻¹ mod n: the square computed with each cross product once (doubled), then a
    /// separate Montgomery reduction — about a quarter fewer multiplications than `mont_mul`,
    /// and an exponentiation by 65537 is sixteen squarings and one multiplication.
    /// Indexing is bounded by the cuts at entry, as in `mont_mul`.
    #[allow(clippy::indexing_slicing)]
    fn mont_sqr(&self, a: &[u32], t: &mut [u32]) -> Vec<u32> {
        let s = self.n.len();
        let (a, n) = (&a[..s], &self.n[..s]);
        let t = &mut t[..2 * s];
        t.iter_mut().for_each(|x| *x = 0);
        for i in 0..s {
            let ai = u64::from(a[i]);
            let mut carry = 0u64;
            for (tk, aj) in t[2 * i + 1..i + s].iter_mut().zip(&a[i + 1..]) {
                let sum = u64::from(*tk) + ai * u64::from(*aj) + carry;
                *tk = sum as u32;
                carry = sum >> 32;
            }
            t[i + s] = carry as u32;
        }
        let mut high = 0u32;
        for limb in t.iter_mut() {
            let next = *limb >> 31;
            *limb = (*limb << 1) | high;
            high = next;
        }
        let mut carry = 0u64;
        for i in 0..s {
            let square = u64::from(a[i]) * u64::from(a[i]);
            let low = u64::from(t[2 * i]) + (square & 0xffff_ffff) + carry;
            t[2 * i] = low as u32;
            let hi = u64::from(t[2 * i + 1]) + (square >> 32) + (low >> 32);
            t[2 * i + 1] = hi as u32;
            carry = hi >> 32;
        }
        let mut top = 0u64;
        for i in 0..s {
            let m = u64::from(t[i].wrapping_mul(self.n0_inv));
            let mut carry = 0u64;
            for (tk, nj) in t[i..i + s].iter_mut().zip(n) {
                let sum = u64::from(*tk) + m * u64::from(*nj) + carry;
                *tk = sum as u32;
                carry = sum >> 32;
            }
            let sum = u64::from(t[i + s]) + carry + top;
            t[i + s] = sum as u32;
            top = sum >> 32;
        }
        let mut out = t[s..].to_vec();
        if top != 0 || geq(&out, n) {
            sub_in_place(&mut out, n);
        }
        out
    }

    /// sigᵉ mod n as big-endian bytes of the modulus' length; None if the signature has the
    /// wrong length or is not below n.
    pub fn public_op(&self, signature: &[u8]) -> Option<Vec<u8>> {
        if signature.len() != self.k {
            return None;
        }
        let s = self.n.len();
        let base = limbs_from_be(signature, s);
        if geq(&base, &self.n) {
            return None;
        }
        let mut scratch = vec![0u32; 2 * s + 2];
        let base_m = self.mont_mul(&base, &self.r2, &mut scratch);
        let mut acc = base_m.clone();
        let top = 63 - self.e.leading_zeros();
        // The last bit of an odd exponent is a multiplication by the base: done with the plain
        // base (not its Montgomery form), it also leaves the Montgomery domain, saving the
        // usual final multiplication by one.
        for bit in (1..top).rev() {
            acc = self.mont_sqr(&acc, &mut scratch);
            if (self.e >> bit) & 1 == 1 {
                acc = self.mont_mul(&acc, &base_m, &mut scratch);
            }
        }
        acc = self.mont_sqr(&acc, &mut scratch);
        let plain = self.mont_mul(&acc, &base, &mut scratch);
        let mut out = vec![0u8; self.k];
        for (i, byte) in out.iter_mut().rev().enumerate() {
            *byte = (plain.get(i / 4).copied().unwrap_or(0) >> (8 * (i % 4))) as u8;
        }
        Some(out)
    }

    /// Whether `signature` is a valid RSASSA-PKCS1-v1_5 signature of `message`.
    pub fn verify_pkcs1(&self, hash: RsaHash, message: &[u8], signature: &[u8]) -> bool {
        #[cfg(feature = "native-crypto")]
        if self.ring_accepts() {
            return self.verify_with_ring(hash, message, signature);
        }
        self.verify_pkcs1_portable(hash, message, signature)
    }

    /// Whether `ring` takes this key: 2048 to 8192 bits, exponent below 2³³.
    #[cfg(feature = "native-crypto")]
    fn ring_accepts(&self) -> bool {
        let top_zeros = self.components.0.first().map_or(8, |b| b.leading_zeros()) as usize;
        let bits = (self.k * 8).saturating_sub(top_zeros);
        (2048..=8192).contains(&bits) && self.e < (1 << 33)
    }

    /// [`RsaPublicKey::verify_pkcs1`] with `ring` (keys [`RsaPublicKey::ring_accepts`]).
    #[cfg(feature = "native-crypto")]
    fn verify_with_ring(&self, hash: RsaHash, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature as ring_sig;
        let parameters = match hash {
            RsaHash::Sha256 => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
            RsaHash::Sha384 => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
            RsaHash::Sha512 => &ring_sig::RSA_PKCS1_2048_8192_SHA512,
        };
        let (n, e) = &self.components;
        ring_sig::RsaPublicKeyComponents { n, e }
            .verify(parameters, message, signature)
            .is_ok()
    }

    /// [`RsaPublicKey::verify_pkcs1`] with the code here (any build, any key size).
    pub fn verify_pkcs1_portable(&self, hash: RsaHash, message: &[u8], signature: &[u8]) -> bool {
        let (prefix, digest): (&[u8], Vec<u8>) = match hash {
            RsaHash::Sha256 => (&SHA256_PREFIX, Sha256::digest(message).to_vec()),
            RsaHash::Sha384 => (&SHA384_PREFIX, Sha384::digest(message).to_vec()),
            RsaHash::Sha512 => (&SHA512_PREFIX, Sha512::digest(message).to_vec()),
        };
        let t_len = prefix.len() + digest.len();
        if self.k < t_len + 11 {
            return false;
        }
        let Some(em) = self.public_op(signature) else {
            return false;
        };
        // EM = 0x00 ‖ 0x01 ‖ PS (0xff…, k − tLen − 3 bytes) ‖ 0x00 ‖ DigestInfo prefix ‖ digest.
        let padding = self.k - t_len - 3;
        let Some((head, rest)) = em.split_at_checked(2) else {
            return false;
        };
        let Some((ps, rest)) = rest.split_at_checked(padding) else {
            return false;
        };
        let Some((separator, rest)) = rest.split_at_checked(1) else {
            return false;
        };
        let Some((info, hash)) = rest.split_at_checked(prefix.len()) else {
            return false;
        };
        head == [0x00, 0x01]
            && ps.iter().all(|b| *b == 0xff)
            && separator == [0x00]
            && info == prefix
            && hash == digest.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use dev_keys::{KeyAlgorithm, SigningKey};
    use jsonwebtoken::Algorithm;
    use proptest::prelude::*;
    use serde_json::json;
    use std::sync::OnceLock;

    fn rsa_key() -> &'static (SigningKey, RsaPublicKey) {
        static KEY: OnceLock<(SigningKey, RsaPublicKey)> = OnceLock::new();
        KEY.get_or_init(|| {
            let key = SigningKey::generate(KeyAlgorithm::Rsa, "r").unwrap();
            let jwk = key.public_jwk();
            let decode = |f: &str| URL_SAFE_NO_PAD.decode(jwk[f].as_str().unwrap()).unwrap();
            let public = RsaPublicKey::new(&decode("n"), &decode("e")).unwrap();
            (key, public)
        })
    }

    fn signed(alg: Algorithm, sub: &str) -> (String, Vec<u8>) {
        let (key, _) = rsa_key();
        let token = key
            .sign_with(alg, &json!({}), &json!({"sub": sub}))
            .unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        (input.to_owned(), URL_SAFE_NO_PAD.decode(sig).unwrap())
    }

    #[test]
    fn real_signatures_verify_for_every_rs_algorithm() {
        let (_, public) = rsa_key();
        assert_eq!(public.bits(), 2048);
        for (alg, hash) in [
            (Algorithm::RS256, RsaHash::Sha256),
            (Algorithm::RS384, RsaHash::Sha384),
            (Algorithm::RS512, RsaHash::Sha512),
        ] {
            let (input, sig) = signed(alg, "alice");
            assert!(public.verify_pkcs1(hash, input.as_bytes(), &sig), "{alg:?}");
            let other = if hash == RsaHash::Sha256 {
                RsaHash::Sha384
            } else {
                RsaHash::Sha256
            };
            assert!(!public.verify_pkcs1(other, input.as_bytes(), &sig));
        }
    }

    #[test]
    fn malformed_signatures_and_keys_are_refused() {
        let (_, public) = rsa_key();
        let (input, sig) = signed(Algorithm::RS256, "alice");
        assert!(!public.verify_pkcs1(RsaHash::Sha256, input.as_bytes(), &sig[1..]));
        assert!(!public.verify_pkcs1(RsaHash::Sha256, input.as_bytes(), &[0xff; 256]));
        assert!(!public.verify_pkcs1(RsaHash::Sha256, input.as_bytes(), &[0; 256]));
        assert!(
            RsaPublicKey::new(&[0x80, 0x00], &[1, 0, 1]).is_none(),
            "even modulus"
        );
        assert!(
            RsaPublicKey::new(&[0x80, 0x01], &[2]).is_none(),
            "even exponent"
        );
        assert!(RsaPublicKey::new(&[], &[3]).is_none());
    }

    #[test]
    fn small_numbers_come_out_right() {
        // 3^5 mod 1019 = 243; 1000^5 mod 1019.
        let key = RsaPublicKey::new(&[0x03, 0xfb], &[5]).unwrap();
        assert_eq!(key.public_op(&[0, 3]).unwrap(), vec![0, 243]);
        let expected = (1000u64.pow(2) % 1019).pow(2) % 1019 * 1000 % 1019;
        assert_eq!(
            key.public_op(&[0x03, 0xe8]).unwrap(),
            vec![(expected >> 8) as u8, expected as u8]
        );
        assert!(key.public_op(&[0x03, 0xfb]).is_none(), "not below n");
    }

    fn modpow(base: u128, mut e: u64, n: u128) -> u128 {
        let (mut acc, mut b) = (1u128, base % n);
        while e > 0 {
            if e & 1 == 1 {
                acc = acc * b % n;
            }
            b = b * b % n;
            e >>= 1;
        }
        acc
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn multi_limb_moduli_agree_with_plain_arithmetic(
            n in (1u64 << 40)..(1u64 << 62),
            base in any::<u64>(),
            e in prop::sample::select(vec![3u64, 17, 65537, 0xffff_ffff]),
        ) {
            let n = n | 1;
            let base = base % n;
            let key = RsaPublicKey::new(&n.to_be_bytes(), &e.to_be_bytes()).unwrap();
            let k = key.k;
            let sig = &base.to_be_bytes()[8 - k..];
            let out = key.public_op(sig).unwrap();
            let expected = modpow(u128::from(base), e, u128::from(n)) as u64;
            prop_assert_eq!(out, expected.to_be_bytes()[8 - k..].to_vec());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn agrees_with_jsonwebtoken(sub in "[a-z]{1,12}", flip in 0usize..256, bit in 0u8..8) {
            let (key, public) = rsa_key();
            let (input, mut sig) = signed(Algorithm::RS256, &sub);
            if flip < 200 {
                sig[flip] ^= 1 << bit;
            }
            let sig_b64 = URL_SAFE_NO_PAD.encode(&sig);
            let jwk = key.public_jwk();
            let decoding = jsonwebtoken::DecodingKey::from_rsa_components(
                jwk["n"].as_str().unwrap(),
                jwk["e"].as_str().unwrap(),
            )
            .unwrap();
            let theirs = jsonwebtoken::crypto::verify(&sig_b64, input.as_bytes(), &decoding, Algorithm::RS256)
                .unwrap_or(false);
            prop_assert_eq!(public.verify_pkcs1(RsaHash::Sha256, input.as_bytes(), &sig), theirs);
            prop_assert_eq!(theirs, flip >= 200);
        }
    }

    #[cfg(feature = "native-crypto")]
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn ring_and_the_portable_code_agree(sub in "[a-z]{1,12}", flip in 0usize..300, bit in 0u8..8, hash in 0usize..3) {
            let (_, public) = rsa_key();
            prop_assert!(public.ring_accepts());
            let (algorithm, rs_hash) = [
                (Algorithm::RS256, RsaHash::Sha256),
                (Algorithm::RS384, RsaHash::Sha384),
                (Algorithm::RS512, RsaHash::Sha512),
            ][hash];
            let (input, mut sig) = signed(algorithm, &sub);
            if let Some(byte) = sig.get_mut(flip) {
                *byte ^= 1 << bit;
            }
            let portable = public.verify_pkcs1_portable(rs_hash, input.as_bytes(), &sig);
            prop_assert_eq!(public.verify_with_ring(rs_hash, input.as_bytes(), &sig), portable);
            prop_assert_eq!(portable, flip >= 256);
        }
    }
}
