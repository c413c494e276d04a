//! Bounded waits for a condition: poll, and on timeout say what was awaited,
//! for how long, and what was last observed.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::anyhow;

/// One observation of a polled condition.
#[derive(Debug)]
pub enum Check<T> {
    /// The condition holds; the wait returns this value.
    Ready(T),
    /// Not yet; the text describes what was observed (shown on timeout).
    Pending(String),
    /// Waiting further is pointless (e.g. the process exited); fail now.
    Fatal(anyhow::Error),
}

impl<T> Check<T> {
    /// `Check::Pending` with a description of the observation.
    pub fn pending(observation: impl Display) -> Check<T> {
        Check::Pending(observation.to_string())
    }

    /// `Ready(v)` for `Some(v)`, else `Pending(observation)`:
    /// `Check::ready_or(done.then_some(()), format!("state {s:?}"))`.
    pub fn ready_or(value: Option<T>, observation: impl Display) -> Check<T> {
        match value {
            Some(value) => Check::Ready(value),
            None => Check::pending(observation),
        }
    }
}

/// What a polling closure may return: `bool`, `Option<T>`, [`Check<T>`], or
/// a `Result` of any of these. An `Err` counts as "not yet" and its text
/// becomes the last observation (connection refused while a node starts is
/// normal); return [`Check::Fatal`] to stop waiting.
pub trait IntoCheck {
    /// The value the wait returns once the condition holds.
    type Output;
    /// This observation as a [`Check`].
    fn into_check(self) -> Check<Self::Output>;
}

impl IntoCheck for bool {
    type Output = ();
    fn into_check(self) -> Check<()> {
        if self {
            Check::Ready(())
        } else {
            Check::Pending("condition was false".to_owned())
        }
    }
}

impl<T> IntoCheck for Option<T> {
    type Output = T;
    fn into_check(self) -> Check<T> {
        match self {
            Some(value) => Check::Ready(value),
            None => Check::Pending("no value yet (None)".to_owned()),
        }
    }
}

impl<T> IntoCheck for Check<T> {
    type Output = T;
    fn into_check(self) -> Check<T> {
        self
    }
}

impl<R: IntoCheck, E: Display> IntoCheck for Result<R, E> {
    type Output = R::Output;
    fn into_check(self) -> Check<R::Output> {
        match self {
            Ok(inner) => inner.into_check(),
            Err(e) => Check::Pending(format!("error: {e:#}")),
        }
    }
}

/// Polls `f` every `poll` until it reports ready or `deadline` has passed
/// (it is always called at least once, and once more at the deadline).
///
/// The error reads `timed out after 5.0s waiting for <what>; last
/// observation: <...>`. Blocks the calling thread: from async code use
/// [`wait_until_async`].
pub fn wait_until<C: IntoCheck>(
    what: &str,
    deadline: Duration,
    poll: Duration,
    mut f: impl FnMut() -> C,
) -> anyhow::Result<C::Output> {
    let start = Instant::now();
    let mut polls = 0u64;
    loop {
        polls += 1;
        let last = match f().into_check() {
            Check::Ready(value) => return Ok(value),
            Check::Fatal(e) => return Err(e.context(format!("while waiting for {what}"))),
            Check::Pending(observation) => observation,
        };
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            return Err(timed_out(what, elapsed, polls, &last));
        }
        std::thread::sleep(poll.min(deadline - elapsed));
    }
}

/// Async [`wait_until`]: polls the future `f` returns every `poll`. A poll
/// that has not finished by the deadline is abandoned and reported.
pub async fn wait_until_async<C, Fut>(
    what: &str,
    deadline: Duration,
    poll: Duration,
    mut f: impl FnMut() -> Fut,
) -> anyhow::Result<C::Output>
where
    C: IntoCheck,
    Fut: Future<Output = C>,
{
    let start = Instant::now();
    let mut polls = 0u64;
    loop {
        polls += 1;
        let remaining = deadline.saturating_sub(start.elapsed());
        // A poll may take at least a moment even at the deadline.
        let budget = remaining.max(Duration::from_millis(50));
        let last = match tokio::time::timeout(budget, f()).await {
            Ok(check) => match check.into_check() {
                Check::Ready(value) => return Ok(value),
                Check::Fatal(e) => return Err(e.context(format!("while waiting for {what}"))),
                Check::Pending(observation) => observation,
            },
            Err(_) => format!("the check itself did not finish within {budget:?}"),
        };
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            return Err(timed_out(what, elapsed, polls, &last));
        }
        tokio::time::sleep(poll.min(deadline - elapsed)).await;
    }
}

fn timed_out(what: &str, elapsed: Duration, polls: u64, last: &str) -> anyhow::Error {
    anyhow!(
        "timed out after {:.1}s waiting for {what}; last observation: {last} ({polls} polls)",
        elapsed.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: the value is returned as soon as the closure is ready.
    #[test]
    fn returns_value() {
        let mut n = 0;
        let got = wait_until(
            "n to reach 3",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                n += 1;
                (n >= 3).then_some(n)
            },
        )
        .unwrap();
        assert_eq!(got, 3);
    }

    // Property: a timeout names what was awaited and the last observation.
    #[test]
    fn timeout_message() {
        let err = wait_until(
            "the moon",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || -> anyhow::Result<Check<()>> { Ok(Check::pending("still cheese")) },
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("timed out after "), "{err}");
        assert!(
            err.contains("waiting for the moon; last observation: still cheese"),
            "{err}"
        );
    }

    // Property: errors are observations, Fatal stops the wait at once.
    #[test]
    fn errors_and_fatal() {
        let err = wait_until(
            "x",
            Duration::from_millis(20),
            Duration::from_millis(5),
            || Err::<bool, _>(std::io::Error::other("refused")),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("last observation: error: refused"), "{err}");
        let start = Instant::now();
        let err = wait_until(
            "y",
            Duration::from_secs(60),
            Duration::from_millis(5),
            || Check::<()>::Fatal(anyhow!("process exited")),
        )
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(60));
        assert!(format!("{err:#}").contains("process exited"), "{err:#}");
    }

    // Property: the async variant returns values and reports a hung check.
    #[tokio::test]
    async fn async_variant() {
        let got = wait_until_async("ready", Duration::from_secs(5), Duration::ZERO, || async {
            Some(5)
        })
        .await
        .unwrap();
        assert_eq!(got, 5);
        let err = wait_until_async("hung", Duration::ZERO, Duration::ZERO, || {
            std::future::pending::<bool>()
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("did not finish"), "{err}");
    }
}
