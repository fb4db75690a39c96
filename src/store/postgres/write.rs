//! Writing a batch: every op but messages pipelined in batch order, then the messages by binary
//! COPY — straight into the table, or staged when the batch is a retry (see the module doc).

use super::conn::Conn;
use super::{PgUuid, MESSAGE_TYPES};
use crate::store::Op;
use postgres_types::ToSql;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::Poll;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::Statement;

/// Applies one batch: straight, or when that finds a message already stored, again with the
/// messages staged (see the module doc).
pub(super) async fn write(conn: &mut Conn, ops: &[Op]) -> Result<(), tokio_postgres::Error> {
    match write_batch(conn, ops, MessagePath::Direct).await {
        // Only the messages' primary key can clash: every other statement skips conflicts.
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tracing::debug!("batch holds messages already stored (a retry); writing it again, skipping those");
            write_batch(conn, ops, MessagePath::Staged).await
        }
        done => done,
    }
}

/// How a batch's messages get into `messages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessagePath {
    /// COPY into the table: fastest, fails on a message already there.
    Direct,
    /// COPY into the staging table, then `INSERT … ON CONFLICT DO NOTHING`.
    Staged,
}

/// Applies one batch in one transaction, its messages by `path`.
async fn write_batch(conn: &mut Conn, ops: &[Op], path: MessagePath) -> Result<(), tokio_postgres::Error> {
    let Conn { client, statements: st, .. } = conn;
    let tx = client.transaction().await?;

    // Every op but messages, in batch order. The parameters are owned by the futures, which are
    // all created (and so all sent, see `pipeline`) before the first answer is awaited.
    type Params = Vec<Box<dyn ToSql + Sync + Send>>;
    fn p(value: impl ToSql + Sync + Send + 'static) -> Box<dyn ToSql + Sync + Send> {
        Box::new(value)
    }
    // Cluster mode: lock each stream's position row for this transaction and read it, so that
    // of two nodes writing the same entries one writes them and the other skips them
    // (`logged_writes`). One extra round trip, only for batches that hold log entries.
    let streams = crate::store::logged_streams(ops);
    let mut held = Vec::with_capacity(streams.len());
    for stream in streams {
        tx.execute(&st.log_position_row, &[&stream]).await?;
        let seq: i64 = tx.query_one(&st.log_position_lock, &[&stream]).await?.try_get(0)?;
        held.push((stream, seq));
    }
    let (list, positions) = if held.is_empty() {
        (ops.iter().collect::<Vec<&Op>>(), Vec::new())
    } else {
        let logged = crate::store::logged_writes(ops, &held);
        (logged.ops, logged.positions)
    };
    let mut pending = Vec::new();
    let mut touched: Vec<(PgUuid, i64)> = Vec::new();
    for op in list.iter().copied() {
        let (statement, params): (&Statement, Params) = match op {
            Op::UpsertUser(u) => {
                (&st.upsert_user, vec![p(u.id), p(u.uuid.clone()), p(u.display_name.clone()), p(u.left_ns)])
            }
            Op::DeleteUser { id } => (&st.delete_user, vec![p(*id)]),
            Op::InsertSession(s) => {
                (&st.insert_session, vec![p(PgUuid(s.uuid)), p(s.user_id), p(s.created_ns), p(s.last_active_ns)])
            }
            Op::DeleteSession { uuid } => (&st.delete_session, vec![p(PgUuid(*uuid))]),
            Op::TouchSessions(touches) => {
                // All of the batch's in one statement, after its other ops (see below).
                touched.extend(touches.iter().map(|&(u, ns)| (PgUuid(u), ns)));
                continue;
            }
            Op::AddContact { a, b } => (&st.add_contact, vec![p(*a), p(*b)]),
            Op::RemoveContact { a, b } => (&st.remove_contact, vec![p(*a), p(*b)]),
            Op::Watermark { user_id, left_ns } => (&st.watermark, vec![p(*user_id), p(*left_ns)]),
            // Flattened by `logged_writes`.
            Op::Logged { .. } => continue,
            Op::Message(_) => continue,
        };
        pending.push(tx.execute_raw(statement, params));
    }
    // A touch only ever raises `last_active` of a session that exists, and a session's uuid is
    // never reused: applying a batch's touches together after its other ops ends in the same rows
    // as applying each in place, in one statement instead of one per op (in cluster mode every
    // message sent carries one).
    if !touched.is_empty() {
        let (uuids, times): (Vec<PgUuid>, Vec<i64>) = touched.into_iter().unzip();
        pending.push(tx.execute_raw(&st.touch_sessions, vec![p(uuids), p(times)]));
    }
    for (stream, l) in &positions {
        let params: Params = vec![p(stream.to_string()), p(l.seq), p(l.created_ns), p(l.user_id)];
        pending.push(tx.execute_raw(&st.log_position, params));
    }
    pipeline(pending).await?;

    // The messages: no foreign keys, and nothing above touches the table, so they can go last.
    if list.iter().any(|op| matches!(op, Op::Message(_))) {
        let copy = if path == MessagePath::Direct { &st.copy_messages } else { &st.copy_staged };
        let sink = tx.copy_in(copy).await?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &MESSAGE_TYPES));
        for op in &list {
            let Op::Message(m) = op else { continue };
            writer
                .as_mut()
                .write(&[&m.created_ns, &PgUuid(m.uuid), &m.sender_id, &m.receiver_id, &m.body, &m.attachments])
                .await?;
        }
        writer.finish().await?;
        if path == MessagePath::Staged {
            tx.execute(&st.merge_staged, &[]).await?;
        }
    }
    tx.commit().await
}

/// Awaits `futures` — requests on one connection — so that they are all *sent* first, in order,
/// and only then awaited, in order: one round trip for the lot instead of one each.
/// tokio-postgres queues a request on the first poll of its future, and the server runs a
/// connection's requests in the order they arrive.
async fn pipeline<F>(futures: Vec<F>) -> Result<(), tokio_postgres::Error>
where
    F: Future<Output = Result<u64, tokio_postgres::Error>>,
{
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut done = vec![false; futures.len()];
    std::future::poll_fn(|cx| {
        for (future, done) in futures.iter_mut().zip(done.iter_mut()) {
            if let Poll::Ready(result) = future.as_mut().poll(cx) {
                result?;
                *done = true;
            }
        }
        Poll::Ready(Ok::<(), tokio_postgres::Error>(()))
    })
    .await?;
    for (future, done) in futures.iter_mut().zip(done) {
        if !done {
            future.await?;
        }
    }
    Ok(())
}
