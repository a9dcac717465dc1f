//! An iterator read ahead of its consumer on a thread of its own, a chunk at a time.
//!
//! A diff's merge takes its two sides from work that costs a core of its own: the state's rows
//! decoded from SQLite, the snapshot's sorted runs merged from temp files. Read on the diff's
//! thread, that work follows the merge on one core while the other waits; read ahead, it
//! overlaps it (docs/performance.md).

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::Scope;

/// Items per chunk handed over, and chunks read ahead of the consumer at most.
const CHUNK: usize = 4096;
const CHUNKS_AHEAD: usize = 4;

type Chunk<T> = anyhow::Result<Vec<T>>;

/// Runs `produce` on a thread of `scope`, handing what it sends to the returned iterator.
/// Once the iterator is dropped, the producer's next hand-over ends it.
pub fn spawn<'scope, T, F>(scope: &'scope Scope<'scope, '_>, produce: F) -> Behind<T>
where
    T: Send + 'scope,
    F: FnOnce(&mut Ahead<T>) -> anyhow::Result<()> + Send + 'scope,
{
    let (chunks, received) = sync_channel(CHUNKS_AHEAD);
    scope.spawn(move || {
        let mut ahead = Ahead { chunk: Vec::with_capacity(CHUNK), chunks, gone: false };
        let produced = produce(&mut ahead);
        ahead.finish(produced);
    });
    Behind { chunk: Vec::new().into_iter(), chunks: received }
}

/// The producer's side.
pub struct Ahead<T> {
    chunk: Vec<T>,
    chunks: SyncSender<Chunk<T>>,
    gone: bool,
}

impl<T> Ahead<T> {
    /// Sends every item of `items` up to its first error, which it returns (unsent); stops
    /// early, with `Ok`, once the consumer is gone.
    pub fn send_all<E: Into<anyhow::Error>>(
        &mut self,
        items: impl Iterator<Item = Result<T, E>>,
    ) -> anyhow::Result<()> {
        for item in items {
            self.chunk.push(item.map_err(Into::into)?);
            if self.chunk.len() == CHUNK && !self.hand_over() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Hands over the chunk; false once the consumer is gone.
    fn hand_over(&mut self) -> bool {
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
