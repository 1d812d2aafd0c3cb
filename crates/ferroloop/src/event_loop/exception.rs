//! Error and warning reports: [`ExceptionContext`], the exception and warning
//! handlers, and `EventLoop::guarded`, which turns a callback's panic into
//! a report.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use super::EventLoop;
use crate::error::Error;

/// Signature of a warning handler (see [`EventLoop::set_warning_handler`]).
pub type WarningHandler = Rc<dyn Fn(&str)>;

/// What an exception handler receives.
#[derive(Debug)]
pub struct ExceptionContext {
    /// asyncio's `message` key: what failed.
    pub message: String,
    /// asyncio's `exception` key, when an error is attached.
    pub error: Option<Error>,
}

/// Signature of an exception handler.
pub type ExceptionHandler = Rc<dyn Fn(&EventLoop, &ExceptionContext)>;

impl EventLoop {
    /// Install (or with `None`, remove) the exception handler.
    pub fn set_exception_handler(&self, handler: Option<ExceptionHandler>) {
        *self.inner.exception_handler.borrow_mut() = handler;
    }

    /// The installed exception handler, if any.
    pub fn get_exception_handler(&self) -> Option<ExceptionHandler> {
        self.inner.exception_handler.borrow().clone()
    }

    /// Report an error to the exception handler (or print it to stderr when
    /// none is installed, as asyncio's default handler logs it).
    pub fn call_exception_handler(&self, ctx: ExceptionContext) {
        let handler = self.inner.exception_handler.borrow().clone();
        match handler {
            Some(h) => {
                let r = catch_unwind(AssertUnwindSafe(|| h(self, &ctx)));
                if let Err(p) = r {
                    eprintln!("ferroloop: unhandled error in exception handler: {}", panic_message(&*p));
                    Self::default_exception_handler(&ctx);
                }
            }
            None => Self::default_exception_handler(&ctx),
        }
    }

    /// The default handler: print the message and error to stderr.
    pub fn default_exception_handler(ctx: &ExceptionContext) {
        eprintln!("ferroloop: {}", report_line(ctx));
    }

    /// Install (or with `None`, remove) the handler of warnings: conditions
    /// asyncio logs at WARNING level without an exception (for example
    /// repeated writes to a lost connection). The default prints to stderr.
    pub fn set_warning_handler(&self, handler: Option<WarningHandler>) {
        *self.inner.warning_handler.borrow_mut() = handler;
    }

    /// Report a warning to the warning handler.
    pub fn warn(&self, message: &str) {
        let handler = self.inner.warning_handler.borrow().clone();
        match handler {
            Some(h) => {
                if catch_unwind(AssertUnwindSafe(|| h(message))).is_err() {
                    eprintln!("ferroloop: {message}");
                }
            }
            None => eprintln!("ferroloop: {message}"),
        }
    }

    /// Run `f`, turning a panic into a report to the exception handler.
    /// Returns `None` if `f` panicked.
    pub(crate) fn guarded<R>(&self, message: &str, f: impl FnOnce() -> R) -> Option<R> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => Some(r),
            Err(p) => {
                self.call_exception_handler(ExceptionContext {
                    message: message.to_string(),
                    error: Some(Error::Panic(panic_message(&*p))),
                });
                None
            }
        }
    }
}

/// The message of a panic payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// What the default handler prints after `ferroloop: `: the message, then the
/// error if one is attached.
fn report_line(ctx: &ExceptionContext) -> String {
    match &ctx.error {
        Some(e) => format!("{}: {}", ctx.message, e),
        None => ctx.message.clone(),
    }
}

/// What [`recording_loop`]'s handler saw: (message, error text) per report.
#[cfg(test)]
pub(crate) type Seen = Rc<std::cell::RefCell<Vec<(String, Option<String>)>>>;

/// A loop whose exception handler records what it receives (for the unit
/// tests across the crate).
#[cfg(test)]
pub(crate) fn recording_loop() -> (EventLoop, Seen) {
    let lp = EventLoop::new().unwrap();
    let seen = Seen::default();
    let s = seen.clone();
    lp.set_exception_handler(Some(Rc::new(move |_: &EventLoop, ctx: &ExceptionContext| {
        s.borrow_mut().push((ctx.message.clone(), ctx.error.as_ref().map(|e| e.to_string())));
    })));
    (lp, seen)
}

#[cfg(test)]
mod tests {
    use std::any::Any;
    use std::cell::RefCell;

    use super::*;

    #[test]
    fn panic_message_reads_str_and_string_payloads() {
        let s: Box<dyn Any + Send> = Box::new("static text");
        assert_eq!(panic_message(&*s), "static text");
        let s: Box<dyn Any + Send> = Box::new(String::from("formatted 42"));
        assert_eq!(panic_message(&*s), "formatted 42");
        let s: Box<dyn Any + Send> = Box::new(7u8);
        assert_eq!(panic_message(&*s), "non-string panic payload");
    }

    #[test]
    fn the_default_report_is_the_message_then_the_error() {
        let bare = ExceptionContext { message: "Fatal read error".into(), error: None };
        assert_eq!(report_line(&bare), "Fatal read error");
        let with = ExceptionContext {
            message: "Exception in callback".into(),
            error: Some(Error::Panic("boom".into())),
        };
        assert_eq!(report_line(&with), "Exception in callback: panic: boom");
    }

    #[test]
    fn guarded_passes_results_through_and_reports_panics_with_the_given_message() {
        let (lp, seen) = recording_loop();
        assert_eq!(lp.guarded("Exception in callback", || 5), Some(5));
        assert!(seen.borrow().is_empty());
        let r: Option<i32> = lp.guarded("Exception in reader callback", || panic!("bad read"));
        assert_eq!(r, None);
        assert_eq!(
            *seen.borrow(),
            vec![("Exception in reader callback".to_string(), Some("panic: bad read".to_string()))]
        );
        let r: Option<()> = lp.guarded("Exception in writer callback", || std::panic::panic_any(3u32));
        assert_eq!(r, None);
        assert_eq!(seen.borrow()[1].1.as_deref(), Some("panic: non-string panic payload"));
    }

    #[test]
    fn a_panicking_exception_handler_does_not_unwind_into_the_loop() {
        let lp = EventLoop::new().unwrap();
        let calls = Rc::new(RefCell::new(0));
        let c = calls.clone();
        lp.set_exception_handler(Some(Rc::new(move |_: &EventLoop, _: &ExceptionContext| {
            *c.borrow_mut() += 1;
            panic!("handler failed");
        })));
        lp.call_exception_handler(ExceptionContext { message: "first".into(), error: None });
        assert_eq!(lp.guarded("second", || panic!("callback failed")), None::<()>);
        assert_eq!(*calls.borrow(), 2);
        assert!(lp.get_exception_handler().is_some());
        lp.set_exception_handler(None);
        assert!(lp.get_exception_handler().is_none());
    }

    #[test]
    fn warnings_go_to_the_warning_handler_and_its_panics_stay_there() {
        let lp = EventLoop::new().unwrap();
        let seen = Rc::new(RefCell::new(Vec::<String>::new()));
        let s = seen.clone();
        lp.set_warning_handler(Some(Rc::new(move |m: &str| {
            s.borrow_mut().push(m.to_string());
            if m == "explode" {
                panic!("warning handler failed");
            }
        })));
        lp.warn("socket.send() raised exception.");
        lp.warn("explode");
        lp.warn("after");
        assert_eq!(*seen.borrow(), vec!["socket.send() raised exception.", "explode", "after"]);
    }
}
