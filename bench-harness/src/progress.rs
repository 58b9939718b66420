//! Progress of a long run (a million connects, the peers) on a terminal: one line, rewritten
//! in place, with what is connected, the rate and the time so far. Quiet when stderr is not a
//! terminal, so logs and reports keep only the summary lines.

use std::io::{IsTerminal, Write};

/// A line of progress on stderr.
pub struct Progress {
    tty: bool,
    shown: bool,
}

impl Progress {
    /// Shows progress only if stderr is a terminal.
    pub fn on_stderr() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    /// Replaces the line with `line` (nothing when not a terminal).
    pub fn show(&mut self, line: &str) {
        if self.tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
            self.shown = true;
        }
    }

    /// Ends the line, so what is printed next starts on its own.
    pub fn done(&mut self) {
        if self.shown {
            eprintln!();
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done();
    }
}
