//! SQL snapshots: a query returning `user_id` (and `value` for a computed trait), streamed row
//! by row from SQLite or Postgres. A query error or a missing column fails the computation
//! with the database's own message.

use futures::TryStreamExt;
use serde_json::Value;
use sqlx::{Column, Row, TypeInfo, ValueRef};
use tokio::runtime::Handle;

use super::SnapshotError;
use super::member::{Push, Rules, check_user_id};
use super::value::canonical_value;
use crate::config::Secret;
use crate::record::{JsonText, SnapshotRecord};

pub fn read(handle: &Handle, url: &Secret, query: &str, rules: Rules, push: &mut Push) -> Result<(), SnapshotError> {
    let name = crate::redact::redact_url(url.expose());
    let err = |line: Option<u64>, field: Option<&'static str>, m: String| SnapshotError::new(&name, line, field, m);
    handle.block_on(async {
        if url.expose().starts_with("sqlite:") {
            crate::sqlite_memory::configure_sqlite();
            let options: sqlx::sqlite::SqliteConnectOptions = url
                .expose()
                .parse::<sqlx::sqlite::SqliteConnectOptions>()
                .map_err(|e| err(None, None, e.to_string()))?
                .read_only(true);
            let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect_with(options).await;
            let pool = pool.map_err(|e| err(None, None, format!("cannot connect: {e}")))?;
            drain(sqlx::query(sqlx::AssertSqlSafe(query.to_string())).fetch(&pool), &name, rules, push, sqlite_value)
                .await
        } else {
            let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(url.expose()).await;
            let pool = pool.map_err(|e| err(None, None, format!("cannot connect: {e}")))?;
            drain(sqlx::query(sqlx::AssertSqlSafe(query.to_string())).fetch(&pool), &name, rules, push, pg_value).await
        }
    })
}

/// Every row of a query, as records.
async fn drain<R: Row>(
    mut rows: futures::stream::BoxStream<'_, Result<R, sqlx::Error>>,
    name: &str,
    rules: Rules,
    push: &mut Push<'_>,
    value_of: fn(&R, usize) -> Result<Value, String>,
) -> Result<(), SnapshotError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut n = 0;
    while let Some(row) =
        rows.try_next().await.map_err(|e| SnapshotError::new(name, None, None, format!("query failed: {e}")))?
    {
        n += 1;
        push(record(name, n, &row, rules, value_of)?)?;
    }
    Ok(())
}

/// One row as a record; `n` (the row's position) stands in for a line number.
fn record<R: Row>(
    name: &str,
    n: u64,
    row: &R,
    rules: Rules,
    value_of: fn(&R, usize) -> Result<Value, String>,
) -> Result<SnapshotRecord, SnapshotError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let column = |want: &str| row.columns().iter().position(|c| c.name() == want);
    let found = || row.columns().iter().map(|c| c.name().to_string()).collect::<Vec<_>>().join(", ");
    let user_col = column("user_id").ok_or_else(|| {
        SnapshotError::new(
            name,
            Some(n),
            Some("user_id"),
            format!("the query returns no user_id column (columns: {})", found()),
        )
    })?;
    let user_id: String = row
        .try_get(user_col)
        .map_err(|e| SnapshotError::new(name, Some(n), Some("user_id"), format!("user_id must be text: {e}")))?;
    check_user_id(name, n, &user_id, rules)?;
    let value: JsonText = match super::member_value(rules.kind) {
        Some(v) => v.into(),
        None => {
            let col = column("value").ok_or_else(|| {
                SnapshotError::new(
                    name,
                    Some(n),
                    Some("value"),
                    format!("the query returns no value column (columns: {})", found()),
                )
            })?;
            let v = value_of(row, col).map_err(|m| SnapshotError::new(name, Some(n), Some("value"), m))?;
            canonical_value(&v, rules.allow_structured)
                .map_err(|m| SnapshotError::new(name, Some(n), Some("value"), format!("{m} (user {user_id:?})")))?
                .into()
        }
    };
    Ok(SnapshotRecord { user_id, value, line: n })
}

/// A SQLite value by its storage class.
fn sqlite_value(row: &sqlx::sqlite::SqliteRow, col: usize) -> Result<Value, String> {
    let raw = row.try_get_raw(col).map_err(|e| e.to_string())?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let kind = raw.type_info().name().to_ascii_uppercase();
    let e = |e: sqlx::Error| e.to_string();
    Ok(match kind.as_str() {
        "INTEGER" | "INT" | "BIGINT" => Value::from(row.try_get::<i64, _>(col).map_err(e)?),
        "REAL" | "FLOAT" | "DOUBLE" => Value::from(row.try_get::<f64, _>(col).map_err(e)?),
        "BOOLEAN" => Value::from(row.try_get::<bool, _>(col).map_err(e)?),
        "TEXT" => Value::from(row.try_get::<String, _>(col).map_err(e)?),
        other => return Err(format!("SQLite type {other} is not a string, number or boolean")),
    })
}

/// A Postgres value by its column type.
fn pg_value(row: &sqlx::postgres::PgRow, col: usize) -> Result<Value, String> {
    let raw = row.try_get_raw(col).map_err(|e| e.to_string())?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let kind = raw.type_info().name().to_string();
    let e = |e: sqlx::Error| e.to_string();
    Ok(match kind.as_str() {
        "INT2" => Value::from(row.try_get::<i16, _>(col).map_err(e)?),
        "INT4" => Value::from(row.try_get::<i32, _>(col).map_err(e)?),
        "INT8" => Value::from(row.try_get::<i64, _>(col).map_err(e)?),
        "FLOAT4" => Value::from(row.try_get::<f32, _>(col).map_err(e)?),
        "FLOAT8" => Value::from(row.try_get::<f64, _>(col).map_err(e)?),
        "BOOL" => Value::from(row.try_get::<bool, _>(col).map_err(e)?),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" => Value::from(row.try_get::<String, _>(col).map_err(e)?),
        "JSON" | "JSONB" => row.try_get::<Value, _>(col).map_err(e)?,
        other => {
            return Err(format!(
                "Postgres type {other} is not supported; cast it in the query (to float8, text or jsonb)"
            ));
        }
    })
}
