//! [`Replay`]: the check's transaction, and the reader's session state put
//! back in it before each result's statement runs again.
//!
//! The transaction is `REPEATABLE READ READ ONLY`; its snapshot is taken
//! by its first statement and serves every statement after it, savepoints
//! included. Right after that first statement it sets a savepoint, and
//! every replay happens above it: a result's recorded settings are applied
//! with `set_config(name, value, true)` (`SET LOCAL`, parameters instead of
//! quoting), and `ROLLBACK TO SAVEPOINT` undoes them (a subtransaction's
//! abort restores the settings it changed, `role` included) and also
//! recovers from a statement that failed, without giving up the snapshot.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::error::InspectError;
use crate::settings::SessionSettings;

/// Begins the transaction, takes its snapshot and sets the savepoint.
const BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1; \
                     SAVEPOINT cm_replay";

/// Back to the checker's own settings; the savepoint stays.
const UNDO: &str = "ROLLBACK TO SAVEPOINT cm_replay";

/// `SET LOCAL` for every pair of the two arrays, in order.
const APPLY: &str = "SELECT set_config(name, value, true) \
                     FROM unnest($1::text[], $2::text[]) AS s(name, value)";

/// Whether the session user may `SET ROLE` to the role named `$1`: it must
/// exist and have the session user among its members, directly or not (a
/// superuser is a member of every role for `pg_has_role`, as for `SET ROLE`).
const MAY_ASSUME: &str = "SELECT pg_has_role(session_user, r.oid, 'MEMBER') \
                          FROM pg_roles r WHERE r.rolname = $1";

/// Whether a result's session could be put back.
#[derive(Debug)]
pub(crate) enum Entered {
    /// Its statement may run now.
    Ready,
    /// It was filled as a role the checker cannot `SET ROLE` to.
    RoleNotAssumable,
    /// PostgreSQL refused a recorded setting; the checker's own are back.
    Refused(String),
}

/// The check's transaction and which recorded settings are applied in it.
#[derive(Debug)]
pub(crate) struct Replay {
    /// The checker's `current_user`: a result filled as this role needs no
    /// `SET ROLE`.
    own_role: String,
    /// What is applied above the savepoint: `None` for the checker's own
    /// session.
    applied: Option<SessionSettings>,
    /// [`MAY_ASSUME`]'s answers so far, by role name.
    assumable: HashMap<String, bool>,
}

impl Replay {
    /// Reads the checker's role, outside any transaction.
    pub(crate) async fn new(client: &Client) -> Result<Replay, InspectError> {
        let row = client.query_one("SELECT current_user::text", &[]).await?;
        Ok(Replay {
            own_role: row.try_get(0)?,
            applied: None,
            assumable: HashMap::new(),
        })
    }

    /// Opens the check's transaction: snapshot, savepoint, own settings.
    pub(crate) async fn begin(&mut self, client: &Client) -> Result<(), InspectError> {
        client.batch_execute(BEGIN).await?;
        self.applied = None;
        Ok(())
    }

    /// Puts `recorded` in place (the checker's own settings for `None`),
    /// changing nothing when it already is.
    pub(crate) async fn enter(
        &mut self,
        client: &Client,
        recorded: Option<&SessionSettings>,
    ) -> Result<Entered, InspectError> {
        if self.applied.as_ref() == recorded {
            return Ok(Entered::Ready);
        }
        if self.applied.is_some() {
            self.undo(client).await?;
        }
        let Some(settings) = recorded else {
            return Ok(Entered::Ready);
        };
        let role = (settings.role != self.own_role).then_some(settings.role.as_str());
        if let Some(role) = role {
            if !self.may_assume(client, role).await? {
                return Ok(Entered::RoleNotAssumable);
            }
        }
        let (names, values) = assignments(settings, role);
        if let Err(error) = client.execute(APPLY, &[&names, &values]).await {
            self.undo(client).await?;
            return Ok(Entered::Refused(format!(
                "restoring the reader's session settings: {error}"
            )));
        }
        self.applied = Some(settings.clone());
        Ok(Entered::Ready)
    }

    /// Recovers from a failed statement: the subtransaction is aborted,
    /// and rolling back to the savepoint also brings the checker's own
    /// settings back.
    pub(crate) async fn recover(&mut self, client: &Client) -> Result<(), InspectError> {
        self.undo(client).await
    }

    async fn undo(&mut self, client: &Client) -> Result<(), InspectError> {
        client.batch_execute(UNDO).await?;
        self.applied = None;
        Ok(())
    }

    async fn may_assume(&mut self, client: &Client, role: &str) -> Result<bool, InspectError> {
        if let Some(known) = self.assumable.get(role) {
            return Ok(*known);
        }
        let may = match client.query_opt(MAY_ASSUME, &[&role]).await? {
            Some(row) => row.try_get(0)?,
            // The role no longer exists.
            None => false,
        };
        self.assumable.insert(role.to_owned(), may);
        Ok(may)
    }
}

/// The `set_config` names and values for `settings`, `role` first when the
/// role is to change.
fn assignments<'a>(
    settings: &'a SessionSettings,
    role: Option<&'a str>,
) -> (Vec<&'a str>, Vec<&'a str>) {
    role.map(|role| ("role", role))
        .into_iter()
        .chain(settings.gucs())
        .unzip()
}

/// The settings a result was replayed with, for the report: `role` first,
/// then each setting; empty for results recorded without settings.
pub(crate) fn describe(recorded: Option<&SessionSettings>) -> Vec<(String, String)> {
    let Some(settings) = recorded else {
        return Vec::new();
    };
    let (names, values) = assignments(settings, Some(&settings.role));
    names
        .into_iter()
        .zip(values)
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}
