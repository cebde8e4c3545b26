//! The CopyBoth stream: a background task owns the socket, decodes pgoutput,
//! hands messages to the consumer through a bounded channel, and answers the
//! server on its own.
//!
//! Messages cross the channel in batches: everything one socket read brought
//! (up to [`MAX_BATCH`] messages) goes over in one send, so a busy stream
//! costs one task wake-up per read instead of one per message. Each message
//! is recorded in the [`AckGate`] as received, in stream order, when it is
//! decoded, before a keepalive that follows it in the stream is looked at.
//!
//! Why a task: the walsender disconnects a client that stays silent for
//! `wal_sender_timeout`, and a silent client also delays a fast shutdown of
//! PostgreSQL (the walsender waits for our confirmation of everything it
//! sent before it exits). The consumer may block for a
//! long time on memcached, so status updates must not depend on it: the task
//! replies to every `replyRequested` keepalive at once and sends a status
//! update every `status_interval`, also while the channel is full.
//!
//! At a fast shutdown the walsender waits until the `flush` we report (our
//! `write` only while we never confirmed anything) equals its sent position
//! (`WalSndDone` in walsender.c). Once the consumer has acknowledged all it
//! received, the next keepalive's `walEnd` becomes our flush and the
//! shutdown proceeds at once; unfinished work holds it, at most for
//! `wal_sender_timeout`, because confirming it would lose it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{interval, MissedTickBehavior};

use cm_pgoutput::{
    Decoder, LogicalMessage, Lsn, PgTimestamp, ReplicationMessage, StandbyStatusUpdate,
};

use crate::ack::{AckError, AckGate};
use crate::error::ReplicationError;
use crate::names::SlotName;
use crate::wire::{server_error, Backend, Wire};

/// What START_REPLICATION needs.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// The slot to stream from.
    pub slot: SlotName,
    /// Publications whose changes we want.
    pub publications: Vec<String>,
    /// Keep `0/0`: the server then starts at the slot's `confirmed_flush_lsn`.
    /// A higher value makes it skip every transaction committed below it.
    pub start_lsn: Lsn,
    /// How often to send a status update without being asked.
    pub status_interval: Duration,
    /// Decoded messages buffered between the socket and the consumer
    /// (rounded to whole batches of up to [`MAX_BATCH`]).
    pub channel_capacity: usize,
    /// The highest flush position to report until [`Acker::raise_ceiling`]
    /// lifts it; `None` (the default) for no ceiling. See the ceiling in
    /// [`AckGate`]'s documentation.
    pub ack_ceiling: Option<Lsn>,
}

impl StartOptions {
    /// Options with the safe defaults: start at `0/0`, status every second.
    pub fn new<P: Into<String>>(
        slot: SlotName,
        publications: impl IntoIterator<Item = P>,
    ) -> StartOptions {
        StartOptions {
            slot,
            publications: publications.into_iter().map(Into::into).collect(),
            start_lsn: Lsn::INVALID,
            status_interval: Duration::from_secs(1),
            channel_capacity: 1024,
            ack_ceiling: None,
        }
    }
}

/// Most messages handed to the consumer in one batch.
pub const MAX_BATCH: usize = 256;

/// What crosses the channel: the messages of one socket read, or why the
/// stream ended.
type Batch = Result<Vec<StreamEvent>, ReplicationError>;

/// One decoded pgoutput message with its XLogData positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    /// XLogData `dataStart`: not unique, never a resume position (BEGIN and
    /// every row of a transaction share it).
    pub wal_start: Lsn,
    /// XLogData `walEnd`.
    pub wal_end: Lsn,
    /// XLogData `sendTime`: when the server sent it, on the server's clock
    /// (the clock of a Commit's `commit_ts`).
    pub send_time: PgTimestamp,
    /// When the stream task read it off the socket (the socket read that
    /// brought it), for the worker's per-stage lag.
    pub read_at: Instant,
    /// The message.
    pub message: LogicalMessage,
}

/// Positions as last reported (or about to be reported) to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Furthest position received.
    pub received: Lsn,
    /// Furthest position confirmed as done.
    pub flushed: Lsn,
}

struct Shared {
    gate: Mutex<AckGate>,
    /// Wakes the task to send a status update: the flush moved.
    acked: Notify,
    /// Wakes [`Acker::ceiling_request`]: the ceiling holds the flush back.
    ceiling_wanted: Notify,
    /// The done position ([`AckGate::done`]), for [`Acker::applied`].
    done: watch::Sender<Lsn>,
}

