//! Passwords: argon2id hashes and the account's password policy.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use drawbridge_proto::PasswordPolicy;

/// The longest password we hash (argon2 is costly; this bounds the work).
pub const MAX_PASSWORD_LEN: usize = 256;

const COMMON: &str = include_str!("common_passwords.txt");

fn hasher() -> Argon2<'static> {
    // OWASP's argon2id recommendation: 19 MiB, 2 iterations, 1 lane.
    let params = Params::new(19 * 1024, 2, 1, None).expect("static argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub fn hash(password: &str) -> String {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashing with valid parameters cannot fail")
        .to_string()
}

/// Checks a password against a stored argon2 hash (constant-time inside argon2).
pub fn verify(password: &str, stored: &str) -> bool {
    if password.len() > MAX_PASSWORD_LEN {
        return false;
    }
    match PasswordHash::new(stored) {
        Ok(h) => hasher().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// Why a password was refused; the message is shown to the user.
pub fn check_policy(policy: &PasswordPolicy, username: &str, password: &str) -> Result<(), String> {
    let len = password.chars().count();
    if len < policy.min_length as usize {
        return Err(format!(
            "the password must have at least {} characters",
            policy.min_length
        ));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(format!(
            "the password must have at most {MAX_PASSWORD_LEN} bytes"
        ));
    }
    let classes = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| !c.is_alphanumeric()),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if classes < policy.min_classes as usize {
        return Err(format!(
            "the password must mix at least {} of: lower case, upper case, digits, other characters",
            policy.min_classes
        ));
    }
    if policy.deny_common {
        let lower = password.to_lowercase();
        // "Password123!" is "password" with a suffix: check the stem too.
        let stem = lower.trim_end_matches(|c: char| !c.is_alphabetic());
        if COMMON
            .lines()
            .any(|c| c == lower || (!stem.is_empty() && c == stem))
        {
            return Err("this password is on the list of commonly used passwords".into());
        }
        if !username.is_empty() && lower.contains(&username.to_lowercase()) {
            return Err("the password must not contain the user name".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let a = hash("Correct-Horse-9");
        let b = hash("Correct-Horse-9");
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "salted");
        assert!(verify("Correct-Horse-9", &a));
        assert!(!verify("correct-horse-9", &a));
        assert!(!verify("x", "not a hash"));
    }

    #[test]
    fn policy_enforces_length_classes_common_and_username() {
        let p = PasswordPolicy::default();
        assert!(
            check_policy(&p, "anna", "Sh0rt!")
                .unwrap_err()
                .contains("at least 10")
        );
        assert!(
            check_policy(&p, "anna", "alllowercaseletters")
                .unwrap_err()
                .contains("mix")
        );
        let mut common = p.clone();
        common.min_classes = 0;
        assert!(
            check_policy(&common, "anna", "Password123")
                .unwrap_err()
                .contains("commonly")
        );
        assert!(
            check_policy(&p, "anna", "Password123!")
                .unwrap_err()
                .contains("commonly")
        );
        assert!(
            check_policy(&p, "anna", "Anna-Secure-77")
                .unwrap_err()
                .contains("user name")
        );
        assert!(check_policy(&p, "anna", "Blue-Tractor-42").is_ok());
    }
}
