//! Where the time goes: wall time per layer kind (`tastebud bench --profile`).
//!
//! Off by default, and then a scope costs one atomic load. When on, each scope syncs the device
//! before and after (wgpu queues work; flex runs eagerly) and records its *self* time: a scope
//! inside another (a Linear inside attention) is subtracted from its parent, so the kinds add up
//! to the time spent in scopes without counting anything twice. Work outside every scope
//! (reshapes, residual sums, the scheduler) is what the caller's stage time has left over.
//!
//! Only the calling thread's scopes are recorded (the backend's own worker threads run inside
//! them); profiling is for one pipeline on one thread at a time.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::Device;
use web_time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<BTreeMap<&'static str, Entry>> = Mutex::new(BTreeMap::new());

thread_local! {
    /// Time spent in the nested scopes of each open scope, innermost last.
    static OPEN: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// One layer kind's totals.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Entry {
    pub calls: u64,
    /// Self time in milliseconds (nested scopes excluded).
    pub ms: f64,
}

/// Turns recording on or off (the table is kept; see [`take`]).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Returns what was recorded since the last call, by kind, and starts a new table.
pub fn take() -> BTreeMap<&'static str, Entry> {
    match TABLE.lock() {
        Ok(mut table) => std::mem::take(&mut *table),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    }
}

/// Runs `f`, and when profiling is on, adds its self time to `kind`.
pub fn scope<T>(kind: &'static str, device: &Device, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    // A failed sync only makes the figure less exact; profiling never fails a run.
    let _ = device.sync();
    OPEN.with(|open| open.borrow_mut().push(0.0));
    let started = Instant::now();
    let out = f();
    let _ = device.sync();
    let total = started.elapsed().as_secs_f64() * 1e3;
    let nested = OPEN.with(|open| {
        let mut open = open.borrow_mut();
        let nested = open.pop().unwrap_or(0.0);
        if let Some(parent) = open.last_mut() {
            *parent += total;
        }
        nested
    });
    let mut table = match TABLE.lock() {
        Ok(table) => table,
        Err(poisoned) => poisoned.into_inner(),
    };
    let entry = table.entry(kind).or_default();
    entry.calls += 1;
    entry.ms += (total - nested).max(0.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_scopes_count_self_time_once() {
        let device = Device::flex();
        enable(true);
        take();
        let sleep = |ms| std::thread::sleep(std::time::Duration::from_millis(ms));
        scope("outer", &device, || {
            sleep(20);
            scope("inner", &device, || sleep(30));
        });
        enable(false);
        scope("ignored", &device, || ());
        let table = take();
        assert_eq!(table.len(), 2, "{table:?}");
        assert_eq!(table["inner"].calls, 1);
        assert!(table["inner"].ms >= 30.0, "{table:?}");
        assert!(
            table["outer"].ms >= 20.0 && table["outer"].ms < 30.0 + 20.0,
            "{table:?}"
        );
        assert!(take().is_empty());
    }
}
