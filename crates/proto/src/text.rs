//! Bounded text newtypes that can only hold valid values.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TextError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {0} characters")]
    TooLong(usize),
    #[error("must not contain control characters")]
    Control,
    #[error("may only contain letters, digits and . _ @ -")]
    Charset,
    #[error("may only contain lower-case letters, digits and -")]
    LowerCharset,
    #[error("may only contain letters, digits and . _ -")]
    TagCharset,
}

/// Implements utoipa's schema traits for a type that travels as a JSON string;
/// the longer form also states its length bounds and pattern in the document.
#[macro_export]
macro_rules! string_schema {
    ($ty:ident, $desc:expr) => {
        $crate::string_schema!($ty, $desc, None, None, None::<&str>);
    };
    ($ty:ident, $desc:expr, $min:expr, $max:expr, $pattern:expr) => {
        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some($desc))
                    .min_length($min)
                    .max_length($max)
                    .pattern($pattern)
                    .into()
            }
        }
        impl utoipa::ToSchema for $ty {}
    };
}

fn check(s: &str, max: usize, allow_newlines: bool) -> Result<(), TextError> {
    if s.trim().is_empty() {
        return Err(TextError::Empty);
    }
    if s.chars().count() > max {
        return Err(TextError::TooLong(max));
    }
    if s.chars()
        .any(|c| c.is_control() && !(allow_newlines && (c == '\n' || c == '\t')))
    {
        return Err(TextError::Control);
    }
    Ok(())
}

macro_rules! bounded_text {
    ($(#[$doc:meta])* $name:ident, $max:expr, $newlines:expr, $pattern:expr, $extra:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);
        crate::string_schema!(
            $name,
            concat!("Text of 1 to ", stringify!($max), " characters, not only spaces, no control characters."),
            Some(1),
            Some($max),
            $pattern
        );

        impl $name {
            pub const MAX: usize = $max;
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = TextError;
            fn try_from(s: String) -> Result<Self, TextError> {
                check(&s, $max, $newlines)?;
                let extra: fn(&str) -> Result<(), TextError> = $extra;
                extra(&s)?;
                Ok(Self(s))
            }
        }
        impl TryFrom<&str> for $name {
            type Error = TextError;
            fn try_from(s: &str) -> Result<Self, TextError> {
                Self::try_from(s.to_string())
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

/// What a [`Username`] may hold, as the OpenAPI document states it.
pub const USERNAME_PATTERN: &str = "^[A-Za-z0-9._@-]+$";

bounded_text!(
    /// A display name: 1..=64 characters, no control characters.
    Name, 64, false, None::<&str>, |_| Ok(())
);
bounded_text!(
    /// Free text such as a logbook note: 1..=4096 characters.
    LongText, 4096, true, None::<&str>, |_| Ok(())
);
bounded_text!(
    /// A login name: 1..=64 of `[A-Za-z0-9._@-]`.
    Username, 64, false, Some(USERNAME_PATTERN), |s| {
        if s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')) {
            Ok(())
        } else {
            Err(TextError::Charset)
        }
    }
);

/// What a [`Region`] may hold, as the OpenAPI document states it.
pub const REGION_PATTERN: &str = "^[a-z0-9-]+$";

bounded_text!(
    /// Where a relay or a device is, for choosing a session's relay: 1..=32 of
    /// `[a-z0-9-]` (e.g. `eu-central`).
    Region, 32, false, Some(REGION_PATTERN), |s| {
        if s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            Ok(())
        } else {
            Err(TextError::LowerCharset)
        }
    }
);

/// What a [`TagName`] may hold, as the OpenAPI document states it.
pub const TAG_NAME_PATTERN: &str = "^[A-Za-z0-9._-]+$";

bounded_text!(
    /// A PLC tag's name, unique per device: 1..=64 of `[A-Za-z0-9._-]`
    /// (it appears in URLs, CSV headers and e-mails as it is).
    TagName, 64, false, Some(TAG_NAME_PATTERN), |s| {
        if s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            Ok(())
        } else {
            Err(TextError::TagCharset)
        }
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_lower_case_names() {
        assert!(Region::try_from("eu-central-1").is_ok());
        assert_eq!(Region::try_from("EU"), Err(TextError::LowerCharset));
        assert_eq!(Region::try_from("eu central"), Err(TextError::LowerCharset));
        assert_eq!(Region::try_from(""), Err(TextError::Empty));
        assert_eq!(
            Region::try_from("a".repeat(33)),
            Err(TextError::TooLong(32))
        );
    }

    #[test]
    fn names_reject_empty_long_and_control_characters() {
        assert_eq!(Name::try_from(""), Err(TextError::Empty));
        assert_eq!(Name::try_from("   "), Err(TextError::Empty));
        assert_eq!(Name::try_from("a".repeat(65)), Err(TextError::TooLong(64)));
        assert_eq!(Name::try_from("a\u{0}b"), Err(TextError::Control));
        assert!(Name::try_from("Press line 3 — Ünïcode ok").is_ok());
        assert!(LongText::try_from("line1\nline2").is_ok());
        assert_eq!(Username::try_from("a b"), Err(TextError::Charset));
        assert!(Username::try_from("anna.m@plant-1").is_ok());
    }

    #[test]
    fn tag_names_are_plain_identifiers() {
        assert!(TagName::try_from("Motor_1.speed-rpm").is_ok());
        assert_eq!(TagName::try_from("a b"), Err(TextError::TagCharset));
        assert_eq!(TagName::try_from("a/b"), Err(TextError::TagCharset));
        assert_eq!(TagName::try_from("ä"), Err(TextError::TagCharset));
        assert_eq!(
            TagName::try_from("a".repeat(65)),
            Err(TextError::TooLong(64))
        );
    }

    #[test]
    fn names_are_parsed_when_deserialised() {
        assert!(serde_json::from_str::<Name>("\"\"").is_err());
        assert_eq!(serde_json::from_str::<Name>("\"x\"").unwrap().as_str(), "x");
    }
}
