//! Raw Modbus words and bits to a tag's value: pure functions.
//!
//! A numeric value is `raw × scale + offset`. A `bool` is 0 or 1 as read (a
//! register counts as true when it is not 0) and is never scaled: a state alarm
//! compares it with `alarm_when` as it is.
//!
//! A value that is not a finite number (an `f32` register pair holding NaN or
//! ±infinity, or a scale that overflows) has no value and the quality
//! `bad: io`: the PLC answered, but with nothing a historian or an alarm can
//! use. The contract's reasons (`timeout`, `exception`, `refused`, `io`) have
//! no better fit and the server stores them as they are.

use drawbridge_proto::data::{BadReason, Quality, TagSpec, ValueType, WordOrder};

/// What one read gave: the raw registers or the raw bits.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// Why raw data cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer words or bits than the type needs (a PLC answering short).
    Short,
    /// Not a finite number.
    NotFinite,
}

impl DecodeError {
    /// Both count as a protocol failure (`io`).
    pub fn quality(self) -> Quality {
        Quality::Bad {
            reason: BadReason::Io,
        }
    }
}

/// Two registers as one 32-bit word, in the tag's word order.
fn join(words: &[u16], order: WordOrder) -> Result<u32, DecodeError> {
    let [a, b] = words.get(..2).ok_or(DecodeError::Short)? else {
        return Err(DecodeError::Short);
    };
    let (hi, lo) = match order {
        WordOrder::HighFirst => (*a, *b),
        WordOrder::LowFirst => (*b, *a),
    };
    Ok((u32::from(hi) << 16) | u32::from(lo))
}

/// The raw number (before scale and offset).
pub fn raw_value(raw: &Raw, ty: ValueType, order: WordOrder) -> Result<f64, DecodeError> {
    let v = match (raw, ty) {
        (Raw::Bits(bits), _) => {
            // Only bool tags read bits (TagSpec refuses anything else).
            f64::from(u8::from(*bits.first().ok_or(DecodeError::Short)?))
        }
        (Raw::Words(w), ValueType::Bool) => {
            f64::from(u8::from(*w.first().ok_or(DecodeError::Short)? != 0))
        }
        (Raw::Words(w), ValueType::U16) => f64::from(*w.first().ok_or(DecodeError::Short)?),
        (Raw::Words(w), ValueType::I16) => f64::from(*w.first().ok_or(DecodeError::Short)? as i16),
        (Raw::Words(w), ValueType::U32) => f64::from(join(w, order)?),
        (Raw::Words(w), ValueType::I32) => f64::from(join(w, order)? as i32),
        (Raw::Words(w), ValueType::F32) => f64::from(f32::from_bits(join(w, order)?)),
    };
    if v.is_finite() {
        Ok(v)
    } else {
        Err(DecodeError::NotFinite)
    }
}

/// The tag's value: the raw number, scaled and offset unless it is a bool.
pub fn value(raw: &Raw, tag: &TagSpec) -> Result<f64, DecodeError> {
    let v = raw_value(raw, tag.value_type, tag.word_order)?;
    if tag.value_type == ValueType::Bool {
        return Ok(v);
    }
    let v = v * tag.scale + tag.offset;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(DecodeError::NotFinite)
    }
}

