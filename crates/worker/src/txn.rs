//! What one transaction invalidates: flush lists to empty and generations to
//! bump, deduplicated, and bounded by the key budget. Past the budget the
//! transaction coarsens to the generations of every table it touched, so a
//! million-row transaction costs memory per table, not per row.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use cm_keys::{Key, TableKeys};
use cm_pgoutput::{Lsn, PgTimestamp};

/// The invalidations collected for one transaction.
#[derive(Debug, Default)]
pub struct TxnInvalidations {
    budget: usize,
    flush_lists: BTreeSet<Key>,
    generations: BTreeSet<Key>,
    touched_tables: BTreeSet<Key>,
    /// Generations bumped only after every key of `generations` (the
    /// schema version, which readers re-learn on).
    after_generations: BTreeSet<Key>,
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

    /// Adds one row change's keys (the tests' shorthand).
    #[cfg(test)]
    pub fn add(&mut self, invalidation: cm_keys::Invalidation) {
        let cm_keys::Invalidation {
            objects,
            parents,
            predicates,
            table_changes,
            table_generation,
            bump_table_generation,
        } = invalidation;
        let table = TableKeys {
            table_changes,
            table_generation,
        };
        let row_keys = objects.into_iter().chain(parents).chain(predicates);
        self.add_row(&table, bump_table_generation, row_keys);
    }

    /// Adds one row change's keys as [`cm_keys::derive_row_keys`] gives
    /// them: its row-level flush lists, whether the table generation must
    /// be bumped, and the table's own keys. Same effect as [`Self::add`].
    pub fn add_row(
        &mut self,
        table: &TableKeys,
        bump: bool,
        row_keys: impl IntoIterator<Item = Key>,
    ) {
        self.changes += 1;
        self.touch_table(table, bump);
        if !self.coarsened {
            self.flush_lists.extend(row_keys);
            self.coarsen_past_budget();
        }
    }

    /// Adds a table a row change also reaches without being a row of it
    /// (an inheritance ancestor: a reader of the parent reads the child's
    /// rows): its "any change" list, and its generation when `bump`.
    pub fn add_related_table(&mut self, table: &TableKeys, bump: bool) {
        self.touch_table(table, bump);
        self.coarsen_past_budget();
    }

    fn touch_table(&mut self, table: &TableKeys, bump: bool) {
        if bump || self.coarsened {
            insert_cloned(&mut self.generations, &table.table_generation);
        }
        insert_cloned(&mut self.touched_tables, &table.table_generation);
        if !self.coarsened {
            insert_cloned(&mut self.flush_lists, &table.table_changes);
        }
    }

    fn coarsen_past_budget(&mut self) {
        if !self.coarsened && self.flush_lists.len() > self.budget {
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

    /// Bumps `key` after every generation of the transaction (and of its
    /// commit group): the schema version, bumped once the DDL's generations
    /// are, so a reader that sees it move also sees them moved.
    pub fn bump_after_generations(&mut self, key: Key) {
        self.changes += 1;
        self.after_generations.insert(key);
    }

    /// Keys bumped after [`Self::generations`].
    pub fn after_generations(&self) -> &BTreeSet<Key> {
        &self.after_generations
    }

    /// The transaction changed the schema (a DDL message): the worker
    /// re-reads the catalog before mapping later changes.
    pub fn changes_schema(&self) -> bool {
        !self.after_generations.is_empty()
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
        self.flush_lists.is_empty()
            && self.generations.is_empty()
            && self.after_generations.is_empty()
    }

    /// Adds everything `other` invalidates (keys are moved, not copied).
    /// The union is not coarsened again: each part already kept to the
    /// budget.
    pub fn merge(&mut self, other: TxnInvalidations) {
        union(&mut self.flush_lists, other.flush_lists);
        union(&mut self.generations, other.generations);
        union(&mut self.touched_tables, other.touched_tables);
        union(&mut self.after_generations, other.after_generations);
        self.coarsened |= other.coarsened;
        self.changes += other.changes;
    }
}

/// One committed transaction of a [`CommitGroup`]: what its
/// acknowledgement and metrics need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    /// The Commit's `end_lsn`: what is acknowledged.
    pub end_lsn: Lsn,
    /// The commit time, for the commit-to-invalidated lag.
    pub commit_ts: PgTimestamp,
    /// Row changes and table-wide invalidations of the transaction.
    pub changes: u64,
    /// Whether the transaction went past the key budget.
    pub coarsened: bool,
    /// When the Commit message travelled from the server to the worker loop.
    pub arrival: CommitArrival,
}

/// When a Commit message was sent, read and received: the first stages of
/// its [`Stages`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitArrival {
    /// The server sent its XLogData (server clock, like `commit_ts`).
    pub sent: PgTimestamp,
    /// The stream task read it off the socket.
    pub read_at: Instant,
    /// The worker loop took it from the stream task's channel.
    pub received_at: Instant,
}

