//! Status output: the `result`/`maxlen` buffer of a target's `status` hook.

use core::fmt;

/// What `dmsetup status` / `table` / IMA asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusType {
    /// `dmsetup status`: the target's state.
    Info,
    /// `dmsetup table`: the table line as dm prints it back.
    Table,
    /// IMA measurement string.
    Ima,
}

/// Writes into dm's status buffer with `DMEMIT` semantics: output is
/// truncated to `maxlen - 1` bytes and always NUL-terminated.
pub struct StatusBuf<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> StatusBuf<'a> {
    /// Wraps `buf` (the whole `maxlen` bytes) and starts an empty string, as
    /// upstream's status functions leave `result[0] = '\0'` when they print
    /// nothing.
    pub fn new(buf: &'a mut [u8]) -> Self {
        if let Some(b) = buf.first_mut() {
            *b = 0;
        }
        Self { buf, len: 0 }
    }

    /// Bytes written so far (without the NUL).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Write for StatusBuf<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Room for text, keeping one byte for the terminating NUL.
        let room = self.buf.len().saturating_sub(self.len + 1);
        let n = s.len().min(room);
        if self.len < self.buf.len() {
            self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
            self.len += n;
            self.buf[self.len] = 0;
        }
        Ok(())
    }
}
