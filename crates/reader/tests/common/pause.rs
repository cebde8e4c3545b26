//! A `before_store` hook that, once armed, holds the next fill between its
//! query and its store until the test lets it go: the window in which a
//! test commits a write that must void the fill.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cm_reader::BeforeStoreHook;
use tokio::sync::Notify;

/// The test's side of the hook: arm it, wait until a fill reached it, let
/// the fill go on.
#[derive(Clone, Default)]
pub struct PauseBeforeStore {
    armed: Arc<AtomicBool>,
    reached: Arc<Notify>,
    go: Arc<Notify>,
}

impl PauseBeforeStore {
    /// The pause and the hook to put in `ReaderOptions::before_store`.
    pub fn new() -> (PauseBeforeStore, BeforeStoreHook) {
        let pause = PauseBeforeStore::default();
        let inner = pause.clone();
        let hook: BeforeStoreHook = Arc::new(move || {
            let pause = inner.clone();
            Box::pin(async move {
                if pause.armed.swap(false, Ordering::SeqCst) {
                    pause.reached.notify_one();
                    pause.go.notified().await;
                }
            })
        });
        (pause, hook)
    }

    /// Holds the next fill that reaches the hook (that one only).
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Returns once the armed fill is held before its store.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the held fill go on to its store.
    pub fn release(&self) {
        self.go.notify_one();
    }
}
