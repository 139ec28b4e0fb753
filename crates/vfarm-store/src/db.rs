//! The backend-neutral layer under the store's modules: one connection (SQLite or
//! PostgreSQL), parameters as [`Value`]s, rows read with typed [`Row::get`].
//!
//! SQL is written once, in the dialect both accept, with `?1…?N` placeholders; for PostgreSQL
//! they are rewritten to `$1…$N` when a statement is first prepared (prepared statements are
//! cached per SQL text on both backends). Parameters are converted to the type PostgreSQL
//! inferred for them, so an integer compared with an `int4` expression or a boolean column
//! needs no cast in the SQL text.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::MutexGuard;
use std::time::Duration;

use postgres::types::{ToSql, Type};

use crate::{Result, StoreError};

/// One parameter or column value, in SQLite's five storage classes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Integer(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::Integer(v.into())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Integer(v.into())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Real(v)
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::Blob(v.to_vec())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Value::Blob(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// A value that can be a parameter, read by reference (so `params!` never moves).
pub trait ToValue {
    fn to_value(&self) -> Value;
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToValue for i64 {
    fn to_value(&self) -> Value {
        Value::Integer(*self)
    }
}
impl ToValue for i32 {
    fn to_value(&self) -> Value {
        Value::Integer((*self).into())
    }
}
impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Integer((*self).into())
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

/// Statement parameters: `params![a, b]`, an array `[x]` or a slice of one type.
pub trait Params {
    fn into_values(self) -> Vec<Value>;
}
impl<T: ToValue, const N: usize> Params for [T; N] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(ToValue::to_value).collect()
    }
}
impl<T: ToValue> Params for &[T] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(ToValue::to_value).collect()
    }
}
impl Params for Vec<Value> {
    fn into_values(self) -> Vec<Value> {
        self
    }
}

/// Parameters of different types: `params![id, name, size as i64]` (taken by reference, as
/// with rusqlite's macro).
#[macro_export]
macro_rules! params {
    () => { &[] as &[$crate::db::Value] };
    ($($x:expr),+ $(,)?) => { &[$($crate::db::ToValue::to_value(&$x)),+] as &[$crate::db::Value] };
}

/// Read a column into a Rust type.
pub trait FromValue: Sized {
    fn from_value(v: Value) -> std::result::Result<Self, String>;
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "NULL",
        Value::Integer(_) => "an integer",
        Value::Real(_) => "a real",
        Value::Text(_) => "text",
        Value::Blob(_) => "a blob",
    }
}

impl FromValue for Value {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        Ok(v)
    }
}
impl FromValue for String {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s),
            other => Err(format!("expected text, found {}", kind(&other))),
        }
    }
}
impl FromValue for i64 {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Integer(i) => Ok(i),
            other => Err(format!("expected an integer, found {}", kind(&other))),
        }
    }
}
impl FromValue for i32 {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        let i = i64::from_value(v)?;
        i32::try_from(i).map_err(|_| format!("integer {i} does not fit in 32 bits"))
    }
}
impl FromValue for bool {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        Ok(i64::from_value(v)? != 0)
    }
}
impl FromValue for f64 {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Real(f) => Ok(f),
            Value::Integer(i) => Ok(i as f64),
            other => Err(format!("expected a real, found {}", kind(&other))),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b),
            other => Err(format!("expected a blob, found {}", kind(&other))),
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One result row, whichever backend it came from.
pub enum Row<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a postgres::Row),
}

/// A column position (0-based); a trait so `get::<_, T>(0)` reads as with rusqlite.
pub trait ColumnIndex {
    fn index(self) -> usize;
}
impl ColumnIndex for usize {
    fn index(self) -> usize {
        self
    }
}

impl Row<'_> {
    /// Column `idx` (0-based) as `T`.
    pub fn get<I: ColumnIndex, T: FromValue>(&self, idx: I) -> Result<T> {
        let idx = idx.index();
        let v = match self {
            Row::Sqlite(r) => sqlite_value(r, idx)?,
            Row::Postgres(r) => pg_value(r, idx)?,
        };
        T::from_value(v).map_err(|reason| StoreError::Column { index: idx, reason })
    }
}

fn sqlite_value(r: &rusqlite::Row<'_>, idx: usize) -> Result<Value> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(idx)? {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => {
            Value::Text(
                String::from_utf8(t.to_vec()).map_err(|_| StoreError::Column {
                    index: idx,
                    reason: "text is not UTF-8".into(),
                })?,
            )
        }
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    })
}

