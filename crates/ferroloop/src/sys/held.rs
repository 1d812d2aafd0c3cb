//! [`Held`]: a value (a socket, a listener) that is dropped with its
//! holder only when owned; a borrowed descriptor's owner closes it.

use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};

/// A descriptor's wrapper that is owned (dropped, so closed, with the
/// `Held`) or borrowed (never dropped: its owner closes it). Transports and
/// listeners hold their socket in one, so that a borrowed descriptor
/// (`StreamSocket::borrow_raw`, `Listener::borrow_raw`) is never closed on
/// any path. Reading through it costs nothing over a plain field.
pub(crate) struct Held<T> {
    value: ManuallyDrop<T>,
    owned: bool,
}

impl<T> Held<T> {
    /// Hold `value`; `owned` false: never drop it.
    pub(crate) fn new(value: T, owned: bool) -> Held<T> {
        Held { value: ManuallyDrop::new(value), owned }
    }

    /// Whether dropping this drops the value (closes the descriptor).
    pub(crate) fn is_owned(&self) -> bool {
        self.owned
    }
}

impl<T> Deref for Held<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for Held<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T> Drop for Held<T> {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: `value` is dropped exactly once, here, and never used
            // again: the `Held` itself is being dropped.
            unsafe { ManuallyDrop::drop(&mut self.value) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn an_owned_value_is_dropped_and_a_borrowed_one_is_not() {
        let v = Rc::new(());
        drop(Held::new(v.clone(), true));
        assert_eq!(Rc::strong_count(&v), 1);
        drop(Held::new(v.clone(), false));
        assert_eq!(Rc::strong_count(&v), 2, "a borrowed value is never dropped");
    }

    #[test]
    fn a_borrowed_descriptor_stays_open() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&a);
        let held = Held::new(a, false);
        assert_eq!(std::os::fd::AsRawFd::as_raw_fd(&*held), fd);
        drop(held);
        // The number still names an open descriptor.
        assert!(crate::sys::dup_cloexec(fd).is_ok());
    }
}
