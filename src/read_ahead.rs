//! An iterator read ahead of its consumer on a thread of its own, a chunk at a time.
//!
//! A diff's merge takes its two sides from work that costs a core of its own: the state's rows
//! decoded from SQLite, the snapshot's sorted runs merged from temp files. Read on the diff's
//! thread, that work follows the merge on one core while the other waits; read ahead, it
//! overlaps it (docs/performance.md).

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::Scope;

use crate::weigh::Weigh;

/// Items per chunk handed over, and chunks read ahead of the consumer at most.
const CHUNK: usize = 4096;
const CHUNKS_AHEAD: usize = 4;
/// A chunk is handed over sooner once its items weigh this much: a trait's values may be 32 KB
/// each, and 4,096 of them would hold 128 MB a chunk outside the sort's budget (review finding).
const CHUNK_BYTES: usize = 1 << 20;

type Chunk<T> = anyhow::Result<Vec<T>>;

/// Runs `produce` on a thread of `scope`, handing what it sends to the returned iterator.
/// Once the iterator is dropped, the producer's next hand-over ends it.
pub fn spawn<'scope, T, F>(scope: &'scope Scope<'scope, '_>, produce: F) -> Behind<T>
where
    T: Weigh + Send + 'scope,
    F: FnOnce(&mut Ahead<T>) -> anyhow::Result<()> + Send + 'scope,
{
    let (chunks, received) = sync_channel(CHUNKS_AHEAD);
    scope.spawn(move || {
        let mut ahead = Ahead { chunk: Vec::with_capacity(CHUNK), weight: 0, chunks, gone: false };
        let produced = produce(&mut ahead);
        ahead.finish(produced);
    });
    Behind { chunk: Vec::new().into_iter(), chunks: received }
}

/// The producer's side.
pub struct Ahead<T> {
    chunk: Vec<T>,
    /// What the chunk's items weigh.
    weight: usize,
    chunks: SyncSender<Chunk<T>>,
    gone: bool,
}

impl<T: Weigh> Ahead<T> {
    /// Sends every item of `items` up to its first error, which it returns (unsent); stops
    /// early, with `Ok`, once the consumer is gone.
    pub fn send_all<E: Into<anyhow::Error>>(
        &mut self,
        items: impl Iterator<Item = Result<T, E>>,
    ) -> anyhow::Result<()> {
        for item in items {
            let item = item.map_err(Into::into)?;
            self.weight += item.weight();
            self.chunk.push(item);
            if (self.chunk.len() == CHUNK || self.weight >= CHUNK_BYTES) && !self.hand_over() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Hands over the chunk; false once the consumer is gone.
    fn hand_over(&mut self) -> bool {
        self.weight = 0;
        let full = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        self.gone = self.gone || self.chunks.send(Ok(full)).is_err();
        !self.gone
    }

    /// The items sent before an error reach the consumer before it.
    fn finish(mut self, produced: anyhow::Result<()>) {
        if self.gone || !self.hand_over() {
            return;
        }
        if let Err(e) = produced {
            let _ = self.chunks.send(Err(e));
        }
    }
}

/// The consumer's side: the items in the order sent, then the producer's error if it failed.
pub struct Behind<T> {
    chunk: std::vec::IntoIter<T>,
    chunks: Receiver<Chunk<T>>,
}

impl<T> Iterator for Behind<T> {
    type Item = anyhow::Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.chunk.next() {
                return Some(Ok(item));
            }
            match self.chunks.recv() {
                Ok(Ok(next)) => self.chunk = next.into_iter(),
                Ok(Err(e)) => return Some(Err(e)),
                Err(_) => return None, // the producer is done
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Weigh for usize {
        fn weight(&self) -> usize {
            0
        }
    }

    impl Weigh for u64 {
        fn weight(&self) -> usize {
            0
        }
    }

    /// An item holding `.0` bytes.
    struct Heavy(usize);

    impl Weigh for Heavy {
        fn weight(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn heavy_items_are_handed_over_in_chunks_of_about_a_megabyte() {
        // Review finding: 4,096 trait values of 32 KB made a 128 MB chunk, six of them in
        // flight, outside the sort's budget.
        let sizes: Vec<usize> = std::thread::scope(|scope| {
            let behind = spawn(scope, |ahead| ahead.send_all((0..100).map(|_| anyhow::Ok(Heavy(CHUNK_BYTES / 4)))));
            behind.chunks.iter().map(|chunk| chunk.unwrap().len()).collect()
        });
        assert_eq!(sizes, [&[4; 25][..], &[0]].concat());
    }

    #[test]
    fn items_arrive_in_order_across_chunks() {
        let n = CHUNK * 3 + 17;
        let got: Vec<usize> = std::thread::scope(|scope| {
            let behind = spawn(scope, move |ahead| ahead.send_all((0..n).map(anyhow::Ok)));
            behind.collect::<anyhow::Result<_>>().unwrap()
        });
        assert_eq!(got, (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn the_items_before_an_error_come_first_then_the_error_then_nothing() {
        let items = (0..CHUNK + 5).map(|i| if i == CHUNK + 2 { Err(anyhow::anyhow!("bad item {i}")) } else { Ok(i) });
        let got: Vec<anyhow::Result<usize>> =
            std::thread::scope(|scope| spawn(scope, move |a| a.send_all(items)).collect());
        assert_eq!(got.len(), CHUNK + 3);
        assert!(got[..CHUNK + 2].iter().enumerate().all(|(i, r)| *r.as_ref().unwrap() == i));
        assert_eq!(got[CHUNK + 2].as_ref().unwrap_err().to_string(), format!("bad item {}", CHUNK + 2));
    }

    #[test]
    fn a_consumer_that_stops_early_ends_an_endless_producer() {
        // The scope joins the producer: were it not ended by the dropped consumer, this test
        // would never return.
        let first: Vec<u64> = std::thread::scope(|scope| {
            let behind = spawn(scope, |ahead| ahead.send_all((0u64..).map(anyhow::Ok)));
            behind.take(10).collect::<anyhow::Result<_>>().unwrap()
        });
        assert_eq!(first, (0..10).collect::<Vec<_>>());
    }
}