fn pg_value(r: &postgres::Row, idx: usize) -> Result<Value> {
    let Some(col) = r.columns().get(idx) else {
        return Err(StoreError::Column {
            index: idx,
            reason: format!("the row has {} columns", r.len()),
        });
    };
    let ty = col.type_().clone();
    let v = if ty == Type::INT8 {
        r.try_get::<_, Option<i64>>(idx)?.map(Value::Integer)
    } else if ty == Type::INT4 {
        r.try_get::<_, Option<i32>>(idx)?
            .map(|i| Value::Integer(i.into()))
    } else if ty == Type::INT2 {
        r.try_get::<_, Option<i16>>(idx)?
            .map(|i| Value::Integer(i.into()))
    } else if ty == Type::BOOL {
        r.try_get::<_, Option<bool>>(idx)?
            .map(|b| Value::Integer(b.into()))
    } else if ty == Type::FLOAT8 {
        r.try_get::<_, Option<f64>>(idx)?.map(Value::Real)
    } else if ty == Type::FLOAT4 {
        r.try_get::<_, Option<f32>>(idx)?
            .map(|f| Value::Real(f.into()))
    } else if ty == Type::BYTEA {
        r.try_get::<_, Option<Vec<u8>>>(idx)?.map(Value::Blob)
    } else if [
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UNKNOWN,
    ]
    .contains(&ty)
    {
        r.try_get::<_, Option<String>>(idx)?.map(Value::Text)
    } else {
        // e.g. NUMERIC from SUM(bigint): the SQL must CAST it to BIGINT.
        return Err(StoreError::Column {
            index: idx,
            reason: format!("column `{}` has PostgreSQL type {ty}, which the store does not read (cast it in the query)", col.name()),
        });
    };
    Ok(v.unwrap_or(Value::Null))
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

type PgParam = Box<dyn ToSql + Sync>;

/// `v` as the Rust type whose `ToSql` PostgreSQL's inferred parameter type `ty` accepts.
fn pg_param(v: &Value, ty: &Type, n: usize) -> Result<PgParam> {
    let bad = || StoreError::Param {
        index: n + 1,
        reason: format!("{} cannot be sent as PostgreSQL type {ty}", kind(v)),
    };
    let int = |i: i64| -> Result<PgParam> {
        Ok(if *ty == Type::INT8 {
            Box::new(i)
        } else if *ty == Type::INT4 {
            Box::new(i32::try_from(i).map_err(|_| bad())?)
        } else if *ty == Type::INT2 {
            Box::new(i16::try_from(i).map_err(|_| bad())?)
        } else if *ty == Type::BOOL {
            Box::new(i != 0)
        } else if *ty == Type::FLOAT8 {
            Box::new(i as f64)
        } else {
            return Err(bad());
        })
    };
    let texty = [
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UNKNOWN,
    ]
    .contains(ty);
    match v {
        Value::Null => Ok(if *ty == Type::INT8 {
            Box::new(None::<i64>)
        } else if *ty == Type::INT4 {
            Box::new(None::<i32>)
        } else if *ty == Type::INT2 {
            Box::new(None::<i16>)
        } else if *ty == Type::BOOL {
            Box::new(None::<bool>)
        } else if *ty == Type::FLOAT8 {
            Box::new(None::<f64>)
        } else if *ty == Type::BYTEA {
            Box::new(None::<Vec<u8>>)
        } else if texty {
            Box::new(None::<String>)
        } else {
            return Err(bad());
        }),
        Value::Integer(i) => int(*i),
        Value::Real(f) if *ty == Type::FLOAT8 => Ok(Box::new(*f)),
        Value::Text(s) if texty => Ok(Box::new(s.clone())),
        Value::Blob(b) if *ty == Type::BYTEA => Ok(Box::new(b.clone())),
        _ => Err(bad()),
    }
}

/// `?N` → `$N` outside string literals and quoted identifiers.
pub(crate) fn pg_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '?' => {
                out.push('$');
                continue;
            }
            None => {}
        }
        out.push(c);
    }
    out
}

/// A PostgreSQL connection and what is needed to make it again.
pub(crate) struct PgConn {
    /// Always `Some` until dropped (see `Drop`).
    client: Option<postgres::Client>,
    pub(crate) config: postgres::Config,
    pub(crate) schema: String,
    statements: HashMap<String, postgres::Statement>,
}

