//! Turns the kernel's serial byte stream into lines.
//!
//! The stream starts with raw text (firmware banners), then the kernel writes one 0x00 byte and
//! from then on sends `defmt` frames, rzcobs-encoded and each terminated by 0x00. Frames that do not
//! decode are shown as raw bytes so nothing the guest says is lost. Without a defmt table (the ELF
//! has no `.defmt` section, or a fake guest in tests) the whole stream is plain text.

use std::fmt;
use std::path::PathBuf;

use defmt_decoder::{DecodeError, Locations, StreamDecoder, Table};

/// One line of console output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// Plain text (before the first 0x00, or the whole stream in text mode).
    Text(String),
    /// A decoded defmt frame.
    Log {
        level: Option<&'static str>,
        timestamp: Option<String>,
        message: String,
        location: Option<String>,
    },
    /// A frame that did not decode, shown as lossy text.
    Undecodable(String),
}

impl Line {
    /// The text the test protocol is matched against.
    pub fn message(&self) -> Option<&str> {
        match self {
            Line::Text(text) => Some(text),
            Line::Log { message, .. } => Some(message),
            Line::Undecodable(_) => None,
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Line::Text(text) => f.write_str(text),
            Line::Log {
                level,
                timestamp,
                message,
                location,
            } => {
                if let Some(ts) = timestamp {
                    write!(f, "{ts} ")?;
                }
                if let Some(level) = level {
                    write!(f, "{:<5} ", level.to_uppercase())?;
                }
                f.write_str(message)?;
                if let Some(loc) = location {
                    write!(f, "  ({loc})")?;
                }
                Ok(())
            }
            Line::Undecodable(text) => write!(f, "(undecodable frame) {text}"),
        }
    }
}

/// Decoding state for one boot.
pub struct Console<'t> {
    decoder: Option<Box<dyn StreamDecoder + Send + Sync + 't>>,
    locations: Option<&'t Locations>,
    /// Strip this prefix from source paths shown with warnings and errors.
    source_root: Option<PathBuf>,
    in_frames: bool,
    pending: Vec<u8>,
}

impl<'t> Console<'t> {
    /// A console that decodes defmt frames after the first 0x00.
    pub fn defmt(
        table: &'t Table,
        locations: Option<&'t Locations>,
        source_root: Option<PathBuf>,
    ) -> Self {
        Console {
            decoder: Some(table.new_stream_decoder()),
            locations,
            source_root,
            in_frames: false,
            pending: Vec::new(),
        }
    }

    /// A console for a guest that sends only text.
    pub fn text() -> Self {
        Console {
            decoder: None,
            locations: None,
            source_root: None,
            in_frames: false,
            pending: Vec::new(),
        }
    }

    /// Feeds bytes from the guest; returns the lines completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Line> {
        let mut lines = Vec::new();
        for &byte in bytes {
            if self.in_frames {
                if byte == 0 {
                    if !self.pending.is_empty() {
                        let frame = std::mem::take(&mut self.pending);
                        lines.push(self.decode_frame(&frame));
                    }
                } else {
                    self.pending.push(byte);
                }
                continue;
            }
            match byte {
                b'\n' => lines.push(self.take_text()),
                0 if self.decoder.is_some() => {
                    if !self.pending.is_empty() {
                        lines.push(self.take_text());
                    }
                    self.in_frames = true;
                }
                0 | b'\r' => {}
                _ => self.pending.push(byte),
            }
        }
        lines
    }

    /// Whatever is left when the guest's output ends.
    pub fn finish(&mut self) -> Vec<Line> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        if self.in_frames {
            let rest = std::mem::take(&mut self.pending);
            vec![Line::Undecodable(
                String::from_utf8_lossy(&rest).into_owned(),
            )]
        } else {
            vec![self.take_text()]
        }
    }

    fn take_text(&mut self) -> Line {
        let bytes = std::mem::take(&mut self.pending);
        Line::Text(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn decode_frame(&mut self, frame: &[u8]) -> Line {
        let Some(decoder) = self.decoder.as_mut() else {
            return Line::Undecodable(String::from_utf8_lossy(frame).into_owned());
        };
        decoder.received(frame);
        decoder.received(&[0]);
        match decoder.decode() {
            Ok(frame_out) => {
                let level = frame_out.level().map(|l| l.as_str());
                let location = match level {
                    Some("warn" | "error") => self.locations.and_then(|locs| {
                        let loc = locs.get(&frame_out.index())?;
                        let file = match &self.source_root {
                            Some(root) => loc.file.strip_prefix(root).unwrap_or(&loc.file),
                            None => &loc.file,
                        };
                        Some(format!("{}:{}", file.display(), loc.line))
                    }),
                    _ => None,
                };
                Line::Log {
                    level,
                    timestamp: frame_out.display_timestamp().map(|t| t.to_string()),
                    message: frame_out.display_message().to_string(),
                    location,
                }
            }
            Err(DecodeError::UnexpectedEof | DecodeError::Malformed) => {
                Line::Undecodable(String::from_utf8_lossy(frame).into_owned())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_mode_splits_lines_across_chunks() {
        let mut c = Console::text();
        assert!(c.feed(b"KTEST st").is_empty());
        let lines = c.feed(b"art a\r\nKTEST pass a\npartial");
        assert_eq!(
            lines,
            vec![
                Line::Text("KTEST start a".into()),
                Line::Text("KTEST pass a".into())
            ]
        );
        assert_eq!(c.finish(), vec![Line::Text("partial".into())]);
        assert!(c.finish().is_empty());
    }

    #[test]
    fn text_mode_ignores_nul_bytes() {
        let mut c = Console::text();
        let lines = c.feed(b"\0hello\0\n");
        assert_eq!(lines, vec![Line::Text("hello".into())]);
    }

    #[test]
    fn display_of_log_lines() {
        let line = Line::Log {
            level: Some("warn"),
            timestamp: None,
            message: "slow".into(),
            location: Some("kernel/src/main.rs:3".into()),
        };
        assert_eq!(line.to_string(), "WARN  slow  (kernel/src/main.rs:3)");
    }
}
