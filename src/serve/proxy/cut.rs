//! The drain deadline's cut of hyper's path: at the deadline (`serve::drain`), every request
//! still waiting for its upstream's answer is answered 503 with `Connection: close`, and shadow
//! copies still in flight stop.
//!
//! Invariants: `Cut::cut` sets a flag, then wakes every waiter; a waiter registers before it reads
//! the flag, so none misses the cut. `UntilCut` polls the request's own future in place (a
//! hand-written select), so the request's future is stored once in its task, not moved into a
//! second one; a cut request never reaches its answer.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use super::ProxyBody;

/// The drain deadline's signal to requests still waiting for their upstream (`serve_until_cut`,
/// shadow copies): a flag, and a wake-up for those waiting on it.
#[derive(Default)]
pub struct Cut {
    flag: std::sync::atomic::AtomicBool,
    pub(super) notify: tokio::sync::Notify,
}

impl Cut {
    /// Cuts every request waiting now or later.
    pub fn cut(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_cut(&self) -> bool {
        self.flag.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `cut` is called (at once if it was).
    pub async fn wait(&self) {
        let notified = self.notify.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if !self.is_cut() {
            notified.await;
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer, unless the drain deadline cuts it first: then 503 with
    /// `Connection: close`, as the HTTP/1.1 engine answers. A hand-written `select`, so the
    /// request's future is stored once (not moved into a second one) in every stream's task.
    pub struct UntilCut<'a, F> {
        pub(super) cut: &'a Cut,
        #[pin]
        pub(super) cut_notified: tokio::sync::futures::Notified<'a>,
        #[pin]
        pub(super) serving: F,
    }
}

impl<F: std::future::Future<Output = Response<ProxyBody>>> std::future::Future for UntilCut<'_, F> {
    type Output = Response<ProxyBody>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Response<ProxyBody>> {
        let this = self.project();
        // Registered before the flag is read: a cut in between still wakes this task.
        let woken = this.cut_notified.poll(cx).is_ready();
        if !woken && !this.cut.is_cut() {
            return this.serving.poll(cx);
        }
        let mut r = Response::new(ProxyBody::full(crate::serve::h1::SHUTTING_DOWN));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        std::task::Poll::Ready(r)
    }
}
