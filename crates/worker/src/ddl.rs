//! DDL through the WAL: the messages the event triggers emit
//! (`sql/ddl_trigger.sql`) and what the worker invalidates for each.
//!
//! A message names the relations and functions a command touched, as they
//! are after it, with their `pg_inherits` ancestors and descendants at that
//! moment; the worker adds what its catalog (read before the DDL) knew: the
//! old name of a renamed or moved object and its old inheritance. Every
//! name's generation is bumped, then the schema version. The epoch is bumped
//! instead of guessing when the message cannot be read, names something no
//! generation covers, may shadow another object on `search_path`, or is
//! older than the catalog the worker holds. `docs/ddl.md` is the reference.

use std::collections::BTreeSet;

use cm_keys::{KeySpace, SchemaModel, TableName};
use cm_pgoutput::Lsn;
use serde::Deserialize;

use crate::catalog::Catalog;
use crate::txn::TxnInvalidations;

/// The logical message prefix of DDL messages (one per database, whatever
/// the cache prefix: every worker on the database reads them).
pub const DDL_MESSAGE_PREFIX: &str = "cm.ddl";

/// The message format version this worker understands.
pub const DDL_MESSAGE_VERSION: u32 = 1;

/// One DDL message: the event, the command tag and what it touched.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DdlMessage {
    /// Format version ([`DDL_MESSAGE_VERSION`]).
    pub v: u32,
    /// `ddl_command_end` or `sql_drop`.
    pub event: String,
    /// The command tag, e.g. `ALTER TABLE`.
    pub tag: String,
    /// The touched objects that matter for cached results.
    pub objects: Vec<DdlObject>,
}

/// One touched object.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DdlObject {
    /// A table, partitioned table, view, materialized view or foreign table
    /// (or a column, constraint, policy or rule of one).
    Relation(NamedObject),
    /// A function, procedure or aggregate.
    Function(NamedObject),
    /// Something no generation covers (schema rename, type change,
    /// extension, publication, operator, cast, ...).
    Unscoped {
        /// PostgreSQL's object type, e.g. `schema`.
        #[serde(rename = "type")]
        object_type: String,
        /// PostgreSQL's object identity, for the log.
        identity: Option<String>,
    },
}

/// A relation or function as the message describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NamedObject {
    /// Its oid, when the event gave one.
    pub oid: Option<u32>,
    /// Its schema (after the command).
    pub schema: String,
    /// Its name (after the command).
    pub name: String,
    /// False for a dropped object.
    pub exists: bool,
    /// `pg_inherits` ancestors at event time (relations only).
    #[serde(default)]
    pub ancestors: Vec<MessageName>,
    /// `pg_inherits` descendants at event time (relations only).
    #[serde(default)]
    pub descendants: Vec<MessageName>,
    /// Another schema holds a relation (for a relation) or function (for a
    /// function) of this name: on `search_path` one may shadow the other.
    #[serde(default)]
    pub same_name_elsewhere: bool,
}

impl NamedObject {
    fn table_name(&self) -> TableName {
        TableName::new(&self.schema, &self.name)
    }
}

/// A schema-qualified name in a message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MessageName {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
}

impl From<&MessageName> for TableName {
    fn from(name: &MessageName) -> TableName {
        TableName::new(&name.schema, &name.name)
    }
}

/// What one DDL message invalidates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DdlEffects {
    /// Names whose generation is bumped (relations and functions alike:
    /// readers snapshot `table_generation` of both).
    pub generations: BTreeSet<TableName>,
    /// Why the epoch must be bumped too; empty when the message is scoped.
    pub epoch_reasons: Vec<String>,
    /// The content did not parse (or has an unknown version).
    pub malformed: bool,
}

impl DdlEffects {
    /// What the message at `lsn` with `content` invalidates, against `catalog`.
    pub fn for_message(lsn: Lsn, content: &[u8], catalog: &Catalog) -> DdlEffects {
        let mut effects = DdlEffects::default();
        let message = match serde_json::from_slice::<DdlMessage>(content) {
            Ok(message) if message.v == DDL_MESSAGE_VERSION => message,
            Ok(message) => {
                effects.malformed = true;
                effects.epoch(format!(
                    "DDL message version {} is not {DDL_MESSAGE_VERSION}",
                    message.v
                ));
                return effects;
            }
            Err(error) => {
                effects.malformed = true;
                effects.epoch(format!("DDL message does not parse: {error}"));
                return effects;
            }
        };
        // The catalog may already show this DDL's result (a burst of DDL, or
        // a replay after a restart): old names and old inheritance may be
        // gone from it. Only what a CREATE or REFRESH touches does not depend
        // on them.
        let catalog_may_be_newer = lsn < catalog.lsn;
        if catalog_may_be_newer && !creates_or_refreshes(&message) {
            effects.epoch(format!(
                "DDL message at {lsn} ({}) is older than the worker's catalog (read at {})",
                message.tag, catalog.lsn
            ));
        }
        for object in &message.objects {
            effects.add_object(object, catalog, catalog_may_be_newer);
        }
        effects
    }

