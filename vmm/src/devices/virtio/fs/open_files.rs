//! [`OpenFiles`]: how many host file descriptors the passthrough holds for
//! the guest, and the cap on them.
//!
//! The passthrough pins one `O_PATH` fd per inode the guest knows (from
//! the first LOOKUP-like reply naming it until the guest FORGETs it as
//! often as it was named) and one fd per open file or directory handle.
//! The guest decides when to forget, and a Linux guest keeps inodes cached
//! until its own memory runs short, so without a cap one guest could make
//! the VMM hold fds until the host's file table (`fs.file-max`) and the
//! kernel memory behind it ran out.
//!
//! The accounting mirrors the passthrough's own: an inode is counted while
//! its lookup count is above zero (the passthrough shares one fd between
//! all names of a host inode and hands out the same inode number, so one
//! entry here is one fd there), a handle from OPEN/OPENDIR/CREATE until
//! its RELEASE. Only inodes and handles the server itself handed out are
//! counted down: a FORGET or RELEASE naming anything else changes nothing,
//! so a guest cannot talk the count below what is really held.
//!
//! When the count is at the cap, whatever would pin one more fd fails with
//! ENFILE ("Too many open files in system"): the honest description for
//! the guest, and distinct from the EMFILE of the VMM's own RLIMIT_NOFILE,
//! which is set above the cap so the VMM's other fds never run short.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};

use fuse_backend_rs::api::filesystem::ROOT_ID;

/// The error the guest gets when the cap is reached.
pub fn cap_reached() -> io::Error {
    io::Error::from_raw_os_error(libc::ENFILE)
}

/// Live inodes and open handles of one file system, against a cap.
pub struct OpenFiles {
    cap: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Inode -> how many times it was named to the guest and not forgotten.
    lookups: HashMap<u64, u64>,
    handles: HashSet<u64>,
    /// Slots held by operations in flight (see [`Reservation`]).
    reserved: usize,
}

impl State {
    fn in_use(&self) -> usize {
        self.lookups.len() + self.handles.len() + self.reserved
    }
}

/// What [`OpenFiles::admit_entry`] decided about an inode named in a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Counted: the reply may name it.
    Admitted,
    /// A new inode with no room for it: the reply must not name it, and
    /// the passthrough's reference must be dropped again.
    Refused,
}

impl OpenFiles {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            state: Mutex::new(State::default()),
        }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Host fds held for the guest now (in-flight reservations included).
    pub fn in_use(&self) -> usize {
        self.lock().in_use()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (every update is one
        // map operation), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `slots` fds for an operation that is about to pin that many
    /// new ones (CREATE: an inode and a handle; MKDIR: an inode; OPEN: a
    /// handle), or fails with ENFILE when they do not fit. The slots go
    /// back when the reservation is dropped, unless it was turned into an
    /// inode or handle first.
    pub fn reserve(&self, slots: usize) -> io::Result<Reservation<'_>> {
        let mut state = self.lock();
        if state.in_use().saturating_add(slots) > self.cap {
            return Err(cap_reached());
        }
        state.reserved += slots;
        Ok(Reservation { files: self, slots })
    }

    /// Counts one more naming of `inode` in a reply (LOOKUP, READDIRPLUS,
    /// LINK) that reserved nothing: a known inode always fits (the
    /// passthrough reuses its fd), a new one only below the cap.
    pub fn admit_entry(&self, inode: u64) -> Admission {
        if untracked(inode) {
            return Admission::Admitted;
        }
        let mut state = self.lock();
        let full = state.in_use() >= self.cap;
        match state.lookups.get_mut(&inode) {
            Some(count) => *count = count.saturating_add(1),
            None if full => return Admission::Refused,
            None => {
                state.lookups.insert(inode, 1);
            }
        }
        Admission::Admitted
    }

    /// The guest dropped `count` of its references to `inode`.
    pub fn forget(&self, inode: u64, count: u64) {
        let mut state = self.lock();
        if let Some(left) = state.lookups.get_mut(&inode) {
            *left = left.saturating_sub(count);
            if *left == 0 {
                state.lookups.remove(&inode);
            }
        }
    }

    /// The guest released `handle`.
    pub fn release(&self, handle: u64) {
        self.lock().handles.remove(&handle);
    }

    /// Everything was dropped at once (FUSE_DESTROY, device reset).
    pub fn clear(&self) {
        let mut state = self.lock();
        state.lookups.clear();
        state.handles.clear();
    }
}