/// The value and quality of a successful read.
pub fn sample(raw: &Raw, tag: &TagSpec) -> (Option<f64>, Quality) {
    match value(raw, tag) {
        Ok(v) => (Some(v), Quality::Good),
        Err(e) => (None, e.quality()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ValueType::*;
    use WordOrder::*;

    fn w(words: &[u16]) -> Raw {
        Raw::Words(words.to_vec())
    }

    /// Registers of a 32-bit pattern in the given order.
    fn words32(x: u32, order: WordOrder) -> Raw {
        let (hi, lo) = ((x >> 16) as u16, x as u16);
        match order {
            HighFirst => w(&[hi, lo]),
            LowFirst => w(&[lo, hi]),
        }
    }

    #[test]
    fn sixteen_bit_values_are_read_unsigned_or_twos_complement() {
        assert_eq!(raw_value(&w(&[0]), U16, HighFirst), Ok(0.0));
        assert_eq!(raw_value(&w(&[65535]), U16, HighFirst), Ok(65535.0));
        assert_eq!(raw_value(&w(&[65535]), I16, HighFirst), Ok(-1.0));
        assert_eq!(raw_value(&w(&[0x8000]), I16, HighFirst), Ok(-32768.0));
        assert_eq!(raw_value(&w(&[0x7fff]), I16, LowFirst), Ok(32767.0));
    }

    #[test]
    fn thirty_two_bit_values_follow_the_word_order() {
        for order in [HighFirst, LowFirst] {
            assert_eq!(
                raw_value(&words32(0x0001_0002, order), U32, order),
                Ok(65538.0)
            );
            assert_eq!(
                raw_value(&words32(4_000_000_000, order), U32, order),
                Ok(4e9)
            );
            assert_eq!(
                raw_value(&words32((-123_456_i32) as u32, order), I32, order),
                Ok(-123_456.0)
            );
            assert_eq!(
                raw_value(&words32(i32::MIN as u32, order), I32, order),
                Ok(f64::from(i32::MIN))
            );
            assert_eq!(
                raw_value(&words32(1.5f32.to_bits(), order), F32, order),
                Ok(1.5)
            );
            assert_eq!(
                raw_value(&words32((-273.15f32).to_bits(), order), F32, order),
                Ok(f64::from(-273.15f32))
            );
        }
        // The same registers read in the other order are another number.
        assert_eq!(raw_value(&w(&[1, 2]), U32, HighFirst), Ok(65538.0));
        assert_eq!(raw_value(&w(&[1, 2]), U32, LowFirst), Ok(131073.0));
    }

    #[test]
    fn non_finite_floats_have_no_value() {
        for bits in [
            f32::NAN.to_bits(),
            f32::INFINITY.to_bits(),
            f32::NEG_INFINITY.to_bits(),
        ] {
            for order in [HighFirst, LowFirst] {
                assert_eq!(
                    raw_value(&words32(bits, order), F32, order),
                    Err(DecodeError::NotFinite)
                );
            }
        }
        assert_eq!(
            DecodeError::NotFinite.quality(),
            Quality::Bad {
                reason: BadReason::Io
            }
        );
    }

    #[test]
    fn short_answers_are_refused() {
        assert_eq!(raw_value(&w(&[]), U16, HighFirst), Err(DecodeError::Short));
        assert_eq!(raw_value(&w(&[1]), U32, HighFirst), Err(DecodeError::Short));
        assert_eq!(raw_value(&w(&[1]), F32, LowFirst), Err(DecodeError::Short));
        assert_eq!(
            raw_value(&Raw::Bits(vec![]), Bool, HighFirst),
            Err(DecodeError::Short)
        );
    }

    #[test]
    fn bools_are_bits_or_non_zero_registers() {
        assert_eq!(raw_value(&Raw::Bits(vec![true]), Bool, HighFirst), Ok(1.0));
        assert_eq!(raw_value(&Raw::Bits(vec![false]), Bool, HighFirst), Ok(0.0));
        assert_eq!(raw_value(&w(&[0]), Bool, HighFirst), Ok(0.0));
        assert_eq!(raw_value(&w(&[7]), Bool, HighFirst), Ok(1.0));
    }

    fn tag(json_extra: &str, ty: &str) -> TagSpec {
        serde_json::from_str(&format!(
            r#"{{"name":"t","source":{{"host":"127.0.0.2","function":"holding_registers","address":0}},"value_type":"{ty}"{json_extra}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn scale_and_offset_apply_to_numbers_but_not_to_bools() {
        let t = tag(r#","scale":0.1,"offset":-40"#, "i16");
        let (v, q) = sample(&w(&[(-100i16) as u16]), &t);
        assert_eq!(q, Quality::Good);
        assert!((v.unwrap() - (-50.0)).abs() < 1e-9, "{v:?}");
        let b = tag(r#","scale":10,"offset":5"#, "bool");
        assert_eq!(sample(&w(&[1]), &b), (Some(1.0), Quality::Good));
        let huge = tag(r#","scale":1e300"#, "f32");
        assert_eq!(
            sample(&words32(f32::MAX.to_bits(), HighFirst), &huge),
            (None, DecodeError::NotFinite.quality())
        );
    }
}
