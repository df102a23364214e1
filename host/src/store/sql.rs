//! One way to speak SQL to either back end: embedded SQLite or a
//! PostgreSQL server. The store's queries are written once, with SQLite's
//! numbered placeholders (`?1`, `?2`, ...), which are rewritten to
//! PostgreSQL's (`$1`, `$2`, ...) when it is the back end; parameters and
//! columns pass through [`Value`], so the same row mapping reads both.
//!
//! The few statements whose dialects differ ask [`Conn::is_postgres`].

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::BytesMut;
use postgres::types::{IsNull, ToSql as PgToSql, Type, to_sql_checked};
use rusqlite::types::{ToSqlOutput, ValueRef};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;

/// A parameter or a column: what both back ends can store.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(Cow<'a, str>),
    Blob(Cow<'a, [u8]>),
}

impl Value<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Real(_) => "a real number",
            Value::Text(_) => "text",
            Value::Blob(_) => "bytes",
        }
    }
}

/// A Rust value bound as a statement parameter.
pub(crate) trait ToValue {
    fn to_value(&self) -> Result<Value<'_>, StoreError>;
}

/// A Rust value read from a column. The error says what was found instead.
pub(crate) trait FromValue: Sized {
    fn from_value(value: Value<'_>) -> Result<Self, String>;
}

/// Parameters of a statement, as `params![a, b]`.
macro_rules! params {
    ($($param:expr),* $(,)?) => {
        &[$(&$param as &dyn $crate::store::sql::ToValue),*] as &[&dyn $crate::store::sql::ToValue]
    };
}
pub(crate) use params;

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Result<Value<'_>, StoreError> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Result<Value<'_>, StoreError> {
        match self {
            Some(value) => value.to_value(),
            None => Ok(Value::Null),
        }
    }
}

macro_rules! integer_values {
    ($($ty:ty),*) => {$(
        impl ToValue for $ty {
            fn to_value(&self) -> Result<Value<'_>, StoreError> {
                i64::try_from(*self)
                    .map(Value::Int)
                    .map_err(|_| StoreError::Database(format!("{self} is too large to store")))
            }
        }
    )*};
}
integer_values!(i64, i32, u32, u16, u64, usize);

impl ToValue for bool {
    fn to_value(&self) -> Result<Value<'_>, StoreError> {
        Ok(Value::Int(i64::from(*self)))
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Result<Value<'_>, StoreError> {
        Ok(Value::Real(*self))
    }
}

impl ToValue for str {
    fn to_value(&self) -> Result<Value<'_>, StoreError> {
        Ok(Value::Text(Cow::Borrowed(self)))
    }
}

impl ToValue for String {
    fn to_value(&self) -> Result<Value<'_>, StoreError> {
        Ok(Value::Text(Cow::Borrowed(self)))
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Result<Value<'_>, StoreError> {
        Ok(Value::Blob(Cow::Borrowed(self)))
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Result<Value<'_>, StoreError> {
        Ok(Value::Blob(Cow::Borrowed(self)))
    }
}

impl FromValue for i64 {
    fn from_value(value: Value<'_>) -> Result<Self, String> {
        match value {
            Value::Int(i) => Ok(i),
            other => Err(format!("expected an integer, found {}", other.kind())),
        }
    }
}

impl FromValue for f64 {
    fn from_value(value: Value<'_>) -> Result<Self, String> {
        match value {
            Value::Real(f) => Ok(f),
            Value::Int(i) => Ok(i as f64),
            other => Err(format!("expected a number, found {}", other.kind())),
        }
    }
}

impl FromValue for bool {
    fn from_value(value: Value<'_>) -> Result<Self, String> {
        match value {
            Value::Int(i) => Ok(i != 0),
            other => Err(format!("expected a boolean, found {}", other.kind())),
        }
    }
}

