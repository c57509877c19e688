//! openraft's async runtime for tunekv: Tokio's, except for where randomness comes from.
//!
//! openraft draws its election timeouts and tick phase from `AsyncRuntime::thread_rng()`. In
//! production that is the OS's entropy, as with openraft's own Tokio runtime. The simulator
//! (tunekv-sim) runs every node on one thread and calls [`seed_thread`] first: from then on the
//! draws come from that seed, so a run is reproducible.

use openraft::{AsyncRuntime, OptionalSend};
use openraft_rt_tokio::TokioRuntime;
use rand010::rngs::StdRng;
use rand010::{Rng, SeedableRng};
use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

thread_local! {
    static SEEDED: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Makes openraft's randomness on this thread follow `seed` (None: back to the OS's entropy).
pub fn seed_thread(seed: Option<u64>) {
    SEEDED.with(|s| *s.borrow_mut() = seed.map(StdRng::seed_from_u64));
}

/// Tokio, with seedable randomness.
#[derive(Debug)]
pub struct TunekvRuntime(TokioRuntime);

impl AsyncRuntime for TunekvRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = StdRng;
    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SEEDED.with(|s| match s.borrow_mut().as_mut() {
            Some(seeded) => StdRng::seed_from_u64(seeded.next_u64()),
            None => StdRng::seed_from_u64(rand010::rng().next_u64()),
        })
    }

    fn new(threads: usize) -> Self {
        TunekvRuntime(TokioRuntime::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand010::RngExt;

    #[test]
    fn a_seeded_thread_draws_the_same_numbers_again() {
        let draw = || {
            (0..4)
                .map(|_| TunekvRuntime::thread_rng().random::<u64>())
                .collect::<Vec<_>>()
        };
        seed_thread(Some(7));
        let a = draw();
        seed_thread(Some(7));
        let b = draw();
        seed_thread(Some(8));
        let c = draw();
        seed_thread(None);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
