//! VNC Authentication (RFB security type 2): the response to the server's
//! 16-byte challenge. DES itself comes from RustCrypto's `des` crate.

use des::Des;
use des::cipher::{Array, BlockCipherEncrypt, KeyInit};
use zeroize::Zeroizing;

/// Length of the server's challenge and of the client's response.
pub(crate) const CHALLENGE_LEN: usize = 16;

/// Encrypts `challenge` the way VNC does: the password, truncated or
/// zero-padded to 8 bytes, is the DES key with the bits of every byte
/// reversed (VNC takes the lowest bit of each byte as the first), and the two
/// 8-byte halves are encrypted independently (ECB).
pub(crate) fn response(password: &[u8], challenge: &[u8; CHALLENGE_LEN]) -> [u8; CHALLENGE_LEN] {
    let mut key = Zeroizing::new([0u8; 8]);
    for (k, p) in key.iter_mut().zip(password) {
        *k = p.reverse_bits();
    }
    let cipher = Des::new(&Array::from(*key));
    let mut out = *challenge;
    for half in out.chunks_exact_mut(8) {
        let mut block = Array::<u8, _>::try_from(&*half).expect("8-byte half");
        cipher.encrypt_block(&mut block);
        half.copy_from_slice(&block);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const COUNTING: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
    const FALLING: [u8; 16] = [
        0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
        0x00,
    ];

    // The expected values were computed outside this crate, with OpenSSL
    // (`openssl enc -des-ecb -nopad` with the bit-reversed key) and with
    // noVNC 1.3's own core/des.js.
    #[test]
    fn response_matches_openssl_and_novnc_for_an_eight_byte_password() {
        assert_eq!(
            response(b"password", &COUNTING).to_vec(),
            hex("b866924125c8eebb9debc1db61c538e2")
        );
    }

    #[test]
    fn short_password_is_zero_padded() {
        assert_eq!(
            response(b"secret", &FALLING).to_vec(),
            hex("1def176f7183196ba3f34c8eb0a59298")
        );
        assert_eq!(
            response(b"secret", &FALLING),
            response(b"secret\0\0", &FALLING)
        );
    }

    #[test]
    fn long_password_is_truncated_to_eight_bytes() {
        assert_eq!(
            response(b"longerthan8", &FALLING).to_vec(),
            hex("38d88611c4ef7c1e4ae949202c865963")
        );
        assert_eq!(
            response(b"longerthan8", &FALLING),
            response(b"longerth", &FALLING)
        );
    }

    #[test]
    fn halves_are_encrypted_independently() {
        let mut twice = [0u8; 16];
        twice[..8].copy_from_slice(&COUNTING[..8]);
        twice[8..].copy_from_slice(&COUNTING[..8]);
        let r = response(b"password", &twice);
        assert_eq!(r[..8], r[8..]);
    }
}