impl FromValue for String {
    fn from_value(value: Value<'_>) -> Result<Self, String> {
        match value {
            Value::Text(text) => Ok(text.into_owned()),
            other => Err(format!("expected text, found {}", other.kind())),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: Value<'_>) -> Result<Self, String> {
        match value {
            Value::Blob(bytes) => Ok(bytes.into_owned()),
            other => Err(format!("expected bytes, found {}", other.kind())),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: Value<'_>) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// A value kept in a column as JSON text. Reading text that is not the
/// expected shape is an error naming it, never a silent `null`.
pub(crate) struct Json<T>(pub(crate) T);

impl<T: Serialize> ToValue for Json<T> {
    fn to_value(&self) -> Result<Value<'_>, StoreError> {
        serde_json::to_string(&self.0)
            .map(|text| Value::Text(Cow::Owned(text)))
            .map_err(|e| StoreError::Database(format!("cannot write JSON: {e}")))
    }
}

impl<T: DeserializeOwned> FromValue for Json<T> {
    fn from_value(value: Value<'_>) -> Result<Self, String> {
        match value {
            Value::Text(text) => serde_json::from_str(&text)
                .map(Json)
                .map_err(|e| format!("unexpected JSON: {e}")),
            other => Err(format!("expected JSON text, found {}", other.kind())),
        }
    }
}

/// One row of a result, from either back end.
pub(crate) enum Row<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Postgres(&'r postgres::Row),
}

impl Row<'_> {
    /// Column `index`, as `T`; an error names the column and what it held.
    pub(crate) fn get<T: FromValue>(&self, index: usize) -> Result<T, StoreError> {
        let value = match self {
            Row::Sqlite(row) => sqlite_cell(row, index),
            Row::Postgres(row) => postgres_cell(row, index),
        }?;
        T::from_value(value).map_err(|why| {
            let name = match self {
                Row::Sqlite(row) => row.as_ref().column_name(index).unwrap_or("?").to_owned(),
                Row::Postgres(row) => row
                    .columns()
                    .get(index)
                    .map_or("?".to_owned(), |c| c.name().to_owned()),
            };
            StoreError::Database(format!("column {index} ({name}): {why}"))
        })
    }
}

fn sqlite_cell<'r>(row: &'r rusqlite::Row<'r>, index: usize) -> Result<Value<'r>, StoreError> {
    Ok(match row.get_ref(index)? {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(bytes) => {
            Value::Text(Cow::Borrowed(std::str::from_utf8(bytes).map_err(|e| {
                StoreError::Database(format!("column {index} is not UTF-8: {e}"))
            })?))
        }
        ValueRef::Blob(bytes) => Value::Blob(Cow::Borrowed(bytes)),
    })
}

fn postgres_cell(row: &postgres::Row, index: usize) -> Result<Value<'_>, StoreError> {
    let column = row
        .columns()
        .get(index)
        .ok_or_else(|| StoreError::Database(format!("no column {index}")))?;
    let value = match *column.type_() {
        Type::INT8 => row.try_get::<_, Option<i64>>(index)?.map(Value::Int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(index)?
            .map(|i| Value::Int(i.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(index)?
            .map(|i| Value::Int(i.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(index)?
            .map(|b| Value::Int(b.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(index)?.map(Value::Real),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(index)?
            .map(|f| Value::Real(f.into())),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => row
            .try_get::<_, Option<&str>>(index)?
            .map(|s| Value::Text(Cow::Borrowed(s))),
        Type::BYTEA => row
            .try_get::<_, Option<&[u8]>>(index)?
            .map(|b| Value::Blob(Cow::Borrowed(b))),
        ref other => {
            return Err(StoreError::Database(format!(
                "column {index} ({}) has type {other}, which the store does not read",
                column.name()
            )));
        }
    };
    Ok(value.unwrap_or(Value::Null))
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(text) => ValueRef::Text(text.as_bytes()),
            Value::Blob(bytes) => ValueRef::Blob(bytes),
        }))
    }
}

/// A parameter's value encoded as the type PostgreSQL inferred for it, so
/// an integer may fill an `integer`, `bigint`, `double precision` or
/// `boolean` parameter alike.
impl PgToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => i.to_string().to_sql(ty, out),
                ref other => Err(format!("cannot bind an integer as {other}").into()),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                ref other => Err(format!("cannot bind a real number as {other}").into()),
            },
            Value::Text(text) => text.as_ref().to_sql(ty, out),
            Value::Blob(bytes) => bytes.as_ref().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Rewrite `?N` placeholders as `$N`.
fn postgres_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// Prepared statements of one PostgreSQL connection, by their SQL.
#[derive(Default)]
pub(crate) struct Statements(HashMap<String, postgres::Statement>);

/// A connection to either back end, for the length of one operation.
pub(crate) enum Conn<'c> {
    Sqlite(&'c rusqlite::Connection),
    Postgres {
        client: &'c mut postgres::Client,
        /// Statements kept prepared (the writer's connection); `None`
        /// prepares each one afresh.
        statements: Option<&'c mut Statements>,
    },
}

fn postgres_params<'v>(values: &'v [Value<'_>]) -> Vec<&'v (dyn PgToSql + Sync)> {
    values.iter().map(|v| v as &(dyn PgToSql + Sync)).collect()
}

fn bind<'v>(params: &'v [&dyn ToValue]) -> Result<Vec<Value<'v>>, StoreError> {
    params.iter().map(|p| p.to_value()).collect()
}

impl Conn<'_> {
    /// Whether the back end is PostgreSQL (for the statements whose
    /// dialects differ).
    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self, Conn::Postgres { .. })
    }

    /// PostgreSQL's client and the statement for `sql`, prepared (or
    /// found prepared).
    fn prepared(
        &mut self,
        sql: &str,
    ) -> Result<(&mut postgres::Client, postgres::Statement), StoreError> {
        let Conn::Postgres { client, statements } = self else {
            unreachable!("only PostgreSQL prepares statements here")
        };
        if let Some(Statements(cache)) = statements
            && let Some(statement) = cache.get(sql)
        {
            return Ok((client, statement.clone()));
        }
        let statement = client.prepare(&postgres_placeholders(sql))?;
        if let Some(Statements(cache)) = statements {
            cache.insert(sql.to_owned(), statement.clone());
        }
        Ok((client, statement))
    }

    /// Run a statement; returns how many rows it changed.
    pub(crate) fn execute(
        &mut self,
        sql: &str,
        params: &[&dyn ToValue],
    ) -> Result<usize, StoreError> {
        let values = bind(params)?;
        match self {
            Conn::Sqlite(conn) => Ok(conn
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(values.iter()))?),
            Conn::Postgres { .. } => {
                let (client, statement) = self.prepared(sql)?;
                Ok(client.execute(&statement, &postgres_params(&values))? as usize)
            }
        }
    }

    /// Every row of a query, each mapped by `map`.
    pub(crate) fn query_map<T>(
        &mut self,
        sql: &str,
        params: &[&dyn ToValue],
        mut map: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let values = bind(params)?;
        match self {
            Conn::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(sql)?;
                let mut rows = statement.query(rusqlite::params_from_iter(values.iter()))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(map(&Row::Sqlite(row))?);
                }
                Ok(out)
            }
            Conn::Postgres { .. } => {
                let (client, statement) = self.prepared(sql)?;
                client
                    .query(&statement, &postgres_params(&values))?
                    .iter()
                    .map(|row| map(&Row::Postgres(row)))
                    .collect()
            }
        }
    }

    /// The first row of a query, if it has one.
    pub(crate) fn query_opt<T>(
        &mut self,
        sql: &str,
        params: &[&dyn ToValue],
        map: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let mut map = Some(map);
        let mut rows = self.query_map(sql, params, |row| match map.take() {
            Some(map) => map(row).map(Some),
            None => Ok(None),
        })?;
        Ok(if rows.is_empty() {
            None
        } else {
            rows.swap_remove(0)
        })
    }

    /// The first row of a query that always returns one.
    pub(crate) fn query_row<T>(
        &mut self,
        sql: &str,
        params: &[&dyn ToValue],
        map: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.query_opt(sql, params, map)?
            .ok_or_else(|| StoreError::Database(format!("the query returned no row: {sql}")))
    }

    /// Run statements without parameters (transaction control, schema).
    pub(crate) fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        match self {
            Conn::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Conn::Postgres { client, .. } => Ok(client.batch_execute(sql)?),
        }
    }
}

