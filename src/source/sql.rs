//! SQL snapshots: a query returning `user_id` (and `value` for a computed trait), streamed row
//! by row from SQLite or Postgres. A query error or a missing column fails the computation
//! with the database's own message.

use futures::TryStreamExt;
use serde_json::Value;
use sqlx::AssertSqlSafe;
use sqlx::{Column, Executor, Row, SqlSafeStr, TypeInfo, ValueRef};
use tokio::runtime::Handle;

use super::SnapshotError;
use super::member::{Push, Rules, check_user_id};
use super::value::{MAX_VALUE_BYTES, canonical_value};
use crate::config::Secret;
use crate::record::{JsonText, SnapshotRecord};

pub fn read(handle: &Handle, url: &Secret, query: &str, rules: Rules, push: &mut Push) -> Result<(), SnapshotError> {
    let name = crate::redact::redact_url(url.expose());
    let err = |m: String| SnapshotError::new(&name, None, None, m);
    handle.block_on(async {
        if url.expose().starts_with("sqlite:") {
            crate::sqlite_memory::configure_sqlite();
            let options: sqlx::sqlite::SqliteConnectOptions = url
                .expose()
                .parse::<sqlx::sqlite::SqliteConnectOptions>()
                .map_err(|e| err(e.to_string()))?
                .read_only(true);
            let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect_with(options).await;
            let pool = pool.map_err(|e| err(format!("cannot connect: {e}")))?;
            let prepared = pool.prepare(AssertSqlSafe(query).into_sql_str()).await;
            let shape = Shape::of(&prepared.map_err(|e| err(format!("query failed: {e}")))?, &name, rules)?;
            let bounded = shape.bounded(query, rules, |col| format!("octet_length(q.{col})"));
            let declared = shape.value_type.clone();
            let value_of = move |row: &_, col| sqlite_value(row, col, declared.as_deref());
            drain(sqlx::query(AssertSqlSafe(bounded)).fetch(&pool), &name, rules, push, &value_of).await
        } else {
            let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(url.expose()).await;
            let pool = pool.map_err(|e| err(format!("cannot connect: {e}")))?;
            let prepared = pool.prepare(AssertSqlSafe(query).into_sql_str()).await;
            let shape = Shape::of(&prepared.map_err(|e| err(format!("query failed: {e}")))?, &name, rules)?;
            let bounded = shape.bounded(query, rules, |col| format!("octet_length(CAST(q.{col} AS text))"));
            drain(sqlx::query(AssertSqlSafe(bounded)).fetch(&pool), &name, rules, push, &pg_value).await
        }
    })
}

/// The columns a query returns that the source reads, checked before any row is.
struct Shape {
    /// Whether it reads `value` (a computed trait).
    has_value: bool,
    /// The type the database declares for `value` (SQLite keeps `BOOLEAN` only as a declared
    /// type, which the bounded query's expression does not carry).
    value_type: Option<String>,
}

impl Shape {
    fn of<S: sqlx::Statement>(statement: &S, name: &str, rules: Rules) -> Result<Shape, SnapshotError> {
        let columns = statement.columns();
        let found = || columns.iter().map(|c| c.name().to_string()).collect::<Vec<_>>().join(", ");
        let missing = |field: &'static str| {
            let message = format!("the query returns no {field} column (columns: {})", found());
            SnapshotError::new(name, None, Some(field), message)
        };
        if !columns.iter().any(|c| c.name() == "user_id") {
            return Err(missing("user_id"));
        }
        if super::member_value(rules.kind).is_some() {
            return Ok(Shape { has_value: false, value_type: None });
        }
        let value = columns.iter().find(|c| c.name() == "value").ok_or_else(|| missing("value"))?;
        Ok(Shape { has_value: true, value_type: Some(value.type_info().name().to_ascii_uppercase()) })
    }

    /// The query, read through one that has the database drop a `user_id` or `value` longer
    /// than its limit and give its length in bytes beside it (columns, in order: user_id,
    /// user_id_bytes, value, value_bytes), so that a huge field fails its row without crossing
    /// the wire whole. `bytes` measures a column of the query, `q`, in the database's dialect.
    fn bounded(&self, query: &str, rules: Rules, bytes: impl Fn(&str) -> String) -> String {
        let field = |col: &str, limit: usize| {
            let n = bytes(col);
            format!("CASE WHEN {n} > {limit} THEN NULL ELSE q.{col} END AS {col}, {n} AS {col}_bytes")
        };
        let mut fields = field("user_id", rules.max_user_id_bytes);
        if self.has_value {
            fields = format!("{fields}, {}", field("value", MAX_VALUE_IN_DATABASE));
        }
        // A newline before the parenthesis: the query may end in a comment.
        format!("SELECT {fields} FROM (\n{}\n) AS q", without_final_semicolon(query))
    }
}

