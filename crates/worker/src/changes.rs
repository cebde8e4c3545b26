//! From pgoutput messages to invalidations: resolves each change's table in
//! the schema model, builds row images, derives keys, and decides when only
//! a table-wide generation bump is safe.
//!
//! Tables are looked up by the relation OID they had at discovery, then by
//! name (a table re-created since has a new OID). A change also reaches
//! every `pg_inherits` ancestor of its table (a reader of a parent reads
//! its children's rows): their "any change" lists are flushed, and their
//! generations bumped wherever the table's is. A table the model does not
//! know (a partition created after start) makes the worker re-read the
//! catalog once per relation and session ([`ChangeMapper::wants_catalog_for`]);
//! if it is still unknown it is invalidated as a whole on every change:
//! never skipped. Relation messages are kept per connection, keyed by OID
//! (`docs/pgoutput.md` §5); one that differs from the previous for the same OID
//! (columns, types, replica identity) is a schema change and bumps the
//! table's generation (DDL sends no message of its own, only a new Relation
//! before the next change: `docs/pgoutput.md` §5).

use std::collections::{HashMap, HashSet};

use cm_keys::{
    derive_row_keys, images_from_pgoutput, ChangeKind, Key, KeySpace, SchemaModel, Table,
    TableKeys, TableName,
};
use cm_pgoutput::{LogicalMessage, Lsn, Oid, Relation};

use crate::catalog::Catalog;
use crate::ddl::DdlEffects;
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

/// The table-level keys a relation's changes reach: its table's (the
/// partition root's for a partition) and each ancestor's.
struct RelationKeys {
    own: TableKeys,
    ancestors: Vec<TableKeys>,
}

impl RelationKeys {
    fn new(space: &KeySpace, model: &SchemaModel, table: &Table) -> RelationKeys {
        let identity = table.key_identity();
        let mut names: Vec<TableName> = Vec::new();
        for ancestor in model.ancestors(&table.name) {
            // An intermediate partitioned table's keys are its root's.
            let name = model
                .table(&ancestor)
                .map_or(ancestor.clone(), |t| t.key_identity().clone());
            if name != *identity && !names.contains(&name) {
                names.push(name);
            }
        }
        RelationKeys {
            own: TableKeys::new(space, table),
            ancestors: names.iter().map(|n| table_keys(space, n)).collect(),
        }
    }
}

fn table_keys(space: &KeySpace, name: &TableName) -> TableKeys {
    TableKeys {
        table_changes: space.table_changes(name),
        table_generation: space.table_generation(name),
    }
}

/// Maps messages of one replication session to invalidations.
pub struct ChangeMapper {
    space: KeySpace,
    catalog: Catalog,
    /// The catalog must be read before the next change is mapped (a new
    /// worker, or a read that failed).
    catalog_stale: bool,
    /// Relations the catalog was re-read for this session because the model
    /// did not know them: at most once each.
    refreshed_for: HashSet<Oid>,
    relations: HashMap<Oid, Relation>,
    /// The table-level keys of each relation, built at its first change
    /// (dropped with its Relation message or a new catalog).
    table_keys: HashMap<Oid, RelationKeys>,
    /// Row keys of the change being mapped (reused).
    row_keys: Vec<Key>,
    /// Bumps for schema changes seen outside a transaction (pgoutput sends
    /// Relation inside one, but a bump must never be dropped).
    pending_bumps: Vec<cm_keys::Key>,
}