impl From<postgres::Error> for StoreError {
    fn from(error: postgres::Error) -> Self {
        match error.as_db_error() {
            Some(db) => StoreError::Database(format!("PostgreSQL: {}", db.message())),
            None => StoreError::Database(format!("PostgreSQL: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_and_nothing_else_changes() {
        assert_eq!(
            postgres_placeholders("SELECT a FROM t WHERE b = ?1 AND c = ?12 OR d = '?'"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 OR d = '?'"
        );
    }

    #[test]
    fn sqlite_reads_back_what_it_was_given() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let mut conn = Conn::Sqlite(&conn);
        conn.batch("CREATE TABLE t (i INTEGER, f REAL, s TEXT, b BLOB, n TEXT)")
            .unwrap();
        let bytes = vec![1u8, 2, 3];
        let none: Option<String> = None;
        conn.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)",
            params![7i64, 0.5, "text", bytes, none],
        )
        .unwrap();
        let row: (i64, f64, String, Vec<u8>, Option<String>, bool) = conn
            .query_row("SELECT i, f, s, b, n, i FROM t", params![], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                ))
            })
            .unwrap();
        assert_eq!(row, (7, 0.5, "text".to_owned(), bytes, None, true));
        let wrong = conn
            .query_row("SELECT s FROM t", params![], |row| row.get::<i64>(0))
            .unwrap_err();
        assert!(wrong.to_string().contains("column 0 (s)"), "{wrong}");
        assert!(
            conn.query_opt("SELECT i FROM t WHERE i = ?1", params![8i64], |row| {
                row.get::<i64>(0)
            })
            .unwrap()
            .is_none()
        );
    }
}
