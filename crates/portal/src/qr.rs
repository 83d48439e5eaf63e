//! QR codes rendered here as SVG (the `qrcode` crate; no script, no third party).

use base64::Engine;
use qrcode::{EcLevel, QrCode};

/// The most bytes one QR code takes (version 40 with the lowest error
/// correction holds 2953; a little is kept free for the encoder's headers).
pub const MAX_BYTES: usize = 2900;

/// Why `text` has no QR code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLarge {
    pub bytes: usize,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes do not fit in one QR code (at most {MAX_BYTES})",
            self.bytes
        )
    }
}

/// The QR code of `text` as an `<svg>` element (no XML prolog: it goes inline
/// into a page), at least `min` pixels wide, with its quiet zone.
pub fn svg(text: &str, min: u32) -> Result<String, TooLarge> {
    let too_large = TooLarge { bytes: text.len() };
    if text.len() > MAX_BYTES {
        return Err(too_large);
    }
    let code =
        QrCode::with_error_correction_level(text.as_bytes(), EcLevel::L).map_err(|_| too_large)?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(min, min)
        .quiet_zone(true)
        .build();
    Ok(match svg.find("<svg") {
        Some(i) => svg[i..].to_string(),
        None => svg,
    })
}

/// The QR code of `text` as an SVG `data:` URL, for an `<img>`.
pub fn data_url(text: &str, min: u32) -> Option<String> {
    let svg = svg(text, min).ok()?;
    Some(format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qr_code_is_an_inline_svg_element_and_too_much_text_is_refused() {
        let s = svg("hello", 220).unwrap();
        assert!(s.starts_with("<svg"), "{s}");
        assert!(s.ends_with("</svg>"));
        let big = "x".repeat(MAX_BYTES + 1);
        assert_eq!(
            svg(&big, 220),
            Err(TooLarge {
                bytes: MAX_BYTES + 1
            })
        );
        assert!(svg(&"x".repeat(MAX_BYTES), 220).is_ok());
        assert!(
            data_url("hello", 220)
                .unwrap()
                .starts_with("data:image/svg+xml;base64,")
        );
    }
}