/// The root is held for the file system's whole life and never forgotten;
/// inode 0 names no inode (a negative entry).
fn untracked(inode: u64) -> bool {
    inode == 0 || inode == ROOT_ID
}

/// Slots held by one operation in flight; see [`OpenFiles::reserve`].
pub struct Reservation<'a> {
    files: &'a OpenFiles,
    slots: usize,
}

impl Reservation<'_> {
    /// The operation named `inode` in its reply: one reserved slot becomes
    /// that inode's, or is given back if the inode was known already (a
    /// CREATE of an existing file, for one).
    pub fn entry(&mut self, inode: u64) {
        let mut state = self.files.lock();
        if self.slots > 0 {
            self.slots -= 1;
            state.reserved -= 1;
        }
        if !untracked(inode) {
            let count = state.lookups.entry(inode).or_insert(0);
            *count = count.saturating_add(1);
        }
    }

    /// The operation opened `handle`: one reserved slot becomes its.
    pub fn handle(&mut self, handle: u64) {
        let mut state = self.files.lock();
        if self.slots > 0 {
            self.slots -= 1;
            state.reserved -= 1;
        }
        state.handles.insert(handle);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.slots > 0 {
            self.files.lock().reserved -= self.slots;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_inodes_fit_at_the_cap_new_ones_do_not() {
        let files = OpenFiles::new(2);
        assert_eq!(files.admit_entry(10), Admission::Admitted);
        assert_eq!(files.admit_entry(11), Admission::Admitted);
        assert_eq!(files.in_use(), 2);
        assert_eq!(files.admit_entry(12), Admission::Refused);
        // Naming a held inode again costs nothing.
        assert_eq!(files.admit_entry(10), Admission::Admitted);
        assert_eq!(files.in_use(), 2);
        // Inode 10 was named twice: one forget leaves it held.
        files.forget(10, 1);
        assert_eq!(files.admit_entry(12), Admission::Refused);
        files.forget(10, 1);
        assert_eq!(files.in_use(), 1);
        assert_eq!(files.admit_entry(12), Admission::Admitted);
    }

    #[test]
    fn the_guest_cannot_forget_or_release_what_it_was_never_given() {
        let files = OpenFiles::new(3);
        files.admit_entry(10);
        let mut open = files.reserve(1).expect("room");
        open.handle(7);
        drop(open);
        files.forget(999, u64::MAX);
        files.release(8);
        assert_eq!(files.in_use(), 2);
        // Over-forgetting a real inode only removes that inode.
        files.forget(10, u64::MAX);
        assert_eq!(files.in_use(), 1);
        files.release(7);
        files.release(7);
        assert_eq!(files.in_use(), 0);
    }

    #[test]
    fn the_root_and_negative_entries_are_not_counted() {
        let files = OpenFiles::new(1);
        for _ in 0..3 {
            assert_eq!(files.admit_entry(ROOT_ID), Admission::Admitted);
            assert_eq!(files.admit_entry(0), Admission::Admitted);
        }
        assert_eq!(files.in_use(), 0);
        files.forget(ROOT_ID, 1);
        assert_eq!(files.in_use(), 0);
    }

    #[test]
    fn reservations_hold_room_until_used_or_dropped() {
        let files = OpenFiles::new(3);
        let mut create = files.reserve(2).expect("room for inode and handle");
        assert_eq!(files.in_use(), 2);
        assert_eq!(
            files.reserve(2).err().map(|e| e.raw_os_error()),
            Some(Some(libc::ENFILE))
        );
        create.entry(20);
        create.handle(5);
        drop(create);
        assert_eq!(files.in_use(), 2);
        // A failed operation gives its slots back.
        let failed = files.reserve(1).expect("room");
        assert_eq!(files.in_use(), 3);
        drop(failed);
        assert_eq!(files.in_use(), 2);
        // A CREATE that found an existing inode gives its inode slot back.
        let mut again = files.reserve(1).expect("room");
        again.entry(20);
        drop(again);
        assert_eq!(files.in_use(), 2);
        files.forget(20, 1);
        assert_eq!(files.in_use(), 2, "named twice, forgotten once");
        files.forget(20, 1);
        files.release(5);
        assert_eq!(files.in_use(), 0);
    }

    #[test]
    fn clear_drops_everything() {
        let files = OpenFiles::new(4);
        files.admit_entry(10);
        files.reserve(1).expect("room").handle(3);
        files.clear();
        assert_eq!(files.in_use(), 0);
        assert_eq!(files.admit_entry(11), Admission::Admitted);
    }
}
