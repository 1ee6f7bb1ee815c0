//! Slot bookkeeping: which tags hold a request, which wait, which the port works on, which
//! step of a multi-step request runs, and what a recovery fails, replays or suspects. Pure
//! (no registers, no memory), tested on the host.

use super::MAX_REPLAYS;
use crate::cmd::SLOTS;

/// What to write to the port after a bookkeeping step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Issue {
    /// NCQ tags to issue (PxSACT, then PxCI).
    pub ncq: u32,
    /// A slot to issue alone (PxCI), at its current step.
    pub exclusive: Option<u8>,
}

/// Slot bookkeeping: which tags hold a request, which wait, which the port works on, and
/// which step of a multi-step request is running. Every tag the tracker takes leaves it
/// exactly once, through a completion, a failure, or [`Tracker::forget`].
#[derive(Clone, Debug)]
pub struct Tracker {
    /// Tags holding a request.
    busy: u32,
    /// Queued-command tags waiting to be issued.
    ncq_wait: u32,
    /// Exclusive tags waiting.
    excl_wait: u32,
    /// Queued commands in the port.
    ncq_active: u32,
    /// The exclusive command in the port (one bit at most).
    excl_active: u32,
    /// Tags that may have failed: replayed one at a time.
    suspects: u32,
    /// An error stopped the port; nothing is issued until recovery.
    stopped: bool,
    /// Current step per tag.
    step: [u8; SLOTS],
    /// Steps per tag.
    nsteps: [u8; SLOTS],
    /// Replays per tag.
    replays: [u8; SLOTS],
}

