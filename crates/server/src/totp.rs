//! TOTP second factor (RFC 6238: SHA-1, 6 digits, 30 s steps, ±1 step).

use totp_rs::{Algorithm, Secret, TOTP};

const STEP: u64 = 30;

fn totp(secret_b32: &str, label: &str) -> Option<TOTP> {
    let bytes = Secret::Encoded(secret_b32.to_string()).to_bytes().ok()?;
    let label: String = label.chars().filter(|c| *c != ':').collect();
    TOTP::new(
        Algorithm::SHA1,
        6,
        1,
        STEP,
        bytes,
        Some("Drawbridge".into()),
        label,
    )
    .ok()
}

/// A new random secret (160 bits), base32.
pub fn new_secret() -> String {
    match Secret::generate_secret().to_encoded() {
        Secret::Encoded(s) => s,
        Secret::Raw(_) => unreachable!("to_encoded returns Encoded"),
    }
}

/// The `otpauth://` URI for an authenticator app.
pub fn uri(secret_b32: &str, label: &str) -> Option<String> {
    Some(totp(secret_b32, label)?.get_url())
}

/// Checks a code at unix time `now`. Returns the time step it matched, which
/// must be later than `last_step` (each code works once).
pub fn check(secret_b32: &str, code: &str, now: i64, last_step: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = totp(secret_b32, "x")?;
    let now = u64::try_from(now).ok()?;
    let mut matched = None;
    for offset in [-1i64, 0, 1] {
        let Some(at) = now.checked_add_signed(offset * STEP as i64) else {
            continue;
        };
        let step = (at / STEP) as i64;
        // Compare every candidate (no early exit) in constant time.
        if crate::secret::ct_eq(t.generate(at).as_bytes(), code.as_bytes()) && step > last_step {
            matched = Some(step);
        }
    }
    matched
}

/// The code for a time; for tests and the CLI's self-check.
pub fn code_at(secret_b32: &str, now: i64) -> Option<String> {
    Some(totp(secret_b32, "x")?.generate(u64::try_from(now).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_works_once_and_only_near_its_time() {
        let s = new_secret();
        let now = 1_800_000_000;
        let code = code_at(&s, now).unwrap();
        let step = check(&s, &code, now, 0).expect("valid now");
        assert_eq!(check(&s, &code, now, step), None, "reuse refused");
        assert_eq!(check(&s, &code, now + 600, 0), None, "stale code refused");
        assert_eq!(check(&s, "12345", now, 0), None);
        assert_eq!(check(&s, "abcdef", now, 0), None);
        assert!(
            uri(&s, "anna@plant")
                .unwrap()
                .starts_with("otpauth://totp/")
        );
    }
}
