//! Which pool a key goes to, and how a call over many keys is split between
//! the pools and run on both at once.

use std::future::Future;

use super::pool::Pool;
use super::MemcachedStore;
use crate::error::StoreError;
use crate::key::{is_result_key, validate_key};

/// An item of a call over many keys: a key, or a key with its argument.
pub(super) trait Keyed: Copy {
    /// The key the item is routed by.
    fn key(&self) -> &str;
}

impl Keyed for &str {
    fn key(&self) -> &str {
        self
    }
}

impl Keyed for (&str, u64) {
    fn key(&self) -> &str {
        self.0
    }
}

/// One pool's share of a split call: the positions of its items in the
/// caller's slice, and the items.
struct Share<I> {
    positions: Vec<usize>,
    items: Vec<I>,
}

impl<I> Share<I> {
    fn new() -> Share<I> {
        Share {
            positions: Vec::new(),
            items: Vec::new(),
        }
    }
}

impl MemcachedStore {
    /// The pool that owns `key`, once the key is valid and the pool may
    /// take it (a metadata server is used only after it passed the
    /// eviction check).
    pub(super) async fn pool_for(&self, key: &str) -> Result<&Pool, StoreError> {
        validate_key(key)?;
        let pool = self.pool_of(key);
        pool.admit([key]).await?;
        Ok(pool)
    }

    /// The pool that owns `key`: the result pool for a result key when
    /// there is one, else the metadata pool. Checks nothing.
    pub(super) fn pool_of(&self, key: &str) -> &Pool {
        match &self.results {
            Some(results) if is_result_key(key) => results,
            _ => &self.metadata,
        }
    }

    /// Runs `call` on each pool with that pool's items, both pools at once
    /// (one round trip of wall time), and returns the answers in the order
    /// of `items`. `call` must answer one value per item, in order. Every
    /// key is checked before anything is sent.
    pub(super) async fn split<'s, I, T, F, Fut>(
        &'s self,
        items: &[I],
        call: F,
    ) -> Result<Vec<T>, StoreError>
    where
        I: Keyed,
        F: Fn(&'s Pool, Vec<I>) -> Fut,
        Fut: Future<Output = Result<Vec<T>, StoreError>>,
    {
        for item in items {
            validate_key(item.key())?;
        }
        let Some(results) = &self.results else {
            self.metadata.admit(items.iter().map(Keyed::key)).await?;
            return call(&self.metadata, items.to_vec()).await;
        };
        let (mut metadata_share, mut result_share) = (Share::new(), Share::new());
        for (position, &item) in items.iter().enumerate() {
            let share = if is_result_key(item.key()) {
                &mut result_share
            } else {
                &mut metadata_share
            };
            share.positions.push(position);
            share.items.push(item);
        }
        let on_metadata = async {
            self.metadata
                .admit(metadata_share.items.iter().map(Keyed::key))
                .await?;
            call(&self.metadata, metadata_share.items.clone()).await
        };
        let (metadata_answers, result_answers) =
            tokio::join!(on_metadata, call(results, result_share.items.clone()));
        merge(
            items.len(),
            [
                (metadata_share.positions, metadata_answers?),
                (result_share.positions, result_answers?),
            ],
        )
    }
}

/// Puts each pool's answers back at their items' positions.
fn merge<T, const N: usize>(
    len: usize,
    shares: [(Vec<usize>, Vec<T>); N],
) -> Result<Vec<T>, StoreError> {
    let mut merged: Vec<Option<T>> = std::iter::repeat_with(|| None).take(len).collect();
    for (positions, answers) in shares {
        if positions.len() != answers.len() {
            return Err(StoreError::Protocol {
                message: format!(
                    "a pool answered {} items for {} keys",
                    answers.len(),
                    positions.len()
                ),
            });
        }
        for (position, answer) in positions.into_iter().zip(answers) {
            if let Some(slot) = merged.get_mut(position) {
                *slot = Some(answer);
            }
        }
    }
    merged
        .into_iter()
        .map(|answer| {
            answer.ok_or_else(|| StoreError::Protocol {
                message: "a key got no answer from its pool".to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn merge_restores_the_callers_order() {
        let merged = merge(
            4,
            [(vec![1, 3], vec!["b", "d"]), (vec![0, 2], vec!["a", "c"])],
        );
        assert_eq!(merged.unwrap(), ["a", "b", "c", "d"]);
        assert!(merge(2, [(vec![0, 1], vec!["a"])]).is_err());
    }
}
