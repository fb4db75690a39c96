//! Reading everything back at start, in one consistent snapshot, by binary `COPY … TO STDOUT`.

use super::conn::Conn;
use super::{PgUuid, MESSAGE_TYPES};
use crate::store::{LogPosition, MessageRow, SessionRow, Snapshot, UserRow};
use futures_util::StreamExt;
use postgres_types::Type;
use std::pin::pin;
use tokio_postgres::binary_copy::{BinaryCopyOutRow, BinaryCopyOutStream};
use tokio_postgres::IsolationLevel;

/// Reads everything, in one consistent snapshot.
pub(super) async fn load_all(conn: &mut Conn) -> Result<Snapshot, tokio_postgres::Error> {
    let tx =
        conn.client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
    let mut snap = Snapshot::default();
    copy_out(
        &tx,
        "SELECT id, uuid, display_name, left_ns FROM users ORDER BY id",
        &[Type::INT8, Type::TEXT, Type::TEXT, Type::INT8],
        |r| {
            snap.users.push(UserRow {
                id: r.try_get(0)?,
                uuid: r.try_get::<&str>(1)?.to_owned(),
                display_name: r.try_get::<&str>(2)?.to_owned(),
                left_ns: r.try_get(3)?,
            });
            Ok(())
        },
    )
    .await?;
    copy_out(
        &tx,
        "SELECT uuid, user_id, created_ns, last_active_ns FROM sessions ORDER BY created_ns",
        &[Type::UUID, Type::INT8, Type::INT8, Type::INT8],
        |r| {
            snap.sessions.push(SessionRow {
                uuid: r.try_get::<PgUuid>(0)?.0,
                user_id: r.try_get(1)?,
                created_ns: r.try_get(2)?,
                last_active_ns: r.try_get(3)?,
            });
            Ok(())
        },
    )
    .await?;
    copy_out(&tx, "SELECT user_a, user_b FROM contacts ORDER BY user_a, user_b", &[Type::INT8, Type::INT8], |r| {
        snap.contacts.push((r.try_get(0)?, r.try_get(1)?));
        Ok(())
    })
    .await?;
    copy_out(
        &tx,
        "SELECT created_ns, uuid, sender_id, receiver_id, body, attachments FROM messages ORDER BY created_ns",
        &MESSAGE_TYPES,
        |r| {
            snap.messages.push(MessageRow {
                created_ns: r.try_get(0)?,
                uuid: r.try_get::<PgUuid>(1)?.0,
                sender_id: r.try_get(2)?,
                receiver_id: r.try_get(3)?,
                body: r.try_get::<&str>(4)?.to_owned(),
                attachments: r.try_get::<Option<&str>>(5)?.map(str::to_owned),
            });
            Ok(())
        },
    )
    .await?;
    let high = tx
        .query_one("SELECT GREATEST((SELECT id FROM user_id_high), (SELECT COALESCE(max(id), 0) FROM users))", &[])
        .await?;
    snap.max_user_id = high.try_get(0)?;
    for row in tx.query("SELECT stream, seq, created_ns, user_id FROM log_position ORDER BY stream", &[]).await? {
        let position = LogPosition { seq: row.try_get(1)?, created_ns: row.try_get(2)?, user_id: row.try_get(3)? };
        snap.log_positions.push((row.try_get(0)?, position));
    }
    tx.commit().await?;
    Ok(snap)
}

/// Streams the rows of `query` (whose columns have `types`) through `row`, in binary COPY format.
async fn copy_out(
    tx: &tokio_postgres::Transaction<'_>,
    query: &str,
    types: &[Type],
    mut row: impl FnMut(&BinaryCopyOutRow) -> Result<(), tokio_postgres::Error>,
) -> Result<(), tokio_postgres::Error> {
    let stream = tx.copy_out(&format!("COPY ({query}) TO STDOUT (FORMAT binary)")).await?;
    let mut rows = pin!(BinaryCopyOutStream::new(stream, types));
    while let Some(r) = rows.next().await {
        row(&r?)?;
    }
    Ok(())
}