/// What a recovery decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Tags that fail.
    pub failed: u32,
    /// Tags to issue again.
    pub replayed: u32,
    /// Tags held as suspects (the failed one was not known).
    pub suspects: u32,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// Nothing in flight.
    pub const fn new() -> Tracker {
        Tracker {
            busy: 0,
            ncq_wait: 0,
            excl_wait: 0,
            ncq_active: 0,
            excl_active: 0,
            suspects: 0,
            stopped: false,
            step: [0; SLOTS],
            nsteps: [1; SLOTS],
            replays: [0; SLOTS],
        }
    }

    /// Tags holding a request.
    pub fn busy(&self) -> u32 {
        self.busy
    }

    /// Commands in the port.
    pub fn active(&self) -> u32 {
        self.ncq_active | self.excl_active
    }

    /// Queued commands in the port.
    pub fn ncq_active(&self) -> u32 {
        self.ncq_active
    }

    /// The exclusive command in the port (one bit at most).
    pub fn excl_active(&self) -> u32 {
        self.excl_active
    }

    /// Whether an error stopped the port.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Takes a request on `tag`: queued (NCQ) or exclusive with `steps` steps. False when the
    /// tag is already busy (a block-layer bug; nothing changes).
    pub fn accept(&mut self, tag: u8, ncq: bool, steps: u8) -> bool {
        let b = 1u32 << tag;
        if self.busy & b != 0 {
            return false;
        }
        self.busy |= b;
        self.step[tag as usize] = 0;
        self.nsteps[tag as usize] = steps.max(1);
        self.replays[tag as usize] = 0;
        if ncq {
            self.ncq_wait |= b;
        } else {
            self.excl_wait |= b;
        }
        true
    }

    /// The current step of `tag`.
    pub fn step(&self, tag: u8) -> u8 {
        self.step[tag as usize]
    }

    /// What may go to the port now; marks it active.
    pub fn next_issue(&mut self) -> Issue {
        let mut out = Issue::default();
        if self.stopped || self.excl_active != 0 {
            return out;
        }
        if self.suspects != 0 {
            // One at a time, so an error names its command.
            if self.ncq_active == 0 {
                let t = self.suspects.trailing_zeros() as u8;
                let b = 1u32 << t;
                if self.ncq_wait & b != 0 {
                    self.ncq_wait &= !b;
                    self.ncq_active |= b;
                    out.ncq = b;
                } else {
                    self.excl_wait &= !b;
                    self.excl_active = b;
                    out.exclusive = Some(t);
                }
            }
            return out;
        }
        if self.excl_wait != 0 {
            if self.ncq_active == 0 {
                let t = self.excl_wait.trailing_zeros() as u8;
                self.excl_wait &= !(1 << t);
                self.excl_active = 1 << t;
                out.exclusive = Some(t);
            }
            return out;
        }
        out.ncq = self.ncq_wait;
        self.ncq_active |= self.ncq_wait;
        self.ncq_wait = 0;
        out
    }

    fn leave(&mut self, mask: u32) {
        self.busy &= !mask;
        self.ncq_wait &= !mask;
        self.excl_wait &= !mask;
        self.ncq_active &= !mask;
        self.excl_active &= !mask;
        self.suspects &= !mask;
    }

    /// Queued commands the port finished (their PxSACT bit is clear): they complete.
    pub fn reap_ncq(&mut self, sact: u32) -> u32 {
        let done = self.ncq_active & !sact;
        self.leave(done);
        done
    }

    /// The exclusive command after its PxCI bit cleared without an error: `Some((tag, true))`
    /// when it completes, `Some((tag, false))` when its next step must be issued.
    pub fn reap_exclusive(&mut self, ci: u32) -> Option<(u8, bool)> {
        if self.excl_active == 0 || ci & self.excl_active != 0 {
            return None;
        }
        let t = self.excl_active.trailing_zeros() as u8;
        self.step[t as usize] += 1;
        if self.step[t as usize] >= self.nsteps[t as usize] {
            self.leave(1 << t);
            Some((t, true))
        } else {
            Some((t, false))
        }
    }

    /// An error: the port stops issuing until [`Tracker::recover`].
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Whom to blame without asking the device: the exclusive command, or the only command
    /// in the port. `None` when several queued commands were in the port.
    pub fn obvious_culprit(&self) -> Option<u32> {
        let a = self.active();
        if self.excl_active != 0 {
            Some(self.excl_active)
        } else if a.count_ones() <= 1 {
            Some(a)
        } else {
            None
        }
    }

    /// Removes `tag` without completing it (the block layer took it back on a timeout).
    pub fn forget(&mut self, tag: u8) -> bool {
        let b = 1u32 << tag;
        let was = self.busy & b != 0;
        self.leave(b);
        was
    }

    /// After the port was reset: `failed` (when known) fails; every other command that was in
    /// the port goes again (up to [`MAX_REPLAYS`] times each); when the failed command is not
    /// known, they go again one at a time as suspects. The port issues again.
    pub fn recover(&mut self, failed: Option<u32>) -> Recovery {
        let active = self.active();
        let mut r = Recovery::default();
        let failed = failed.map(|f| f & active);
        let mut rest = active & !failed.unwrap_or(0);
        r.failed = failed.unwrap_or(0);
        for t in 0..SLOTS {
            let b = 1u32 << t;
            if rest & b != 0 {
                self.replays[t] += 1;
                if self.replays[t] > MAX_REPLAYS {
                    r.failed |= b;
                    rest &= !b;
                }
            }
        }
        // Queued commands wait again; an exclusive command restarts its current step.
        self.ncq_wait |= self.ncq_active & rest;
        self.excl_wait |= self.excl_active & rest;
        self.ncq_active = 0;
        self.excl_active = 0;
        self.leave(r.failed);
        if failed.is_none() && rest.count_ones() > 1 {
            self.suspects |= rest;
            r.suspects = rest;
        } else {
            r.replayed = rest;
        }
        self.stopped = false;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_commands_complete_as_their_sact_bits_clear() {
        let mut t = Tracker::new();
        for tag in 0..32 {
            assert!(t.accept(tag, true, 1));
        }
        assert!(!t.accept(3, true, 1), "a busy tag is refused");
        let iss = t.next_issue();
        assert_eq!(iss.ncq, u32::MAX);
        assert_eq!(t.next_issue(), Issue::default());
        // The device finishes tags 0 and 5: their SACT bits clear.
        assert_eq!(t.reap_ncq(!0b10_0001), 0b10_0001);
        assert_eq!(t.reap_ncq(!0b10_0001), 0, "never completed twice");
        assert_eq!(t.reap_ncq(0), !0b10_0001);
        assert_eq!(t.busy(), 0);
    }

    #[test]
    fn exclusive_commands_wait_for_the_queue_to_drain_and_run_their_steps() {
        let mut t = Tracker::new();
        t.accept(1, true, 1);
        assert_eq!(t.next_issue().ncq, 0b10);
        t.accept(2, false, 3); // PREFLUSH + write + FUA flush
        t.accept(4, true, 1);
        assert_eq!(
            t.next_issue(),
            Issue::default(),
            "NCQ in flight: the flush waits"
        );
        assert_eq!(t.reap_ncq(0), 0b10);
        assert_eq!(
            t.next_issue(),
            Issue {
                ncq: 0,
                exclusive: Some(2)
            }
        );
        assert_eq!(
            t.next_issue(),
            Issue::default(),
            "nothing beside an exclusive command"
        );
        assert_eq!(t.reap_exclusive(1 << 2), None, "still in PxCI");
        assert_eq!(t.reap_exclusive(0), Some((2, false)));
        assert_eq!(t.step(2), 1);
        assert_eq!(t.reap_exclusive(0), Some((2, false)));
        assert_eq!(t.reap_exclusive(0), Some((2, true)));
        assert_eq!(t.reap_exclusive(0), None);
        assert_eq!(t.next_issue().ncq, 0b1_0000);
    }

    #[test]
    fn recovery_fails_the_known_culprit_and_replays_the_rest() {
        let mut t = Tracker::new();
        for tag in [0, 1, 2] {
            t.accept(tag, true, 1);
        }
        t.next_issue();
        t.stop();
        assert_eq!(t.next_issue(), Issue::default(), "stopped");
        assert_eq!(t.obvious_culprit(), None);
        let r = t.recover(Some(0b10));
        assert_eq!(
            r,
            Recovery {
                failed: 0b10,
                replayed: 0b101,
                suspects: 0
            }
        );
        assert_eq!(t.next_issue().ncq, 0b101);
        assert_eq!(t.reap_ncq(0), 0b101);
        assert_eq!(t.busy(), 0);
    }

    #[test]
    fn unknown_culprit_replays_suspects_one_at_a_time() {
        let mut t = Tracker::new();
        for tag in [3, 7, 9] {
            t.accept(tag, true, 1);
        }
        t.next_issue();
        t.stop();
        let r = t.recover(None);
        assert_eq!(r.suspects, 1 << 3 | 1 << 7 | 1 << 9);
        t.accept(12, true, 1);
        assert_eq!(t.next_issue().ncq, 1 << 3, "one suspect alone");
        assert_eq!(t.next_issue(), Issue::default());
        assert_eq!(t.reap_ncq(0), 1 << 3);
        assert_eq!(t.next_issue().ncq, 1 << 7);
        // Tag 7 fails again: alone in the port, so it is the culprit.
        t.stop();
        assert_eq!(t.obvious_culprit(), Some(1 << 7));
        let r = t.recover(Some(1 << 7));
        assert_eq!(r.failed, 1 << 7);
        assert_eq!(t.next_issue().ncq, 1 << 9);
        assert_eq!(t.reap_ncq(0), 1 << 9);
        assert_eq!(t.next_issue().ncq, 1 << 12, "new work after the suspects");
    }

    #[test]
    fn replays_are_bounded_and_timeouts_forget() {
        let mut t = Tracker::new();
        t.accept(0, true, 1);
        t.accept(1, true, 1);
        for _ in 0..MAX_REPLAYS {
            t.next_issue();
            t.stop();
            let r = t.recover(Some(0));
            assert_eq!(r.failed, 0);
        }
        t.next_issue();
        t.stop();
        let r = t.recover(Some(0));
        assert_eq!(r.failed, 0b11, "past the replay bound both fail");
        assert_eq!(t.busy(), 0);
        t.accept(5, false, 1);
        assert_eq!(t.next_issue().exclusive, Some(5));
        assert!(t.forget(5));
        assert!(!t.forget(5));
        assert_eq!(t.active(), 0);
    }
}