impl PgConn {
    /// Connect and put the schema first on the search path. The schema must exist.
    pub(crate) fn connect(config: &postgres::Config, schema: &str) -> Result<PgConn> {
        let mut config = config.clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let mut client = config.connect(postgres::NoTls)?;
        // synchronous_commit off = SQLite's `synchronous=NORMAL` in WAL mode: a crash of the
        // machine may lose the last commits but never corrupts; without it every commit
        // waits for an fsync (~5 ms here), 25 times the cost of the transaction itself.
        client.batch_execute(&format!(
            "SET search_path TO \"{schema}\"; SET synchronous_commit TO off"
        ))?;
        Ok(PgConn {
            client: Some(client),
            config,
            schema: schema.to_string(),
            statements: HashMap::new(),
        })
    }

    fn client(&mut self) -> Result<&mut postgres::Client> {
        self.client.as_mut().ok_or(StoreError::Aborted)
    }

    /// A restarted server closes the connection: connect again before the next call.
    fn ensure_open(&mut self) -> Result<()> {
        if self.client.as_ref().is_none_or(postgres::Client::is_closed) {
            let fresh = PgConn::connect(&self.config, &self.schema)?;
            *self = fresh;
        }
        Ok(())
    }

    /// Whether `e` means the connection is gone (server restarted or the session was
    /// terminated), so that a fresh connection may succeed.
    fn lost(&self, e: &StoreError) -> bool {
        use postgres::error::SqlState;
        match e {
            StoreError::Postgres(p) => {
                p.is_closed()
                    || self.client.as_ref().is_none_or(postgres::Client::is_closed)
                    || [
                        SqlState::ADMIN_SHUTDOWN,
                        SqlState::CRASH_SHUTDOWN,
                        SqlState::CANNOT_CONNECT_NOW,
                    ]
                    .iter()
                    .any(|c| p.code() == Some(c))
            }
            _ => false,
        }
    }

    /// Run `f`; outside a transaction, once more on a fresh connection when the first try
    /// found the connection gone (a server that went away executed nothing of a request it
    /// never got; inside a transaction the transaction is lost anyway, so no retry).
    fn retrying<T>(
        &mut self,
        retry: bool,
        mut f: impl FnMut(&mut PgConn) -> Result<T>,
    ) -> Result<T> {
        self.ensure_open()?;
        match f(self) {
            Err(e) if retry && self.lost(&e) => {
                *self = PgConn::connect(&self.config, &self.schema)?;
                f(self)
            }
            r => r,
        }
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(st) = self.statements.get(sql) {
            return Ok(st.clone());
        }
        let st = self.client()?.prepare(&pg_placeholders(sql))?;
        self.statements.insert(sql.to_string(), st.clone());
        Ok(st)
    }

    fn bind(st: &postgres::Statement, params: &[Value]) -> Result<Vec<PgParam>> {
        if st.params().len() != params.len() {
            return Err(StoreError::Param {
                index: params.len(),
                reason: format!(
                    "the statement takes {} parameters, {} were given",
                    st.params().len(),
                    params.len()
                ),
            });
        }
        params
            .iter()
            .zip(st.params())
            .enumerate()
            .map(|(n, (v, ty))| pg_param(v, ty, n))
            .collect()
    }

    fn query(&mut self, sql: &str, params: &[Value], retry: bool) -> Result<Vec<postgres::Row>> {
        self.retrying(retry, |c| {
            let st = c.statement(sql)?;
            let bound = Self::bind(&st, params)?;
            let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|b| b.as_ref()).collect();
            Ok(c.client()?.query(&st, &refs)?)
        })
    }

    fn execute(&mut self, sql: &str, params: &[Value], retry: bool) -> Result<usize> {
        self.retrying(retry, |c| {
            let st = c.statement(sql)?;
            let bound = Self::bind(&st, params)?;
            let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|b| b.as_ref()).collect();
            Ok(c.client()?.execute(&st, &refs)? as usize)
        })
    }
}

fn sqlite_execute(c: &rusqlite::Connection, sql: &str, params: &[Value]) -> Result<usize> {
    Ok(c.prepare_cached(sql)?
        .execute(rusqlite::params_from_iter(params.iter()))?)
}