impl CommitArrival {
    /// An arrival at this instant (tests and callers without stream times).
    pub fn now() -> CommitArrival {
        let now = Instant::now();
        CommitArrival {
            sent: PgTimestamp::now(),
            read_at: now,
            received_at: now,
        }
    }
}

/// Where one commit spent the time between its commit and its
/// acknowledgement, stage by stage; the stages follow each other, so they
/// add up to the commit-to-invalidated lag. A stage whose clocks disagree
/// (the server's clock ahead of ours) counts as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stages {
    /// Commit timestamp to the server sending the Commit (server clock):
    /// the walsender decoding, or waiting to send.
    pub commit_to_send: Duration,
    /// The server sending it to the stream task reading it (across clocks):
    /// the network, socket buffers, and the stream task waiting to run.
    pub send_to_read: Duration,
    /// Read off the socket to taken by the worker loop: the channel, and the
    /// loop busy with other work.
    pub read_to_loop: Duration,
    /// Taken by the loop to its group starting (closing).
    pub loop_to_group: Duration,
    /// The group starting to its cache work finishing (the dispatched
    /// record included).
    pub group_to_applied: Duration,
    /// The cache work finishing to the commit being acknowledged, in commit
    /// order (waiting for earlier groups, and for the loop to notice).
    pub applied_to_published: Duration,
}

impl Stages {
    /// The stages of `commit` of `group`, acknowledged at `acked_at`
    /// (`acked_wall` on the system clock: the two convert the stream task's
    /// read instant to wall time, to compare with the server's send time).
    pub fn of(
        commit: &CommitInfo,
        group: &CommitGroup,
        acked_at: Instant,
        acked_wall: SystemTime,
    ) -> Stages {
        let arrival = &commit.arrival;
        let started = group.started_at.unwrap_or(acked_at);
        let applied = group.applied_at.unwrap_or(acked_at);
        let send_to_read = arrival
            .sent
            .to_system_time()
            .map_or(Duration::ZERO, |sent| {
                let read_wall = acked_wall
                    .checked_sub(acked_at.saturating_duration_since(arrival.read_at))
                    .unwrap_or(acked_wall);
                read_wall.duration_since(sent).unwrap_or_default()
            });
        let commit_to_send =
            Duration::from_micros(u64::try_from(arrival.sent.0 - commit.commit_ts.0).unwrap_or(0));
        Stages {
            commit_to_send,
            send_to_read,
            read_to_loop: arrival
                .received_at
                .saturating_duration_since(arrival.read_at),
            loop_to_group: started.saturating_duration_since(arrival.received_at),
            group_to_applied: applied.saturating_duration_since(started),
            applied_to_published: acked_at.saturating_duration_since(applied),
        }
    }
}

/// Consecutive committed transactions applied as one unit: the union of
/// their invalidations in one set of cache round trips. Deletes and bumps
/// commute and are idempotent, so applying the union does exactly the work
/// of applying each; the transactions are acknowledged, in commit order,
/// only once the whole union is applied.
#[derive(Debug, Default)]
pub struct CommitGroup {
    invalidations: TxnInvalidations,
    commits: Vec<CommitInfo>,
    /// When the group was closed and its application started.
    started_at: Option<Instant>,
    /// When its cache work finished.
    applied_at: Option<Instant>,
}

impl CommitGroup {
    /// Adds the next committed transaction.
    pub fn push(
        &mut self,
        txn: TxnInvalidations,
        end_lsn: Lsn,
        commit_ts: PgTimestamp,
        arrival: CommitArrival,
    ) {
        self.commits.push(CommitInfo {
            end_lsn,
            commit_ts,
            changes: txn.changes(),
            coarsened: txn.coarsened(),
            arrival,
        });
        self.invalidations.merge(txn);
    }

    /// Notes that the group closed and its application starts now.
    pub fn mark_started(&mut self) {
        self.started_at = Some(Instant::now());
    }

    /// Notes that the group's cache work finished now.
    pub fn mark_applied(&mut self) {
        self.applied_at = Some(Instant::now());
    }

    /// Transactions in the group.
    pub fn len(&self) -> usize {
        self.commits.len()
    }

    /// Flush-list and generation keys in the union.
    pub fn keys(&self) -> usize {
        self.invalidations.flush_lists().len()
            + self.invalidations.generations().len()
            + self.invalidations.after_generations().len()
    }

    /// No transaction yet.
    pub fn is_empty(&self) -> bool {
        self.commits.is_empty()
    }

    /// The union of the transactions' invalidations.
    pub fn invalidations(&self) -> &TxnInvalidations {
        &self.invalidations
    }

    /// The transactions, in commit order.
    pub fn commits(&self) -> &[CommitInfo] {
        &self.commits
    }

    /// The last transaction's `end_lsn`: the group's highest.
    pub fn last_end_lsn(&self) -> Option<Lsn> {
        self.commits.last().map(|commit| commit.end_lsn)
    }
}

/// Moves `other`'s keys into `set`, inserting the smaller set into the
/// larger (`BTreeSet::append` rebuilds the whole tree: merging many small
/// transactions into a group one by one would be quadratic).
fn union(set: &mut BTreeSet<Key>, mut other: BTreeSet<Key>) {
    if other.len() > set.len() {
        std::mem::swap(set, &mut other);
    }
    set.extend(other);
}

