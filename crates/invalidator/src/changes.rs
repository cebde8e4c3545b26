//! From pgoutput messages to invalidations: resolves each change's table in
//! the schema model, builds row images, derives keys, and decides when only
//! a table-wide generation bump is safe.
//!
//! Tables are looked up by the relation OID they had at discovery, then by
//! name (a table re-created since has a new OID). A table the model does not
//! know (created after start) is invalidated as a whole on every change:
//! never skipped. Relation messages are kept per connection, keyed by OID
//! (research rule 0.14); one that differs from the previous for the same OID
//! (columns, types, replica identity) is a schema change and bumps the
//! table's generation (research 4.3).

use std::collections::HashMap;

use cm_keys::{
    derive_row_keys, images_from_pgoutput, ChangeKind, Key, KeySpace, SchemaModel, Table,
    TableKeys, TableName,
};
use cm_pgoutput::{LogicalMessage, Oid, Relation};

use crate::txn::TxnInvalidations;

/// A change that breaks the stream's own rules.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// A change for a relation whose Relation message never arrived.
    #[error("change for relation {0} before its Relation message")]
    UnknownRelation(Oid),
}

/// What the model says about a relation.
enum Resolved<'a> {
    /// A modelled table.
    Known(&'a Table),
    /// Configured `ignore = true`.
    Ignored,
    /// Not in the model: table-wide invalidation by name.
    Unknown,
}

/// Maps messages of one replication session to invalidations.
pub struct ChangeMapper {
    space: KeySpace,
    model: SchemaModel,
    relations: HashMap<Oid, Relation>,
    /// The table-level keys of each relation's table, built at its first
    /// change (dropped with its Relation message).
    table_keys: HashMap<Oid, TableKeys>,
    /// Row keys of the change being mapped (reused).
    row_keys: Vec<Key>,
    /// Bumps for schema changes seen outside a transaction (pgoutput sends
    /// Relation inside one, but a bump must never be dropped).
    pending_bumps: Vec<cm_keys::Key>,
}

impl ChangeMapper {
    /// A mapper for a fresh session (no Relation messages seen yet).
    pub fn new(space: KeySpace, model: SchemaModel) -> ChangeMapper {
        ChangeMapper {
            space,
            model,
            relations: HashMap::new(),
            table_keys: HashMap::new(),
            row_keys: Vec::new(),
            pending_bumps: Vec::new(),
        }
    }

    /// Forgets the session's Relation messages (after a reconnect the server
    /// sends them again; re-sent identical ones are not schema changes).
    pub fn reset_session(&mut self) {
        self.relations.clear();
        self.table_keys.clear();
    }

    /// Records a Relation message; a changed layout bumps the table.
    pub fn relation(&mut self, relation: Relation, txn: Option<&mut TxnInvalidations>) {
        let changed = self
            .relations
            .get(&relation.rel_id)
            .is_some_and(|previous| layout_differs(previous, &relation));
        if changed {
            let key = self.generation_key(&relation);
            match txn {
                Some(txn) => txn.bump_table(key),
                None => self.pending_bumps.push(key),
            }
            tracing::info!(
                table = %qualified(&relation),
                "schema change seen in a Relation message: table generation bumped"
            );
        }
        self.table_keys.remove(&relation.rel_id);
        self.relations.insert(relation.rel_id, relation);
    }

    /// Adds the invalidations of one row change or TRUNCATE to `txn`.
    pub fn change(
        &mut self,
        message: &LogicalMessage,
        txn: &mut TxnInvalidations,
    ) -> Result<(), ChangeError> {
        for key in self.pending_bumps.drain(..) {
            txn.bump_table(key);
        }
        let (rel_id, kind, old, new) = match message {
            LogicalMessage::Insert(m) => (m.rel_id, ChangeKind::Insert, None, Some(&m.new)),
            LogicalMessage::Update(m) => {
                (m.rel_id, ChangeKind::Update, m.old.as_ref(), Some(&m.new))
            }
            LogicalMessage::Delete(m) => (m.rel_id, ChangeKind::Delete, Some(&m.old), None),
            LogicalMessage::Truncate(m) => {
                for rel_id in &m.rel_ids {
                    let relation = self.relation_of(*rel_id)?;
                    if !matches!(self.resolve(relation), Resolved::Ignored) {
                        txn.bump_table(self.generation_key(relation));
                    }
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        let relation = self
            .relations
            .get(&rel_id)
            .ok_or(ChangeError::UnknownRelation(rel_id))?;
        let table = match resolve(&self.model, relation) {
            Resolved::Known(table) => table,
            Resolved::Ignored => return Ok(()),
            Resolved::Unknown => {
                txn.bump_table(self.generation_key(relation));
                return Ok(());
            }
        };
        match images_from_pgoutput(relation, kind, old, new) {
            Ok(images) => {
                let bump = derive_row_keys(
                    &self.space,
                    table,
                    kind,
                    images.old.as_ref(),
                    images.new.as_ref(),
                    &mut self.row_keys,
                );
                let space = &self.space;
                let table_keys = self
                    .table_keys
                    .entry(rel_id)
                    .or_insert_with(|| TableKeys::new(space, table));
                txn.add_row(table_keys, bump, self.row_keys.drain(..));
            }
            Err(error) => {
                // A value that does not parse cannot feed a key: invalidate
                // the whole table rather than guess.
                tracing::warn!(table = %qualified(relation), %error, "row image unusable: table generation bumped");
                txn.bump_table(self.generation_key(relation));
            }
        }
        Ok(())
    }

    fn relation_of(&self, rel_id: Oid) -> Result<&Relation, ChangeError> {
        self.relations
            .get(&rel_id)
            .ok_or(ChangeError::UnknownRelation(rel_id))
    }

    fn resolve(&self, relation: &Relation) -> Resolved<'_> {
        resolve(&self.model, relation)
    }

    /// The generation key readers snapshot for this relation's table (the
    /// partition root's for a partition).
    fn generation_key(&self, relation: &Relation) -> cm_keys::Key {
        match self.resolve(relation) {
            Resolved::Known(table) => self.space.table_generation(table.key_identity()),
            Resolved::Ignored | Resolved::Unknown => {
                self.space.table_generation(&table_name(relation))
            }
        }
    }
}

/// What `model` says about `relation`'s table.
fn resolve<'m>(model: &'m SchemaModel, relation: &Relation) -> Resolved<'m> {
    let name = table_name(relation);
    if model.is_ignored(&name) {
        return Resolved::Ignored;
    }
    match model.table_by_oid(relation.rel_id) {
        Some(table) if table.name == name => Resolved::Known(table),
        _ => match model.table(&name) {
            Some(table) => Resolved::Known(table),
            None => Resolved::Unknown,
        },
    }
}

/// The table's name; pgoutput sends an empty namespace for `pg_catalog`.
fn table_name(relation: &Relation) -> TableName {
    let schema = if relation.namespace.is_empty() {
        "pg_catalog"
    } else {
        relation.namespace.as_str()
    };
    TableName::new(schema, relation.name.as_str())
}

fn qualified(relation: &Relation) -> String {
    let name = table_name(relation);
    format!("{}.{}", name.schema, name.name)
}

/// Columns (names, types, key flags) or replica identity differ.
fn layout_differs(a: &Relation, b: &Relation) -> bool {
    a.replica_identity != b.replica_identity
        || a.namespace != b.namespace
        || a.name != b.name
        || a.columns != b.columns
}