/// At most `limit` rows, each mapped by `f`.
fn sqlite_query<T>(
    c: &rusqlite::Connection,
    sql: &str,
    params: &[Value],
    limit: usize,
    f: &mut dyn FnMut(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut st = c.prepare_cached(sql)?;
    let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(r) = rows.next()? else { break };
        out.push(f(&Row::Sqlite(r))?);
    }
    Ok(out)
}

impl Drop for PgConn {
    /// Closing a client runs its own small runtime, which panics on a thread that drives
    /// async tasks — where the last `Arc<Store>` of `vfarm serve` may well be dropped. So the
    /// client is closed on a thread of its own.
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = std::thread::spawn(move || drop(client)).join();
        }
    }
}

/// The connection a [`crate::Store`] holds.
pub(crate) enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<PgConn>),
}

/// Which database a store is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The store's connection, held for one call or one transaction ([`crate::Store::conn`],
/// [`crate::Store::tx`]). Every method takes `&self`, so module helpers take `&Db` whether
/// they run inside a transaction or not.
pub struct Db<'a> {
    conn: RefCell<MutexGuard<'a, Conn>>,
    in_tx: Cell<bool>,
    /// PostgreSQL aborts a transaction at its first error: COMMIT would then roll back
    /// silently, so a failed statement is remembered and the commit refused.
    failed: Cell<bool>,
}

impl<'a> Db<'a> {
    pub(crate) fn new(guard: MutexGuard<'a, Conn>) -> Db<'a> {
        Db {
            conn: RefCell::new(guard),
            in_tx: Cell::new(false),
            failed: Cell::new(false),
        }
    }

    fn note<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() && self.in_tx.get() && self.backend() == Backend::Postgres {
            self.failed.set(true);
        }
        r
    }

    /// Start a transaction that holds the write lock from its first statement.
    pub(crate) fn begin(&self, lock_key: i64) -> Result<()> {
        match self.backend() {
            Backend::Sqlite => self.execute_batch("BEGIN IMMEDIATE")?,
            Backend::Postgres => {
                // One round trip; a lost connection is retried here since nothing ran yet.
                let begin = format!("BEGIN; SELECT pg_advisory_xact_lock({lock_key})");
                if let Err(e) = self.execute_batch(&begin) {
                    let _ = self.execute_batch("ROLLBACK");
                    return Err(e);
                }
            }
        }
        self.in_tx.set(true);
        self.failed.set(false);
        Ok(())
    }

    pub(crate) fn commit(&self) -> Result<()> {
        if self.failed.get() {
            self.rollback();
            return Err(StoreError::Aborted);
        }
        let r = self.execute_batch("COMMIT");
        if r.is_err() {
            self.rollback();
        } else {
            self.in_tx.set(false);
        }
        r
    }

    /// Best effort: a broken connection has no transaction left to roll back.
    pub(crate) fn rollback(&self) {
        if self.in_tx.replace(false) {
            let _ = self.execute_batch("ROLLBACK");
        }
        self.failed.set(false);
    }

    /// The PostgreSQL schema this connection works in.
    pub(crate) fn pg_schema(&self) -> Option<String> {
        match &**self.conn.borrow() {
            Conn::Sqlite(_) => None,
            Conn::Postgres(c) => Some(c.schema.clone()),
        }
    }

    pub fn backend(&self) -> Backend {
        match &**self.conn.borrow() {
            Conn::Sqlite(_) => Backend::Sqlite,
            Conn::Postgres(_) => Backend::Postgres,
        }
    }

    /// Run one statement; returns the number of rows it changed.
    pub fn execute(&self, sql: &str, params: impl Params) -> Result<usize> {
        let params = params.into_values();
        let r = match &mut **self.conn.borrow_mut() {
            Conn::Sqlite(c) => sqlite_execute(c, sql, &params),
            Conn::Postgres(c) => c.execute(sql, &params, !self.in_tx.get()),
        };
        self.note(r)
    }

