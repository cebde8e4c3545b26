//! Generations on memcached: decimal numbers that never expire (no `T`),
//! created with `add` and bumped with `ma` (INCR).

use memcache::exp::{Arithmetic, Get, MutationStatus, Set};

use super::pool::Pool;
use crate::error::StoreError;
use crate::generation::Generation;
use crate::key::validate_key;

impl Pool {
    /// `ms <key> <len> ME` with a random number; on `NS` another process
    /// created it first, so read theirs. A generation deleted between the two
    /// steps is created again.
    pub(super) async fn create_generation_if_missing_now(
        &self,
        key: &str,
    ) -> Result<Generation, StoreError> {
        validate_key(key)?;
        for _ in 0..self.config.max_cas_attempts {
            if let Some(created) = self.add_random_generation(key).await? {
                return Ok(created);
            }
            let read = self
                .run("create_generation_if_missing", Get::new(key))
                .await?;
            if let Some(value) = read.value {
                return Generation::decode(key, &value);
            }
        }
        Err(StoreError::Contention {
            key: key.to_string(),
            attempts: self.config.max_cas_attempts,
        })
    }

    /// `ma <key> v`; on `NF` the generation vanished, so it is created with a
    /// fresh random number (a vanished generation must never read as a
    /// match). If another process creates it first, INCR that one.
    pub(super) async fn bump_generation_now(&self, key: &str) -> Result<Generation, StoreError> {
        validate_key(key)?;
        for _ in 0..self.config.max_cas_attempts {
            let incr = match self.run("bump_generation", Arithmetic::new(key)).await {
                Ok(incr) => incr,
                Err(StoreError::Server { message }) if message.contains("non-numeric") => {
                    return self.replace_with_random_generation(key).await;
                }
                Err(error) => return Err(error),
            };
            match (incr.status, incr.value) {
                (MutationStatus::Applied, Some(value)) => return Ok(Generation(value)),
                (MutationStatus::NotFound, _) => {
                    if let Some(created) = self.add_random_generation(key).await? {
                        return Ok(created);
                    }
                }
                (status, _) => {
                    return Err(StoreError::Protocol {
                        message: format!("INCR of {key:?} answered {status:?} without a value"),
                    })
                }
            }
        }
        Err(StoreError::Contention {
            key: key.to_string(),
            attempts: self.config.max_cas_attempts,
        })
    }

    /// Bumps by replacement: a generation memcached will not INCR (one of
    /// 2^63 or more, written before random starts stayed below it, can trip
    /// memcached's number parser; see [`Generation::random`]) gets a fresh
    /// random value instead. Any change is a bump: readers only compare
    /// for equality, and a fresh value equals the old with probability
    /// 2^-63.
    async fn replace_with_random_generation(&self, key: &str) -> Result<Generation, StoreError> {
        let generation = Generation::random()?;
        let set = Set::new(key, generation.encode());
        let result = self.run("replace_generation", set).await?;
        if result.applied() {
            Ok(generation)
        } else {
            Err(StoreError::Protocol {
                message: format!("replacing the generation {key:?} was not stored"),
            })
        }
    }

    /// Adds a random generation; `None` if the key already exists.
    async fn add_random_generation(&self, key: &str) -> Result<Option<Generation>, StoreError> {
        let generation = Generation::random()?;
        let add = Set::new(key, generation.encode()).add();
        let result = self.run("create_generation", add).await?;
        Ok(result.applied().then_some(generation))
    }
}
