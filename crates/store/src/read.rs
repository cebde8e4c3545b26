//! One-key reads: any key ([`get_one`]), a generation ([`read_generation`])
//! and the invalidator's heartbeat ([`read_heartbeat`]), for everything
//! outside the reader's hit path (which reads them inside its one
//! multi-get).

use cm_keys::{Heartbeat, KeySpace};

use crate::error::StoreError;
use crate::generation::Generation;
use crate::store::{CacheStore, Item};

/// The item under `key`, `None` when there is none: a one-key `get_many`.
pub async fn get_one(store: &dyn CacheStore, key: &str) -> Result<Option<Item>, StoreError> {
    Ok(store.get_many(&[key]).await?.into_iter().next().flatten())
}

/// The generation under `key`, `None` when there is none (never created,
/// deleted or evicted). A value that is not a generation is
/// [`StoreError::CorruptGeneration`].
pub async fn read_generation(
    store: &dyn CacheStore,
    key: &str,
) -> Result<Option<Generation>, StoreError> {
    let item = get_one(store, key).await?;
    item.map(|item| Generation::decode(key, &item.value))
        .transpose()
}

/// The heartbeat the invalidator last wrote under `space`: `None` when
/// there is none or it does not decode.
pub async fn read_heartbeat(
    store: &dyn CacheStore,
    space: &KeySpace,
) -> Result<Option<Heartbeat>, StoreError> {
    let item = get_one(store, space.heartbeat().as_str()).await?;
    Ok(item.and_then(|item| Heartbeat::decode(&item.value)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{MemoryStore, MemoryStoreConfig};

    #[tokio::test]
    async fn reads_a_generation_and_refuses_anything_else() {
        let store = MemoryStore::new(MemoryStoreConfig::default());
        assert_eq!(read_generation(&store, "t:g:a").await.unwrap(), None);
        let created = store.create_generation_if_missing("t:g:a").await.unwrap();
        assert_eq!(
            read_generation(&store, "t:g:a").await.unwrap(),
            Some(created)
        );
        let ttl = Duration::from_secs(60);
        store.write_heartbeat("t:g:b", b"x1", ttl).await.unwrap();
        assert!(matches!(
            read_generation(&store, "t:g:b").await,
            Err(StoreError::CorruptGeneration { .. })
        ));
    }

    #[tokio::test]
    async fn reads_what_was_written_and_nothing_else() {
        let store = MemoryStore::new(MemoryStoreConfig::default());
        let space = KeySpace::new("hbt").unwrap();
        assert_eq!(read_heartbeat(&store, &space).await.unwrap(), None);
        let key = space.heartbeat();
        let ttl = Duration::from_secs(60);
        store
            .write_heartbeat(key.as_str(), b"garbage", ttl)
            .await
            .unwrap();
        assert_eq!(read_heartbeat(&store, &space).await.unwrap(), None);
        let heartbeat = Heartbeat::of_message(42, 7, 9);
        store
            .write_heartbeat(key.as_str(), &heartbeat.encode(), ttl)
            .await
            .unwrap();
        assert_eq!(
            read_heartbeat(&store, &space).await.unwrap(),
            Some(heartbeat)
        );
    }
}
