//! Recent requests, for the status page: a small ring buffer in memory.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

/// How many requests are remembered.
pub const RECENT: usize = 30;

/// One answered request.
#[derive(Debug, Clone)]
pub struct Activity {
    /// Unix seconds.
    pub at: u64,
    pub method: http::Method,
    /// The request target, cut to 120 characters.
    pub target: String,
    pub status: u16,
    /// The `X-Cache` label (`HIT`, `MISS`, `SKIP`; empty when the answer has none).
    pub cache: Cow<'static, str>,
    pub bytes: Option<u64>,
    pub ms: f64,
}

/// The last [`RECENT`] requests.
#[derive(Debug, Default)]
pub struct RecentActivity {
    items: Mutex<VecDeque<Activity>>,
}

impl RecentActivity {
    pub fn push(&self, item: Activity) {
        let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        if items.len() == RECENT {
            items.pop_front();
        }
        items.push_back(item);
    }

    /// Newest first.
    pub fn snapshot(&self) -> Vec<Activity> {
        self.items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .cloned()
            .collect()
    }
}