/// Inserts `key` unless present, cloning it only then.
fn insert_cloned(set: &mut BTreeSet<Key>, key: &Key) {
    if !set.contains(key) {
        set.insert(key.clone());
    }
}

#[cfg(test)]
mod tests {
    use cm_keys::{Invalidation, KeySpace, TableName};

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
    fn a_group_applies_the_union_and_keeps_each_commit() {
        let space = KeySpace::new("t").unwrap();
        let mut first = TxnInvalidations::new(10);
        first.add(invalidation(&space, "a", 1));
        let mut second = TxnInvalidations::new(1);
        second.add(invalidation(&space, "a", 1));
        second.add(invalidation(&space, "b", 2));
        assert!(second.coarsened());
        let mut group = CommitGroup::default();
        group.push(first, Lsn(10), PgTimestamp(1), CommitArrival::now());
        group.push(second, Lsn(20), PgTimestamp(2), CommitArrival::now());
        let union = group.invalidations();
        // a's object and change lists from the first; both tables' generations
        // from the coarsened second.
        assert_eq!(union.flush_lists().len(), 2);
        assert_eq!(union.generations().len(), 2);
        assert_eq!(
            group.keys(),
            4,
            "what the group closes on at the key budget"
        );
        assert_eq!(union.changes(), 3);
        assert!(union.coarsened());
        let lsns: Vec<Lsn> = group.commits().iter().map(|c| c.end_lsn).collect();
        assert_eq!(lsns, [Lsn(10), Lsn(20)]);
        assert_eq!(group.commits().iter().map(|c| c.changes).sum::<u64>(), 3);
    }

    /// The stages follow each other: with agreeing clocks they add up to the
    /// time from the commit to the acknowledgement, each one measured
    /// between its own two instants.
    #[test]
    fn stages_follow_each_other_and_add_up_to_the_lag() {
        let ms = Duration::from_millis;
        let acked_at = Instant::now();
        let acked_wall = SystemTime::now();
        // On the timeline, before the acknowledgement: commit 100 ms, sent
        // 90, read 70, received 60, group started 45, applied 15.
        let at = |before: u64| acked_at - ms(before);
        let wall = |before: u64| PgTimestamp::from_system_time(acked_wall - ms(before));
        let arrival = CommitArrival {
            sent: wall(90),
            read_at: at(70),
            received_at: at(60),
        };
        let mut group = CommitGroup::default();
        group.push(TxnInvalidations::new(1), Lsn(10), wall(100), arrival);
        group.started_at = Some(at(45));
        group.applied_at = Some(at(15));
        let stages = Stages::of(&group.commits()[0], &group, acked_at, acked_wall);
        let close = |got: Duration, want: u64| got.abs_diff(ms(want)) <= Duration::from_micros(2);
        assert!(close(stages.commit_to_send, 10), "{stages:?}");
        assert!(close(stages.send_to_read, 20), "{stages:?}");
        assert!(close(stages.read_to_loop, 10), "{stages:?}");
        assert!(close(stages.loop_to_group, 15), "{stages:?}");
        assert!(close(stages.group_to_applied, 30), "{stages:?}");
        assert!(close(stages.applied_to_published, 15), "{stages:?}");
    }

    /// A server clock ahead of ours makes a cross-clock stage zero, not a
    /// wrapped-around huge value.
    #[test]
    fn a_server_clock_ahead_gives_zero_not_garbage() {
        let acked_at = Instant::now();
        let acked_wall = SystemTime::now();
        let ahead = PgTimestamp::from_system_time(acked_wall + Duration::from_secs(5));
        let arrival = CommitArrival {
            sent: ahead,
            read_at: acked_at,
            received_at: acked_at,
        };
        let mut group = CommitGroup::default();
        group.push(TxnInvalidations::new(1), Lsn(10), ahead, arrival);
        let stages = Stages::of(&group.commits()[0], &group, acked_at, acked_wall);
        assert_eq!(stages.send_to_read, Duration::ZERO);
        assert_eq!(stages.commit_to_send, Duration::ZERO);
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

    #[test]
    fn an_ancestor_gets_its_change_list_and_follows_the_row_s_bump() {
        let space = KeySpace::new("t").unwrap();
        let parent = TableName::new("public", "animal");
        let parent_keys = TableKeys {
            table_changes: space.table_changes(&parent),
            table_generation: space.table_generation(&parent),
        };
        let mut txn = TxnInvalidations::new(10);
        txn.add(invalidation(&space, "dog", 1));
        txn.add_related_table(&parent_keys, false);
        assert!(txn.flush_lists().contains(&parent_keys.table_changes));
        assert!(txn.generations().is_empty());
        txn.add_related_table(&parent_keys, true);
        assert!(txn.generations().contains(&parent_keys.table_generation));
        assert_eq!(txn.changes(), 1, "the ancestor is no change of its own");
    }
}
