//! Size limits on what clients stream in: a stream that fails once more
//! than its budget has passed, and says afterwards whether that was why, so
//! the caller can cancel the upload (nothing half-written stays) and answer
//! `413` naming the limit.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::ByteStream;

/// Whether a [`limited`] stream went past its budget.
#[derive(Clone, Default, Debug)]
pub struct Overflow(Arc<AtomicBool>);

impl Overflow {
    pub fn happened(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// `inner`, failing with an error once more than `budget` bytes came.
pub fn limited<S>(inner: S, budget: u64) -> (ByteStream, Overflow)
where
    S: Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
{
    let over = Overflow::default();
    let flag = over.clone();
    let mut seen = 0u64;
    let s = inner.map(move |r| {
        let b = r?;
        seen += b.len() as u64;
        if seen > budget {
            flag.0.store(true, Ordering::Relaxed);
            return Err(io::Error::other(format!(
                "more than the {budget} bytes allowed"
            )));
        }
        Ok(b)
    });
    (Box::pin(s), over)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stops_past_the_budget() {
        let chunks = futures_util::stream::iter(
            (0..4).map(|_| Ok::<_, io::Error>(Bytes::from(vec![0u8; 10]))),
        );
        let (mut s, over) = limited(chunks, 25);
        let mut got = 0;
        let mut failed = false;
        while let Some(r) = s.next().await {
            match r {
                Ok(b) => got += b.len(),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed && over.happened());
        assert_eq!(got, 20);
        let ok = futures_util::stream::iter([Ok::<_, io::Error>(Bytes::from_static(b"abc"))]);
        let (mut s, over) = limited(ok, 3);
        assert!(s.next().await.is_some_and(|r| r.is_ok()));
        assert!(!over.happened());
    }
}
