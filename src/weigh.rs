//! What a value weighs in memory beyond its own size: the measure every buffer that is cut by
//! bytes as well as by count uses (the read-ahead's chunks, delivery's pages and calls, the
//! diff's batches). A trait's values may be 32 KB each: a buffer of a few thousand of them,
//! counted only, holds hundreds of MB.

/// What an item holds beyond its own size (its strings' bytes).
pub trait Weigh {
    fn weight(&self) -> usize;
}