/// The query without a final `;` and the comments after it: a subquery cannot hold one.
fn without_final_semicolon(query: &str) -> &str {
    let Some(at) = query.rfind(';') else { return query };
    let after = &query[at + 1..];
    let only_comments = after.lines().map(str::trim).all(|l| l.is_empty() || l.starts_with("--"));
    if only_comments { &query[..at] } else { query }
}

/// The longest `value` read from a database: its text there (JSON with spaces, say) may be up
/// to twice its canonical form, which `canonical_value` bounds.
const MAX_VALUE_IN_DATABASE: usize = 2 * MAX_VALUE_BYTES;

/// Every row of a query, as records.
async fn drain<R: Row>(
    mut rows: futures::stream::BoxStream<'_, Result<R, sqlx::Error>>,
    name: &str,
    rules: Rules,
    push: &mut Push<'_>,
    value_of: &dyn Fn(&R, usize) -> Result<Value, String>,
) -> Result<(), SnapshotError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
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

/// One row of the bounded query (see `Shape::bounded`) as a record; `n` (the row's position)
/// stands in for a line number.
fn record<R: Row>(
    name: &str,
    n: u64,
    row: &R,
    rules: Rules,
    value_of: &dyn Fn(&R, usize) -> Result<Value, String>,
) -> Result<SnapshotRecord, SnapshotError>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let fail = |field: &'static str, m: String| SnapshotError::new(name, Some(n), Some(field), m);
    let bytes = |col: usize| row.try_get::<Option<i64>, _>(col).ok().flatten().unwrap_or(0) as usize;
    if bytes(1) > rules.max_user_id_bytes {
        let limit = rules.max_user_id_bytes;
        return Err(fail("user_id", format!("user_id is {} bytes, more than max_user_id_bytes = {limit}", bytes(1))));
    }
    let user_id: String = row.try_get(0).map_err(|e| fail("user_id", format!("user_id must be text: {e}")))?;
    check_user_id(name, n, &user_id, rules)?;
    let value: JsonText = match super::member_value(rules.kind) {
        Some(v) => v.into(),
        None if bytes(3) > MAX_VALUE_IN_DATABASE => {
            return Err(fail(
                "value",
                format!("value is {} bytes, more than the limit of {MAX_VALUE_BYTES}", bytes(3)),
            ));
        }
        None => {
            let v = value_of(row, 2).map_err(|m| fail("value", m))?;
            canonical_value(&v, rules.allow_structured)
                .map_err(|m| fail("value", format!("{m} (user {user_id:?})")))?
                .into()
        }
    };
    Ok(SnapshotRecord { user_id, value, line: n })
}

/// A SQLite value by its storage class, or as a boolean where the query's column is declared so.
fn sqlite_value(row: &sqlx::sqlite::SqliteRow, col: usize, declared: Option<&str>) -> Result<Value, String> {
    let raw = row.try_get_raw(col).map_err(|e| e.to_string())?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let stored = raw.type_info().name().to_ascii_uppercase();
    let kind = match declared {
        Some("BOOLEAN") if stored == "INTEGER" => "BOOLEAN".to_string(),
        _ => stored,
    };
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

#[cfg(test)]
mod tests {
    use super::without_final_semicolon;

    #[test]
    fn a_final_semicolon_goes_with_the_comments_after_it_and_nothing_else_does() {
        assert_eq!(without_final_semicolon("SELECT 1;"), "SELECT 1");
        assert_eq!(without_final_semicolon("SELECT 1; -- done\n  -- really\n"), "SELECT 1");
        assert_eq!(without_final_semicolon("SELECT ';' AS user_id"), "SELECT ';' AS user_id");
        assert_eq!(without_final_semicolon("SELECT 1 -- no; end"), "SELECT 1 -- no; end");
    }
}