impl Shared {
    fn gate(&self) -> MutexGuard<'_, AckGate> {
        // A panic while holding this lock cannot leave the gate half-updated
        // in a way that matters (every method updates one field last), so a
        // poisoned lock is still usable.
        self.gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// After a change of the gate: wakes whoever waits to raise the ceiling
    /// when it holds work back, and publishes a done position that moved.
    fn note_change(&self, gate: &AckGate) {
        if gate.ceiling_request().is_some() {
            self.ceiling_wanted.notify_one();
        }
        let done = gate.done();
        self.done.send_if_modified(|published| {
            let moved = done > *published;
            if moved {
                *published = done;
            }
            moved
        });
    }
}

/// Lets the consumer report finished work; cheap to clone and `Send`.
#[derive(Clone)]
pub struct Acker {
    shared: Arc<Shared>,
}

impl Acker {
    /// The transaction ending at `end_lsn`, and every one received before
    /// it, is fully applied. See [`AckGate::commit_done`].
    pub fn commit_done(&self, end_lsn: Lsn) -> Result<Lsn, AckError> {
        let flushed = {
            let mut gate = self.shared.gate();
            let flushed = gate.commit_done(end_lsn)?;
            self.shared.note_change(&gate);
            flushed
        };
        self.shared.acked.notify_one();
        Ok(flushed)
    }

    /// The standalone logical message at `lsn` is handled. Returns the
    /// flush position, which moves when this confirms a remembered keepalive
    /// (see [`AckGate::message_done`]).
    pub fn message_done(&self, lsn: Lsn) -> Result<Lsn, AckError> {
        let (before, after) = {
            let mut gate = self.shared.gate();
            let before = gate.flush();
            let after = gate.message_done(lsn)?;
            self.shared.note_change(&gate);
            (before, after)
        };
        if after > before {
            self.shared.acked.notify_one();
        }
        Ok(after)
    }

    /// Waits until the ceiling holds back work that is done (commits or
    /// settled keepalives), then returns the position to raise it to: the
    /// furthest received. Persist it, then call [`Acker::raise_ceiling`].
    /// Waits forever on a stream started without a ceiling. Cancel-safe.
    pub async fn ceiling_request(&self) -> Lsn {
        loop {
            if let Some(wanted) = self.shared.gate().ceiling_request() {
                return wanted;
            }
            // notify_one keeps a permit when nobody waits, so a request
            // made between the check above and this wait is not lost.
            self.shared.ceiling_wanted.notified().await;
        }
    }

    /// Lets the reported flush rise up to `ceiling`, which the caller has
    /// persisted; a status update goes out at once when the flush moves.
    /// Returns the flush position afterwards.
    pub fn raise_ceiling(&self, ceiling: Lsn) -> Lsn {
        let (before, after) = {
            let mut gate = self.shared.gate();
            let before = gate.flush();
            let after = gate.raise_ceiling(ceiling);
            self.shared.note_change(&gate);
            (before, after)
        };
        if after > before {
            self.shared.acked.notify_one();
        }
        after
    }

    /// The furthest position whose work is done, ceiling aside: every
    /// transaction committed at or below it was reported done, and nothing
    /// at or below it is outstanding. Changes whenever it moves (a commit
    /// reported done, a keepalive settled); starts at `0/0`.
    pub fn applied(&self) -> watch::Receiver<Lsn> {
        self.shared.done.subscribe()
    }

    /// Current received and flushed positions.
    pub fn progress(&self) -> Progress {
        let gate = self.shared.gate();
        Progress {
            received: gate.last_received(),
            flushed: gate.flush(),
        }
    }
}

/// A running logical replication stream.
pub struct ReplicationStream {
    events: mpsc::Receiver<Batch>,
    /// The rest of the last batch received, in stream order.
    pending: std::vec::IntoIter<StreamEvent>,
    acker: Acker,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ReplicationError>>,
}

impl ReplicationStream {
    pub(crate) fn spawn(wire: Wire, options: StartOptions) -> ReplicationStream {
        let gate = match options.ack_ceiling {
            Some(ceiling) => AckGate::with_ceiling(ceiling),
            None => AckGate::new(),
        };
        let shared = Arc::new(Shared {
            gate: Mutex::new(gate),
            acked: Notify::new(),
            ceiling_wanted: Notify::new(),
            done: watch::channel(Lsn::INVALID).0,
        });
        let batches = options.channel_capacity.div_ceil(MAX_BATCH).max(1);
        let (events_tx, events) = mpsc::channel(batches);
        let (stop, stop_rx) = oneshot::channel();
        let pump = Pump {
            wire,
            shared: Arc::clone(&shared),
            events: events_tx,
            decoder: Decoder::new(),
            status_interval: options.status_interval,
        };
        ReplicationStream {
            events,
            pending: Vec::new().into_iter(),
            acker: Acker { shared },
            stop: Some(stop),
            task: tokio::spawn(pump.run(stop_rx)),
        }
    }

