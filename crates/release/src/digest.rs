//! The binary checked against its signed size and SHA-256 as it streams in.

use crate::{Error, ReleaseMeta};
use subtle::ConstantTimeEq;

/// Checks a binary against its (verified) metadata as it streams in: more
/// bytes than signed are refused as soon as they arrive, fewer and a wrong
/// hash at [`Digest::finish`].
pub struct Digest {
    expected_size: u64,
    expected_hash: String,
    pub(crate) seen: u64,
    ctx: ring::digest::Context,
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Digest")
            .field("expected_size", &self.expected_size)
            .field("expected_hash", &self.expected_hash)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl Digest {
    /// Starts checking a binary against `meta`'s size and SHA-256.
    pub fn new(meta: &ReleaseMeta) -> Digest {
        Digest {
            expected_size: meta.size,
            expected_hash: meta.sha256.clone(),
            seen: 0,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    /// The next bytes of the binary; an error as soon as there are more
    /// bytes than signed (nothing of them is hashed then).
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.seen = self.seen.saturating_add(bytes.len() as u64);
        if self.seen > self.expected_size {
            return Err(Error::Size {
                expected: self.expected_size,
                got: self.seen,
            });
        }
        self.ctx.update(bytes);
        Ok(())
    }

    /// The bytes received so far.
    pub fn received(&self) -> u64 {
        self.seen
    }

    /// The end of the binary: its size and SHA-256 must be the signed ones.
    pub fn finish(self) -> Result<(), Error> {
        if self.seen != self.expected_size {
            return Err(Error::Size {
                expected: self.expected_size,
                got: self.seen,
            });
        }
        let got = self.ctx.finish();
        let expected = hex::decode(&self.expected_hash).map_err(|_| Error::Hash)?;
        if expected.len() != got.as_ref().len() || !bool::from(got.as_ref().ct_eq(&expected)) {
            return Err(Error::Hash);
        }
        Ok(())
    }
}