    /// The bumps, in the order the contract needs: every generation (and
    /// the epoch) first, the schema version after them.
    pub fn add_to(&self, space: &KeySpace, txn: &mut TxnInvalidations) {
        for name in &self.generations {
            txn.bump_table(space.table_generation(name));
        }
        if !self.epoch_reasons.is_empty() {
            txn.bump_table(space.epoch());
        }
        txn.bump_after_generations(space.schema_version());
    }

    fn epoch(&mut self, reason: String) {
        self.epoch_reasons.push(reason);
    }

    fn add_object(&mut self, object: &DdlObject, catalog: &Catalog, catalog_may_be_newer: bool) {
        match object {
            DdlObject::Relation(relation) => {
                let old = relation
                    .oid
                    .and_then(|oid| catalog.names.relations.get(&oid));
                self.add_named(relation, old, catalog_may_be_newer, "relation");
                for name in [Some(relation.table_name()), old.cloned()]
                    .into_iter()
                    .flatten()
                {
                    self.add_model_family(&catalog.model, &name);
                }
                let family = relation.ancestors.iter().chain(&relation.descendants);
                self.generations.extend(family.map(TableName::from));
            }
            DdlObject::Function(function) => {
                let old = function
                    .oid
                    .and_then(|oid| catalog.names.functions.get(&oid));
                self.add_named(function, old, catalog_may_be_newer, "function");
            }
            DdlObject::Unscoped {
                object_type,
                identity,
            } => self.epoch(format!(
                "{object_type} {} changed: no generation covers it",
                identity.as_deref().unwrap_or("(unnamed)")
            )),
        }
    }

    /// The object's new name and, when the catalog had it under another
    /// name, the old one; the epoch when the new name may now shadow (or be
    /// shadowed by) a same-named object of another schema: created, renamed
    /// or moved while such an object exists. When the catalog may already
    /// hold the new name, the name counts as new.
    fn add_named(
        &mut self,
        object: &NamedObject,
        old: Option<&TableName>,
        catalog_may_be_newer: bool,
        what: &str,
    ) {
        let new = object.table_name();
        let name_is_new = catalog_may_be_newer || old != Some(&new);
        if object.exists && object.same_name_elsewhere && name_is_new {
            self.epoch(format!(
                "{what} {new} appeared under a name another schema also has: \
                 search_path may now resolve queries to a different object"
            ));
        }
        if let Some(old) = old {
            self.generations.insert(old.clone());
        }
        self.generations.insert(new);
    }

    /// `name`'s ancestors and descendants as the worker's model knows them
    /// (before the DDL: a detached partition's old parent, a dropped child's
    /// parents).
    fn add_model_family(&mut self, model: &SchemaModel, name: &TableName) {
        self.generations.extend(model.ancestors(name));
        let descendants = model
            .tables()
            .filter(|t| model.ancestors(&t.name).contains(name))
            .map(|t| t.name.clone());
        self.generations.extend(descendants);
    }
}

