//! The thread-local pool of a dropped transaction's buffers, for the next one on the thread: a
//! short run then allocates almost nothing but its shared part.

use std::cell::RefCell;

use crate::flow::StepIndex;
use crate::state::StepRun;

use super::Transaction;
use super::index::{CompensateIndex, InvokeIndex};

/// Clears `v` and fills it with `len` copies of `value`, keeping its allocation.
pub(super) fn refill<T: Clone>(v: &mut Vec<T>, len: usize, value: T) {
    v.clear();
    v.resize(len, value);
}

/// A transaction's own buffers.
#[derive(Default)]
pub(super) struct Buffers {
    pub(super) steps: Vec<StepRun>,
    pub(super) dirty: Vec<bool>,
    pub(super) dirty_list: Vec<StepIndex>,
}

/// What a thread keeps. The indexes stay in the boxes a transaction holds them in, so that
/// reusing one allocates nothing.
#[derive(Default)]
#[expect(clippy::vec_box, reason = "the boxes are what a transaction holds")]
struct Pool {
    sets: Vec<Buffers>,
    invoke: Vec<Box<InvokeIndex>>,
    compensate: Vec<Box<CompensateIndex>>,
}

/// How many of each a thread keeps (a worker runs about one transaction at a time; more are
/// alive at once only when many wait).
const POOLED: usize = 8;
/// Flows with more steps than this do not pool their buffers (they would hold memory).
const MAX_STEPS: usize = 1024;

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

impl Buffers {
    /// A pooled set, or a new one.
    pub(super) fn take() -> Self {
        POOL.try_with(|pool| pool.borrow_mut().sets.pop())
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn give_back(self) {
        if self.steps.capacity() > MAX_STEPS {
            return;
        }
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.sets.len() < POOLED {
                pool.sets.push(self);
            }
        });
    }
}

/// The buffers of a dropped invoke index, if the thread has some.
pub(super) fn invoke_index() -> Option<Box<InvokeIndex>> {
    POOL.try_with(|pool| pool.borrow_mut().invoke.pop())
        .ok()
        .flatten()
}

/// The buffers of a dropped compensation index, if the thread has some.
pub(super) fn compensate_index() -> Option<Box<CompensateIndex>> {
    POOL.try_with(|pool| pool.borrow_mut().compensate.pop())
        .ok()
        .flatten()
}

/// Keeps a dropped invoke index's buffers for the next one built on this thread.
pub(super) fn give_invoke_index(index: Box<InvokeIndex>) {
    let _ = POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.invoke.len() < POOLED {
            pool.invoke.push(index);
        }
    });
}

/// Keeps a dropped compensation index's buffers for the next one built on this thread.
pub(super) fn give_compensate_index(index: Box<CompensateIndex>) {
    let _ = POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.compensate.len() < POOLED {
            pool.compensate.push(index);
        }
    });
}

impl Drop for Transaction {
    fn drop(&mut self) {
        let mut buffers = Buffers {
            steps: std::mem::take(&mut self.steps),
            dirty: std::mem::take(&mut self.dirty),
            dirty_list: std::mem::take(&mut self.dirty_list),
        };
        buffers.dirty_list.clear();
        if buffers.steps.capacity() <= MAX_STEPS {
            if let Some(index) = self.index.take() {
                give_invoke_index(index);
            }
            if let Some(index) = self.compensate_index.take() {
                give_compensate_index(index);
            }
        }
        buffers.give_back();
    }
}