    /// Run several statements without parameters (migrations, transaction control).
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        let r = match &mut **self.conn.borrow_mut() {
            Conn::Sqlite(c) => c.execute_batch(sql).map_err(StoreError::from),
            Conn::Postgres(c) => {
                // BEGIN is retried on a fresh connection; nothing inside a transaction is.
                let retry = !self.in_tx.get();
                c.retrying(retry, |c| Ok(c.client()?.batch_execute(sql)?))
            }
        };
        self.note(r)
    }

    /// Every row, each mapped by `f`.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: impl Params,
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let params = params.into_values();
        let r = match &mut **self.conn.borrow_mut() {
            Conn::Sqlite(c) => sqlite_query(c, sql, &params, usize::MAX, &mut f),
            Conn::Postgres(c) => c
                .query(sql, &params, !self.in_tx.get())
                .and_then(|rows| rows.iter().map(|r| f(&Row::Postgres(r))).collect()),
        };
        self.note(r)
    }

    /// The first row mapped by `f`, `None` when there is none.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        let params = params.into_values();
        let mut f = Some(f);
        let mut once = |r: &Row<'_>| f.take().map_or(Err(StoreError::NoRow), |f| f(r));
        let r = match &mut **self.conn.borrow_mut() {
            Conn::Sqlite(c) => {
                sqlite_query(c, sql, &params, 1, &mut once).map(|v| v.into_iter().next())
            }
            Conn::Postgres(c) => {
                c.query(sql, &params, !self.in_tx.get())
                    .and_then(|rows| match rows.first() {
                        Some(r) => Ok(Some(once(&Row::Postgres(r))?)),
                        None => Ok(None),
                    })
            }
        };
        self.note(r)
    }

    /// A statement to run with [`Stmt::query_map`] (the rusqlite call shape; statements are
    /// cached per SQL text by the connection either way).
    pub fn prepare<'d>(&'d self, sql: &str) -> Result<Stmt<'d, 'a>> {
        Ok(Stmt {
            db: self,
            sql: sql.to_string(),
        })
    }

    /// The first row mapped by `f`; no row is an error (for queries that always return one).
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.query_opt(sql, params, f)?.ok_or(StoreError::NoRow)
    }

    /// The SQLite connection itself (tests and SQLite-only maintenance).
    pub fn with_sqlite<T>(&self, f: impl FnOnce(&rusqlite::Connection) -> T) -> Option<T> {
        match &**self.conn.borrow() {
            Conn::Sqlite(c) => Some(f(c)),
            Conn::Postgres(_) => None,
        }
    }
}

/// A query prepared with [`Db::prepare`].
pub struct Stmt<'d, 'a> {
    db: &'d Db<'a>,
    sql: String,
}

impl Stmt<'_, '_> {
    /// Every row mapped by `f`, as an iterator of results (collect it into a `Result`).
    pub fn query_map<T>(
        &mut self,
        params: impl Params,
        f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let rows = self.db.query_map(&self.sql, params, f)?;
        Ok(rows.into_iter().map(Ok).collect::<Vec<_>>().into_iter())
    }
}

impl Drop for Db<'_> {
    /// A transaction left open by a panic is rolled back before the connection is reused.
    fn drop(&mut self) {
        self.rollback();
    }
}

/// Whether `e` is a UNIQUE or PRIMARY KEY violation, on either backend.
pub fn is_unique_violation(e: &StoreError) -> bool {
    match e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
            f.code == rusqlite::ErrorCode::ConstraintViolation
        }
        StoreError::Postgres(p) => p.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_outside_quotes_only() {
        assert_eq!(
            pg_placeholders("SELECT '?1', \"a?\" FROM t WHERE a = ?1 AND b IN (?2,?10)"),
            "SELECT '?1', \"a?\" FROM t WHERE a = $1 AND b IN ($2,$10)"
        );
    }

    #[test]
    fn values_convert_both_ways() {
        assert_eq!(Value::from(Some("a")), Value::Text("a".into()));
        assert_eq!(Value::from(None::<i64>), Value::Null);
        assert_eq!(Value::from(true), Value::Integer(1));
        assert_eq!(i32::from_value(Value::Integer(7)), Ok(7));
        assert!(i32::from_value(Value::Integer(1 << 40)).is_err());
        assert_eq!(Option::<String>::from_value(Value::Null), Ok(None));
        assert!(String::from_value(Value::Integer(1)).is_err());
        assert!(bool::from_value(Value::Integer(2)).unwrap());
    }

    #[test]
    fn params_pick_the_inferred_postgres_type() {
        assert!(pg_param(&Value::Integer(1), &Type::INT4, 0).is_ok());
        assert!(pg_param(&Value::Integer(1 << 40), &Type::INT4, 0).is_err());
        assert!(pg_param(&Value::Null, &Type::BYTEA, 0).is_ok());
        let e = pg_param(&Value::Text("x".into()), &Type::INT8, 2).unwrap_err();
        assert!(e.to_string().contains("parameter 3"), "{e}");
    }
}