/// A `CREATE ...` or `REFRESH MATERIALIZED VIEW` command end: what it
/// touched is fully described by the message (no old name, no old parent).
fn creates_or_refreshes(message: &DdlMessage) -> bool {
    message.event == "ddl_command_end"
        && (message.tag.starts_with("CREATE ") || message.tag == "REFRESH MATERIALIZED VIEW")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn catalog_with(relations: &[(u32, &str)], functions: &[(u32, &str)], lsn: u64) -> Catalog {
        let mut catalog = Catalog {
            lsn: Lsn(lsn),
            ..Catalog::default()
        };
        for (oid, name) in relations {
            catalog
                .names
                .relations
                .insert(*oid, TableName::new("public", *name));
        }
        for (oid, name) in functions {
            catalog
                .names
                .functions
                .insert(*oid, TableName::new("public", *name));
        }
        catalog
    }

    fn public(name: &str) -> TableName {
        TableName::new("public", name)
    }

    fn effects(content: &str, catalog: &Catalog) -> DdlEffects {
        DdlEffects::for_message(Lsn(100), content.as_bytes(), catalog)
    }

    #[test]
    fn a_renamed_relation_bumps_its_old_and_new_name_and_its_family() {
        let catalog = catalog_with(&[(7, "book")], &[], 50);
        let effects = effects(
            r#"{"v":1,"event":"ddl_command_end","tag":"ALTER TABLE","objects":[
                {"kind":"relation","oid":7,"schema":"public","name":"novel","exists":true,
                 "relkind":"r","ancestors":[{"schema":"public","name":"work"}],
                 "descendants":[{"schema":"public","name":"novel_2024"}],
                 "same_name_elsewhere":false}]}"#,
            &catalog,
        );
        let expected: BTreeSet<TableName> = ["book", "novel", "work", "novel_2024"]
            .into_iter()
            .map(public)
            .collect();
        assert_eq!(effects.generations, expected);
        assert!(
            effects.epoch_reasons.is_empty(),
            "{:?}",
            effects.epoch_reasons
        );
    }

    #[test]
    fn a_created_relation_that_may_shadow_another_bumps_the_epoch() {
        let catalog = catalog_with(&[], &[], 50);
        let effects = effects(
            r#"{"v":1,"event":"ddl_command_end","tag":"CREATE TABLE","objects":[
                {"kind":"relation","oid":8,"schema":"app","name":"book","exists":true,
                 "same_name_elsewhere":true}]}"#,
            &catalog,
        );
        assert_eq!(effects.epoch_reasons.len(), 1);
        assert!(effects.generations.contains(&TableName::new("app", "book")));
    }

    #[test]
    fn altering_a_known_relation_whose_name_exists_elsewhere_is_scoped() {
        let catalog = catalog_with(&[(7, "book")], &[], 50);
        let effects = effects(
            r#"{"v":1,"event":"ddl_command_end","tag":"ALTER TABLE","objects":[
                {"kind":"relation","oid":7,"schema":"public","name":"book","exists":true,
                 "same_name_elsewhere":true}]}"#,
            &catalog,
        );
        assert!(
            effects.epoch_reasons.is_empty(),
            "{:?}",
            effects.epoch_reasons
        );
        assert_eq!(effects.generations, BTreeSet::from([public("book")]));
    }

    #[test]
    fn a_renamed_function_bumps_both_names() {
        let catalog = catalog_with(&[], &[(9, "price")], 50);
        let effects = effects(
            r#"{"v":1,"event":"ddl_command_end","tag":"ALTER FUNCTION","objects":[
                {"kind":"function","oid":9,"schema":"public","name":"cost","exists":true,
                 "same_name_elsewhere":false}]}"#,
            &catalog,
        );
        assert_eq!(
            effects.generations,
            BTreeSet::from([public("price"), public("cost")])
        );
        assert!(effects.epoch_reasons.is_empty());
    }

    #[test]
    fn an_unscoped_object_bumps_the_epoch() {
        let effects = effects(
            r#"{"v":1,"event":"ddl_command_end","tag":"ALTER SCHEMA","objects":[
                {"kind":"unscoped","type":"schema","identity":"app2"}]}"#,
            &Catalog::default(),
        );
        assert_eq!(effects.epoch_reasons.len(), 1);
        assert!(!effects.malformed);
    }

    #[test]
    fn a_message_older_than_the_catalog_bumps_the_epoch() {
        let catalog = catalog_with(&[(7, "book")], &[], 500);
        let effects = effects(
            r#"{"v":1,"event":"ddl_command_end","tag":"ALTER TABLE","objects":[
                {"kind":"relation","oid":7,"schema":"public","name":"book","exists":true}]}"#,
            &catalog,
        );
        assert_eq!(effects.epoch_reasons.len(), 1);
        assert_eq!(effects.generations, BTreeSet::from([public("book")]));
    }

    #[test]
    fn a_create_older_than_the_catalog_is_scoped_unless_its_name_exists_elsewhere() {
        let catalog = catalog_with(&[(7, "tag")], &[], 500);
        let create = |elsewhere: bool| {
            format!(
                r#"{{"v":1,"event":"ddl_command_end","tag":"CREATE TABLE","objects":[
                {{"kind":"relation","oid":7,"schema":"public","name":"tag","exists":true,
                 "same_name_elsewhere":{elsewhere}}}]}}"#
            )
        };
        let scoped = effects(&create(false), &catalog);
        assert!(
            scoped.epoch_reasons.is_empty(),
            "{:?}",
            scoped.epoch_reasons
        );
        assert_eq!(scoped.generations, BTreeSet::from([public("tag")]));
        // The catalog already holds the new table under its name: that must
        // not hide the shadowing.
        assert_eq!(effects(&create(true), &catalog).epoch_reasons.len(), 1);
    }

    #[test]
    fn malformed_content_an_unknown_kind_or_version_bumps_the_epoch() {
        for content in [
            "not json",
            r#"{"v":2,"event":"x","tag":"x","objects":[]}"#,
            r#"{"v":1,"event":"x","tag":"x","objects":[{"kind":"galaxy"}]}"#,
        ] {
            let effects = effects(content, &Catalog::default());
            assert!(effects.malformed, "{content}");
            assert_eq!(effects.epoch_reasons.len(), 1, "{content}");
        }
    }

    #[test]
    fn the_schema_version_is_bumped_after_the_generations() {
        let space = KeySpace::new("t").unwrap();
        let effects = effects(
            r#"{"v":1,"event":"sql_drop","tag":"DROP VIEW","objects":[
                {"kind":"relation","oid":3,"schema":"public","name":"v","exists":false}]}"#,
            &Catalog::default(),
        );
        let mut txn = TxnInvalidations::new(10);
        effects.add_to(&space, &mut txn);
        assert!(txn
            .generations()
            .contains(&space.table_generation(&public("v"))));
        assert!(!txn.generations().contains(&space.schema_version()));
        assert_eq!(
            txn.after_generations().iter().collect::<Vec<_>>(),
            [&space.schema_version()]
        );
        assert!(txn.changes_schema());
    }
}