    /// The next decoded message; an error ends the stream (reconnect from 0/0).
    /// `None` once the stream has ended. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<StreamEvent, ReplicationError>> {
        loop {
            if let Some(event) = self.pending.next() {
                return Some(Ok(event));
            }
            match self.events.recv().await? {
                Ok(batch) => self.pending = batch.into_iter(),
                Err(error) => return Some(Err(error)),
            }
        }
    }

    /// Whether [`ReplicationStream::next`] has a message (or the stream's
    /// end) ready without waiting for the socket: the consumer can batch
    /// work until this turns false.
    pub fn has_buffered(&self) -> bool {
        !self.pending.as_slice().is_empty() || !self.events.is_empty()
    }

    /// A handle to report finished work.
    pub fn acker(&self) -> Acker {
        self.acker.clone()
    }

    /// Sends a last status update, then CopyDone, and waits for the server
    /// to end the stream. Messages not yet acknowledged will be sent again by
    /// the next START_REPLICATION.
    pub async fn stop(mut self) -> Result<(), ReplicationError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.events.close();
        match (&mut self.task).await {
            Ok(result) => result,
            Err(join) => Err(ReplicationError::Protocol(format!(
                "replication task failed: {join}"
            ))),
        }
    }
}

impl Drop for ReplicationStream {
    fn drop(&mut self) {
        // Without stop(), the connection just goes away: nothing unacknowledged
        // was confirmed, so nothing is lost.
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

/// The task's state: the socket, the ack gate and the consumer's channel.
struct Pump {
    wire: Wire,
    shared: Arc<Shared>,
    events: mpsc::Sender<Batch>,
    decoder: Decoder,
    status_interval: Duration,
}

impl Pump {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) -> Result<(), ReplicationError> {
        let result = self.pump(&mut stop).await;
        match result {
            Ok(()) => self.finish().await,
            Err(error) => {
                // The consumer learns why the stream ended; the task's own
                // result is for stop().
                let summary = error.to_string();
                let _ = self.events.send(Err(error)).await;
                Err(ReplicationError::AlreadyEnded(summary))
            }
        }
    }

    /// Reads until asked to stop; returns Ok(()) only for a requested stop.
    async fn pump(&mut self, stop: &mut oneshot::Receiver<()>) -> Result<(), ReplicationError> {
        let mut ticker = interval(self.status_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let shared = Arc::clone(&self.shared);
        loop {
            let wake = tokio::select! {
                _ = &mut *stop => return Ok(()),
                _ = ticker.tick() => None,
                _ = shared.acked.notified() => None,
                backend = self.wire.read() => Some(backend?),
            };
            let Some(first) = wake else {
                self.send_status().await?;
                continue;
            };
            let read_at = Instant::now();
            let (batch, error) = self.read_batch(first, read_at).await;
            if !batch.is_empty() && !self.deliver(batch, stop, &mut ticker).await? {
                return Ok(());
            }
            if let Some(error) = error {
                return Err(error);
            }
        }
    }

    /// Handles `first` and every further message already buffered, up to
    /// [`MAX_BATCH`] events. An error stops the batch; the events before it
    /// are returned with it.
    async fn read_batch(
        &mut self,
        first: Backend,
        read_at: Instant,
    ) -> (Vec<StreamEvent>, Option<ReplicationError>) {
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(backend) = next.take() {
            match self.handle(backend, read_at).await {
                Ok(Some(event)) => batch.push(event),
                Ok(None) => {}
                Err(error) => return (batch, Some(error)),
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            match self.wire.read_buffered() {
                Ok(buffered) => next = buffered,
                Err(error) => return (batch, Some(error)),
            }
        }
        (batch, None)
    }

    /// Handles one backend message; returns a decoded event for the
    /// consumer, already recorded in the gate as received; `read_at` is
    /// when the socket read that brought it returned.
    async fn handle(
        &mut self,
        backend: Backend,
        read_at: Instant,
    ) -> Result<Option<StreamEvent>, ReplicationError> {
        let body = match backend {
            Backend::Message(Message::CopyData(body)) => body.into_bytes(),
            Backend::Message(Message::ErrorResponse(body)) => return Err(server_error(&body)),
            Backend::Message(Message::CopyDone) => {
                return Err(ReplicationError::EndedByServer("CopyDone"))
            }
            Backend::Message(Message::CommandComplete(_)) => {
                return Err(ReplicationError::EndedByServer("CommandComplete"))
            }
            Backend::Message(Message::NoticeResponse(_) | Message::ParameterStatus(_)) => {
                return Ok(None)
            }
            _ => {
                return Err(ReplicationError::Protocol(
                    "unexpected message inside the CopyBoth stream".into(),
                ))
            }
        };
        match ReplicationMessage::parse(body)? {
            ReplicationMessage::PrimaryKeepalive(keepalive) => {
                {
                    let mut gate = self.shared.gate();
                    gate.keepalive(keepalive.wal_end);
                    self.shared.note_change(&gate);
                }
                if keepalive.reply_requested {
                    self.send_status().await?;
                }
                Ok(None)
            }
            ReplicationMessage::XLogData(x) => {
                let message = self.decoder.decode(x.data)?;
                reject_unnegotiated(&message)?;
                self.shared
                    .gate()
                    .received(&message, x.wal_end)
                    .map_err(|e| ReplicationError::Protocol(e.to_string()))?;
                Ok(Some(StreamEvent {
                    wal_start: x.wal_start,
                    wal_end: x.wal_end,
                    send_time: x.send_time,
                    read_at,
                    message,
                }))
            }
        }
    }

    /// Queues a batch for the consumer. While the channel is full, keeps
    /// sending status updates. Returns false when the stream should stop
    /// instead (stop requested or the consumer went away).
    async fn deliver(
        &mut self,
        batch: Vec<StreamEvent>,
        stop: &mut oneshot::Receiver<()>,
        ticker: &mut tokio::time::Interval,
    ) -> Result<bool, ReplicationError> {
        let events = self.events.clone();
        loop {
            let permit = tokio::select! {
                permit = events.reserve() => permit,
                _ = ticker.tick() => {
                    self.send_status().await?;
                    continue;
                }
                _ = &mut *stop => return Ok(false),
            };
            let Ok(permit) = permit else {
                // The consumer dropped its receiver: nothing more to deliver.
                return Ok(false);
            };
            permit.send(Ok(batch));
            return Ok(true);
        }
    }

    /// Sends `r` with write = last received, flush = apply = last durable.
    async fn send_status(&mut self) -> Result<(), ReplicationError> {
        let (write, flush) = {
            let gate = self.shared.gate();
            (gate.last_received(), gate.flush())
        };
        let update = StandbyStatusUpdate {
            write,
            flush,
            apply: flush,
            send_time: PgTimestamp::now(),
            reply_requested: false,
        };
        let mut buf = BytesMut::new();
        frontend::CopyData::new(update.encode())
            .map_err(|e| ReplicationError::Protocol(format!("encoding status update: {e}")))?
            .write(&mut buf);
        self.wire.send(&buf).await
    }

    /// A requested stop: last status, CopyDone, then drain until the server
    /// closes the copy (messages arriving meanwhile are dropped unacknowledged).
    async fn finish(&mut self) -> Result<(), ReplicationError> {
        self.send_status().await?;
        let mut buf = BytesMut::new();
        frontend::copy_done(&mut buf);
        self.wire.send(&buf).await?;
        let drain = async {
            loop {
                match self.wire.read().await {
                    Ok(Backend::Message(Message::ReadyForQuery(_))) => return Ok(()),
                    Ok(Backend::Message(Message::ErrorResponse(body))) => {
                        return Err(server_error(&body))
                    }
                    Ok(_) => {}
                    Err(ReplicationError::Closed) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .map_err(|_| {
                ReplicationError::Protocol("server did not end the copy within 10 s".into())
            })??;
        buf.clear();
        frontend::terminate(&mut buf);
        let _ = self.wire.send(&buf).await;
        Ok(())
    }
}

/// We never ask for streaming or two-phase; if such messages arrive anyway
/// (a slot whose two_phase was flipped), stop rather than
/// apply changes at PREPARE time or skip them.
fn reject_unnegotiated(message: &LogicalMessage) -> Result<(), ReplicationError> {
    match message {
        LogicalMessage::BeginPrepare(_)
        | LogicalMessage::Prepare(_)
        | LogicalMessage::CommitPrepared(_)
        | LogicalMessage::RollbackPrepared(_)
        | LogicalMessage::StreamPrepare(_) => Err(ReplicationError::Protocol(format!(
            "two-phase message '{}' on a session that did not negotiate two_phase: \
             the slot's two_phase flag was turned on; drop and re-create the slot",
            char::from(message.tag())
        ))),
        LogicalMessage::StreamStart(_)
        | LogicalMessage::StreamStop
        | LogicalMessage::StreamCommit(_)
        | LogicalMessage::StreamAbort(_) => Err(ReplicationError::Protocol(format!(
            "streaming message '{}' on a session that did not negotiate streaming",
            char::from(message.tag())
        ))),
        _ => Ok(()),
    }
}