impl ChangeMapper {
    /// A mapper for a fresh session (no Relation messages seen yet), whose
    /// catalog is still to be read ([`Self::needs_catalog`]).
    pub fn new(space: KeySpace) -> ChangeMapper {
        ChangeMapper {
            space,
            catalog: Catalog::default(),
            catalog_stale: true,
            refreshed_for: HashSet::new(),
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
        self.refreshed_for.clear();
    }

    /// Whether the catalog must be read before mapping anything.
    pub fn needs_catalog(&self) -> bool {
        self.catalog_stale
    }

    /// Requires a catalog read before the next change is mapped.
    pub fn mark_catalog_stale(&mut self) {
        self.catalog_stale = true;
    }

    /// Maps later changes with `catalog`.
    pub fn set_catalog(&mut self, catalog: Catalog) {
        self.catalog = catalog;
        self.catalog_stale = false;
        self.table_keys.clear();
    }

    /// Whether `message` is a change of a relation the model does not know
    /// and the catalog was not yet re-read for this session: then the
    /// caller re-reads it before mapping (a partition created after the
    /// catalog was read belongs to its root).
    pub fn wants_catalog_for(&mut self, message: &LogicalMessage) -> bool {
        let rel_ids = match message {
            LogicalMessage::Insert(m) => std::slice::from_ref(&m.rel_id),
            LogicalMessage::Update(m) => std::slice::from_ref(&m.rel_id),
            LogicalMessage::Delete(m) => std::slice::from_ref(&m.rel_id),
            LogicalMessage::Truncate(m) => m.rel_ids.as_slice(),
            _ => &[],
        };
        let mut wants = false;
        for rel_id in rel_ids {
            let unknown = self
                .relations
                .get(rel_id)
                .is_some_and(|r| matches!(resolve(&self.catalog.model, r), Resolved::Unknown));
            if unknown && self.refreshed_for.insert(*rel_id) {
                wants = true;
            }
        }
        wants
    }

    /// Adds what the DDL message at `lsn` invalidates to `txn` and returns
    /// its effects (for the log: epoch reasons, a malformed message).
    pub fn ddl(&self, lsn: Lsn, content: &[u8], txn: &mut TxnInvalidations) -> DdlEffects {
        let effects = DdlEffects::for_message(lsn, content, &self.catalog);
        effects.add_to(&self.space, txn);
        effects
    }

    /// Records a Relation message; a changed layout bumps the table.
    pub fn relation(&mut self, relation: Relation, txn: Option<&mut TxnInvalidations>) {
        let changed = self
            .relations
            .get(&relation.rel_id)
            .is_some_and(|previous| layout_differs(previous, &relation));
        if changed {
            let keys = self.generation_keys(&relation);
            match txn {
                Some(txn) => keys.into_iter().for_each(|key| txn.bump_table(key)),
                None => self.pending_bumps.extend(keys),
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
                    for key in self.generation_keys(relation) {
                        txn.bump_table(key);
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
        let table = match resolve(&self.catalog.model, relation) {
            Resolved::Known(table) => table,
            Resolved::Ignored => return Ok(()),
            Resolved::Unknown => {
                txn.bump_table(self.space.table_generation(&table_name(relation)));
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
                let (space, model) = (&self.space, &self.catalog.model);
                let keys = self
                    .table_keys
                    .entry(rel_id)
                    .or_insert_with(|| RelationKeys::new(space, model, table));
                txn.add_row(&keys.own, bump, self.row_keys.drain(..));
                for ancestor in &keys.ancestors {
                    txn.add_related_table(ancestor, bump);
                }
            }
            Err(error) => {
                // A value that does not parse cannot feed a key: invalidate
                // the whole table rather than guess.
                tracing::warn!(table = %qualified(relation), %error, "row image unusable: table generation bumped");
                for key in self.generation_keys(relation) {
                    txn.bump_table(key);
                }
            }
        }
        Ok(())
    }

    fn relation_of(&self, rel_id: Oid) -> Result<&Relation, ChangeError> {
        self.relations
            .get(&rel_id)
            .ok_or(ChangeError::UnknownRelation(rel_id))
    }

    /// The generation keys readers snapshot for this relation's rows: its
    /// table's (the partition root's for a partition) and its ancestors';
    /// none for an ignored table, its own name's for an unknown one.
    fn generation_keys(&self, relation: &Relation) -> Vec<Key> {
        let model = &self.catalog.model;
        match resolve(model, relation) {
            Resolved::Known(table) => {
                let keys = RelationKeys::new(&self.space, model, table);
                std::iter::once(keys.own)
                    .chain(keys.ancestors)
                    .map(|k| k.table_generation)
                    .collect()
            }
            Resolved::Ignored => Vec::new(),
            Resolved::Unknown => vec![self.space.table_generation(&table_name(relation))],
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
