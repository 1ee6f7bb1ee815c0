//! A running QEMU (or any child process standing in for it): its output as a stream of chunks,
//! its exit status, and a kill switch for deadlines.

use std::io::Read;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// What happened next.
#[derive(Debug)]
pub enum Event {
    Output(Vec<u8>),
    Exited(ExitStatus),
    /// The deadline passed; the child is still running.
    Deadline,
}

pub struct Guest {
    child: Child,
    output: Receiver<Vec<u8>>,
    output_open: bool,
    stderr: Option<Arc<Mutex<Vec<u8>>>>,
}

impl Guest {
    /// Starts `command` with stdout piped. With `capture_stderr`, stderr is kept for
    /// [`Guest::stderr`]; otherwise it goes to the terminal.
    pub fn spawn(mut command: Command, capture_stderr: bool) -> Result<Guest> {
        command.stdin(Stdio::null()).stdout(Stdio::piped());
        command.stderr(if capture_stderr {
            Stdio::piped()
        } else {
            Stdio::inherit()
        });
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, output) = mpsc::channel();
        thread::spawn(move || pump(stdout, tx));
        let stderr = child.stderr.take().map(|mut pipe| {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&buf);
            thread::spawn(move || {
                let mut chunk = [0u8; 1024];
                while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                    if let Ok(mut b) = sink.lock() {
                        b.extend_from_slice(&chunk[..n]);
                    }
                }
            });
            buf
        });
        Ok(Guest {
            child,
            output,
            output_open: true,
            stderr,
        })
    }

    /// Waits for output, the exit of the child, or `deadline` (`None`: no limit).
    pub fn next_event(&mut self, deadline: Option<Instant>) -> Result<Event> {
        while self.output_open {
            let received = match deadline {
                Some(d) => self
                    .output
                    .recv_timeout(d.saturating_duration_since(Instant::now())),
                None => self
                    .output
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            match received {
                Ok(bytes) => return Ok(Event::Output(bytes)),
                Err(RecvTimeoutError::Timeout) => return Ok(Event::Deadline),
                Err(RecvTimeoutError::Disconnected) => self.output_open = false,
            }
        }
        // Output closed: the child is exiting (or closed stdout and lives on).
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Event::Exited(status));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Event::Deadline);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the child and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.child.kill().context("killing the guest")?;
        Ok(self.child.wait()?)
    }

    /// What the child wrote to stderr so far (when captured).
    pub fn stderr(&self) -> String {
        self.stderr
            .as_ref()
            .and_then(|buf| {
                buf.lock()
                    .ok()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            })
            .unwrap_or_default()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // Never leave a QEMU behind, whatever path we leave by.
        let _ = self.kill();
    }
}

fn pump(mut stdout: ChildStdout, tx: mpsc::Sender<Vec<u8>>) {
    let mut buf = [0u8; 4096];
    loop {
        match stdout.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_then_exit_status() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "printf 'hello\\n'; exit 3"]);
        let mut guest = Guest::spawn(cmd, true).unwrap();
        let mut out = Vec::new();
        let status = loop {
            match guest.next_event(Some(Instant::now() + Duration::from_secs(30))) {
                Ok(Event::Output(bytes)) => out.extend(bytes),
                Ok(Event::Exited(status)) => break status,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(out, b"hello\n");
        assert_eq!(status.code(), Some(3));
    }

    #[test]
    fn silent_child_hits_the_deadline_and_is_killed() {
        let mut cmd = Command::new("sleep");
        cmd.arg("1000");
        let mut guest = Guest::spawn(cmd, true).unwrap();
        let start = Instant::now();
        let event = guest
            .next_event(Some(start + Duration::from_millis(300)))
            .unwrap();
        assert!(matches!(event, Event::Deadline));
        assert!(start.elapsed() >= Duration::from_millis(300));
        let status = guest.kill().unwrap();
        assert!(status.code().is_none(), "killed by a signal: {status:?}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
