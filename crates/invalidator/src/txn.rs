//! What one transaction invalidates: flush lists to empty and generations to
//! bump, deduplicated, and bounded by the key budget. Past the budget the
//! transaction coarsens to the generations of every table it touched, so a
//! million-row transaction costs memory per table, not per row.

use std::collections::BTreeSet;

use cm_keys::{Invalidation, Key};

/// The invalidations collected for one transaction.
#[derive(Debug, Default)]
pub struct TxnInvalidations {
    budget: usize,
    flush_lists: BTreeSet<Key>,
    generations: BTreeSet<Key>,
    touched_tables: BTreeSet<Key>,
    coarsened: bool,
    changes: u64,
}

impl TxnInvalidations {
    /// An empty set with room for `budget` flush-list keys.
    pub fn new(budget: usize) -> TxnInvalidations {
        TxnInvalidations {
            budget,
            ..TxnInvalidations::default()
        }
    }

    /// Adds one row change's keys.
    pub fn add(&mut self, invalidation: Invalidation) {
        self.changes += 1;
        let generation = invalidation.table_generation.clone();
        if invalidation.bump_table_generation || self.coarsened {
            self.generations.insert(generation.clone());
        }
        self.touched_tables.insert(generation);
        if self.coarsened {
            return;
        }
        self.flush_lists
            .extend(invalidation.flush_keys().into_iter().cloned());
        if self.flush_lists.len() > self.budget {
            // Past the budget: every table touched so far (and from now on)
            // is invalidated as a whole instead.
            self.coarsened = true;
            self.flush_lists.clear();
            self.generations.extend(self.touched_tables.iter().cloned());
        }
    }

    /// Invalidates a whole table (TRUNCATE, schema change, unknown table,
    /// undecodable values).
    pub fn bump_table(&mut self, table_generation: Key) {
        self.changes += 1;
        self.touched_tables.insert(table_generation.clone());
        self.generations.insert(table_generation);
    }

    /// Flush lists whose members must be deleted.
    pub fn flush_lists(&self) -> &BTreeSet<Key> {
        &self.flush_lists
    }

    /// Generations to bump.
    pub fn generations(&self) -> &BTreeSet<Key> {
        &self.generations
    }

    /// True when the key budget was exceeded.
    pub fn coarsened(&self) -> bool {
        self.coarsened
    }

    /// Row changes and table-wide invalidations added.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.flush_lists.is_empty() && self.generations.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use cm_keys::{KeySpace, TableName};

    use super::*;

    fn invalidation(space: &KeySpace, table: &str, id: u32) -> Invalidation {
        let name = TableName::new("public", table);
        let value = cm_keys::CanonicalValue::Int(i64::from(id));
        Invalidation {
            objects: vec![space.object(&name, &[("id", Some(&value))])],
            parents: Vec::new(),
            predicates: Vec::new(),
            table_changes: space.table_changes(&name),
            table_generation: space.table_generation(&name),
            bump_table_generation: false,
        }
    }

    #[test]
    fn duplicate_keys_are_collected_once() {
        let space = KeySpace::new("t").unwrap();
        let mut txn = TxnInvalidations::new(10);
        txn.add(invalidation(&space, "a", 1));
        txn.add(invalidation(&space, "a", 1));
        // The row's object list and the table's "any change" list.
        assert_eq!(txn.flush_lists().len(), 2);
        assert!(txn.generations().is_empty());
        assert_eq!(txn.changes(), 2);
    }

    #[test]
    fn past_the_budget_every_touched_table_is_bumped_instead() {
        let space = KeySpace::new("t").unwrap();
        let mut txn = TxnInvalidations::new(5);
        txn.add(invalidation(&space, "a", 1));
        txn.add(invalidation(&space, "b", 1));
        txn.add(invalidation(&space, "a", 2));
        assert!(
            !txn.coarsened(),
            "5 keys: 3 objects and 2 tables' change lists"
        );
        txn.add(invalidation(&space, "a", 3));
        assert!(txn.coarsened());
        assert!(txn.flush_lists().is_empty());
        txn.add(invalidation(&space, "c", 1));
        let expected: BTreeSet<Key> = ["a", "b", "c"]
            .iter()
            .map(|t| space.table_generation(&TableName::new("public", *t)))
            .collect();
        assert_eq!(txn.generations(), &expected);
    }

    #[test]
    fn a_bump_request_is_kept_alongside_flush_lists() {
        let space = KeySpace::new("t").unwrap();
        let mut txn = TxnInvalidations::new(10);
        let mut inv = invalidation(&space, "a", 1);
        inv.bump_table_generation = true;
        txn.add(inv);
        assert_eq!(txn.generations().len(), 1);
        assert_eq!(txn.flush_lists().len(), 2);
    }
}
