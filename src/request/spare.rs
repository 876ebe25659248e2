//! Spare requests: a thread's [`Request`]s kept empty between streams, so
//! reading the next request reuses their buffers instead of allocating
//! five (the three pseudo-header strings, the header buffer and its index)
//! and freeing them again at the stream's end. On the native module's
//! rate-limited request those ten allocator calls were the largest single
//! item left (~1.9k instructions of ~8k; docs/performance.md, "Native
//! module cost").
//!
//! What makes it safe for a security filter: a request is emptied field by
//! field before it is kept ([`Request::emptied`] destructures every field,
//! so a field added later cannot be forgotten: the code stops compiling),
//! and it is kept only when its buffers are small ([`KEEP_BYTES`]): one
//! request with a huge header does not pin that memory for the thread's
//! life. Each thread has its own list (a stream never leaves the worker
//! thread that created it), at most [`KEEP`] long.

use super::Request;
use std::cell::RefCell;

/// Most spare requests a thread keeps. The list only grows to the most
/// streams that were open at once (each stream gives back what it took),
/// so a thread holds at most `KEEP * KEEP_BYTES` (128 KiB), typically a
/// few KiB; more streams at once than this allocate as before.
pub const KEEP: usize = 16;
/// Largest request (the capacity of its buffers, in bytes) kept for reuse.
pub const KEEP_BYTES: usize = 8 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<Request>> = const { RefCell::new(Vec::new()) };
}

/// An empty request: a spare one when the thread has one.
pub fn take() -> Request {
    SPARE
        .with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop()))
        .unwrap_or_default()
}

/// Keeps `req`, emptied, for a later [`take`] (or drops it: too large, or
/// the list is full).
pub fn give(req: Request) {
    let Some(req) = req.emptied(KEEP_BYTES) else {
        return;
    };
    SPARE.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if s.len() < KEEP {
                s.push(req);
            }
        }
    });
}

/// How many spare requests this thread holds (for tests).
#[cfg(test)]
pub fn held() -> usize {
    SPARE.with(|s| s.borrow().len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HeaderVisitor;

    fn filled() -> Request {
        let mut r = Request::default();
        r.pair(b":method", b"POST");
        r.pair(b":path", b"/user/a?token=secret");
        r.pair(b":authority", b"a.example");
        r.pair(b"authorization", b"Bearer user-a");
        r.pair(b"x-api-key", b"key-a");
        r.peer_ip = "10.0.0.1".into();
        r.norm_path = Some("/user/a".into());
        r
    }

    /// Everything a request shows, for comparisons with a fresh one.
    fn shown(r: &Request) -> String {
        format!(
            "{:?} {:?} {:?} {:?} {:?} {:?}",
            r.method, r.path, r.authority, r.headers, r.peer_ip, r.norm_path
        )
    }

    #[test]
    fn a_spare_request_comes_back_empty_with_its_buffers() {
        while held() > 0 {
            take();
        }
        let r = filled();
        let path_room = r.path.capacity();
        give(r);
        assert_eq!(held(), 1);
        let r = take();
        assert_eq!(held(), 0);
        assert_eq!(shown(&r), shown(&Request::default()));
        assert!(r.headers.is_empty() && r.header("authorization").is_none());
        assert!(
            r.path.capacity() >= path_room && path_room > 0,
            "buffers kept"
        );
        // Nothing spare: a fresh one.
        assert_eq!(shown(&take()), shown(&Request::default()));
    }

    /// The other user: the next request read into a spare one carries
    /// only its own fields, never the previous request's.
    #[test]
    fn the_next_request_sees_none_of_the_previous_one() {
        give(filled());
        let mut b = take();
        b.pair(b":method", b"GET");
        b.pair(b":path", b"/user/b");
        b.pair(b"accept", b"*/*");
        assert_eq!((b.method.as_str(), b.path.as_str()), ("GET", "/user/b"));
        assert_eq!(b.authority, "");
        assert_eq!(b.header("authorization"), None);
        assert_eq!(b.header("x-api-key"), None);
        assert_eq!(b.headers.len(), 1);
        assert_eq!((b.peer_ip.as_str(), b.norm_path.as_deref()), ("", None));
        assert_eq!(b.match_path(), "/user/b");
    }

    #[test]
    fn large_requests_are_not_kept_and_the_list_is_bounded() {
        while held() > 0 {
            take();
        }
        let mut big = filled();
        big.pair(b"cookie", &vec![b'c'; KEEP_BYTES]);
        give(big);
        assert_eq!(held(), 0, "a request past KEEP_BYTES is dropped");
        for _ in 0..KEEP + 5 {
            give(filled());
        }
        assert_eq!(held(), KEEP);
        while held() > 0 {
            take();
        }
    }
}
