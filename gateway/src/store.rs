//! The history store: tasks, their events, idempotency keys (tokens: [`crate::tokens`]), in
//! SQLite (default) or PostgreSQL through one code path (sqlx `Any`), with
//! the migrations embedded. Times are Unix milliseconds.

use std::borrow::Cow;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row};

/// The schema, in order. Each file is plain SQL both engines accept.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "history", include_str!("../migrations/0001_history.sql")),
    (2, "tokens", include_str!("../migrations/0002_tokens.sql")),
    (3, "web", include_str!("../migrations/0003_web.sql")),
];

/// What went wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// A task as the history holds it (the API's view; see `api::TaskView`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskRow {
    pub id: String,
    pub pool: String,
    /// `queued`, `blocked`, `started` or `finished`.
    pub state: String,
    pub status: Option<String>,
    /// The token name that submitted it through the gateway (none: straight to AMQP).
    pub caller: Option<String>,
    /// The name of the key that signed it, as the worker reported.
    pub submitter: Option<String>,
    pub worker: Option<String>,
    pub sandbox: Option<String>,
    pub attempt: Option<i64>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    /// JSON of the `blocked` event's detail while it waits for its key.
    pub blocked: Option<String>,
    /// JSON of the task as submitted, secrets replaced by their names.
    pub spec: Option<String>,
    /// JSON of the masked result (sensitive outputs as ciphertext or `***`).
    pub result: Option<String>,
    pub submitted_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
}

/// Search filters of `GET /v1/tasks`.
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub pool: Option<String>,
    pub status: Option<String>,
    pub state: Option<String>,
    /// Only this caller's tasks (a caller without `see:all`).
    pub caller: Option<String>,
    pub submitter: Option<String>,
    /// Only tasks last seen on this worker (its id).
    pub worker: Option<String>,
    pub since: Option<i64>,
    /// Substring of the id, the script or the error.
    pub q: Option<String>,
    /// Only tasks updated before this (paging: the last row's `updated_at`).
    pub before: Option<i64>,
    pub limit: i64,
}

/// The outcome of claiming an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This request owns the key: publish, then [`Store::confirm_key`].
    Fresh,
    /// An earlier request holds it: its task id, request hash and whether its
    /// publish was confirmed.
    Taken {
        task_id: String,
        request_hash: String,
        confirmed: bool,
    },
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    /// Where reads go: on a SQLite file, connections of their own (WAL lets
    /// them read while the one writer commits, so a wait or a token lookup
    /// never queues behind the recorder's batch); else `pool` itself.
    pub(crate) read: AnyPool,
    /// Serialises this process's read-merge-write of a task (events and results
    /// arrive on different tasks).
    merging: std::sync::Arc<tokio::sync::Mutex<()>>,
}

const COLUMNS: &str = "id, pool, state, status, caller, submitter, worker, sandbox, attempt, \
    exit_code, error, blocked, spec, result, submitted_at, started_at, finished_at, updated_at";

/// Reading connections of a SQLite file (beside its one writer).
pub const READERS: u32 = 4;

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Store {
    /// Opens (creating a SQLite file when needed) and migrates.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let url = if url.starts_with("sqlite:") && !url.contains('?') && !url.contains(":memory:") {
            format!("{url}?mode=rwc")
        } else {
            url.to_string()
        };
        let is_sqlite = url.starts_with("sqlite:");
        let mut opts = AnyPoolOptions::new().max_connections(if is_sqlite { 1 } else { 8 });
        if is_sqlite {
            // One writer: SQLite serialises writes anyway, and WAL lets the file be
            // read meanwhile; a busy timeout instead of "database is locked".
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(&url).await?;
        let read = if is_sqlite && !url.contains(":memory:") {
            AnyPoolOptions::new()
                .max_connections(READERS)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        use sqlx::Executor;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        Ok(())
                    })
                })
                .connect_lazy(&url)?
        } else {
            pool.clone()
        };
        let migrator = Migrator {
            migrations: Cow::Owned(
                MIGRATIONS
                    .iter()
                    .map(|(v, d, sql)| {
                        Migration::new(
                            *v,
                            Cow::Borrowed(*d),
                            MigrationType::Simple,
                            Cow::Borrowed(*sql),
                            false,
                        )
                    })
                    .collect(),
            ),
            ignore_missing: false,
            locking: true,
            no_tx: false,
        };
        migrator.run(&pool).await?;
        Ok(Store {
            pool,
            read,
            merging: Default::default(),
        })
    }

    /// The connection pool (the web view's own tables: `web::db`).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Held while a task is read, merged and written back.
    pub async fn merge_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.merging.lock().await
    }

    /// Records a task the gateway published (state `queued`).
    pub async fn insert_submitted(
        &self,
        id: &str,
        pool: &str,
        caller: &str,
        spec: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO tasks (id, pool, state, caller, spec, submitted_at, updated_at, size) \
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7) \
             ON CONFLICT (id) DO UPDATE SET caller = excluded.caller, spec = excluded.spec, \
             submitted_at = excluded.submitted_at",
        )
        .bind(id)
        .bind(pool)
        .bind(caller)
        .bind(spec)
        .bind(now)
        .bind(now)
        .bind(spec.len() as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether a task with this id is known.
    pub async fn exists(&self, id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT id FROM tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Forgets a task whose publish failed (it never existed for anyone).
    pub async fn forget(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM tasks WHERE id = $1 AND state = 'queued'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One task.
    pub async fn get(&self, id: &str) -> Result<Option<TaskRow>, StoreError> {
        get_on(&self.read, id).await
    }

    /// A transaction for writing several changes with one commit (the
    /// recorder's batches: one disk flush for many messages).
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(Tx(self.pool.begin().await?))
    }

    /// Writes a task back (after merging an event or a result into it). The
    /// upsert itself never loses what a concurrent writer (another gateway, the
    /// result collector) stored: a `finished` state stays, a stored result,
    /// caller and task stay, and a field is only replaced by a value.
    pub async fn put(&self, t: &TaskRow) -> Result<(), StoreError> {
        put_on(&self.pool, t).await
    }

    /// Appends one event to a task's timeline (a duplicate is ignored).
    pub async fn add_event(
        &self,
        task_id: &str,
        state: &str,
        worker: &str,
        at: i64,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        add_event_on(&self.pool, task_id, state, worker, at, detail).await
    }

    /// A task's timeline, oldest first: (state, worker, at, detail).
    pub async fn events(
        &self,
        task_id: &str,
    ) -> Result<Vec<(String, String, i64, Option<String>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT state, worker, at, detail FROM task_events WHERE task_id = $1 ORDER BY at",
        )
        .bind(task_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Tasks submitted through the gateway that have no result yet (their
    /// results are collected again after a restart).
    pub async fn unfinished_of_gateway(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM tasks WHERE caller IS NOT NULL AND result IS NULL \
             AND state <> 'finished'",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Search, newest first.
    pub async fn search(&self, s: &Search) -> Result<Vec<TaskRow>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM tasks WHERE 1 = 1");
        let mut args: Vec<Arg> = Vec::new();
        let mut add = |cond: &str, a: Arg, sql: &mut String| {
            args.push(a);
            sql.push_str(&cond.replace('?', &format!("${}", args.len())));
        };
        if let Some(v) = &s.pool {
            add(" AND pool = ?", Arg::S(v.clone()), &mut sql);
        }
        if let Some(v) = &s.status {
            add(" AND status = ?", Arg::S(v.clone()), &mut sql);
        }
        if let Some(v) = &s.state {
            add(" AND state = ?", Arg::S(v.clone()), &mut sql);
        }
        if let Some(v) = &s.caller {
            add(" AND caller = ?", Arg::S(v.clone()), &mut sql);
        }
        if let Some(v) = &s.submitter {
            add(" AND submitter = ?", Arg::S(v.clone()), &mut sql);
        }
        if let Some(v) = &s.worker {
            add(" AND worker = ?", Arg::S(v.clone()), &mut sql);
        }
        if let Some(v) = s.since {
            add(" AND updated_at >= ?", Arg::I(v), &mut sql);
        }
        if let Some(v) = s.before {
            add(" AND updated_at < ?", Arg::I(v), &mut sql);
        }
        if let Some(q) = &s.q {
            let like = format!("%{}%", q.replace(['%', '_'], ""));
            // One argument for the three placeholders (`$n` each time).
            add(
                " AND (id LIKE ? OR spec LIKE ? OR error LIKE ?)",
                Arg::S(like),
                &mut sql,
            );
        }
        add(
            " ORDER BY updated_at DESC, id LIMIT ?",
            Arg::I(s.limit),
            &mut sql,
        );
        let mut query = sqlx::query(&sql);
        for a in &args {
            query = match a {
                Arg::S(v) => query.bind(v.clone()),
                Arg::I(v) => query.bind(*v),
            };
        }
        let rows = query.fetch_all(&self.read).await?;
        rows.iter().map(task_row).collect()
    }

    /// Claims `(caller, key)` for a new task, dropping a claim older than `ttl_ms`.
    /// The primary key decides between parallel requests: exactly one gets `Fresh`.
    pub async fn claim_key(
        &self,
        caller: &str,
        key: &str,
        task_id: &str,
        request_hash: &str,
        ttl_ms: i64,
    ) -> Result<Claim, StoreError> {
        let now = now_ms();
        sqlx::query("DELETE FROM idempotency WHERE caller = $1 AND key = $2 AND created_at < $3")
            .bind(caller)
            .bind(key)
            .bind(now - ttl_ms)
            .execute(&self.pool)
            .await?;
        let done = sqlx::query(
            "INSERT INTO idempotency (caller, key, task_id, request_hash, confirmed, created_at) \
             VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT DO NOTHING",
        )
        .bind(caller)
        .bind(key)
        .bind(task_id)
        .bind(request_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(Claim::Fresh);
        }
        let row = sqlx::query(
            "SELECT task_id, request_hash, confirmed FROM idempotency \
             WHERE caller = $1 AND key = $2",
        )
        .bind(caller)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(Claim::Taken {
                task_id: r.try_get(0)?,
                request_hash: r.try_get(1)?,
                confirmed: r.try_get::<i64, _>(2)? != 0,
            }),
            // Released between the insert and the select: try again.
            None => Box::pin(self.claim_key(caller, key, task_id, request_hash, ttl_ms)).await,
        }
    }

    /// The key's task was confirmed by the broker.
    pub async fn confirm_key(&self, caller: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE idempotency SET confirmed = 1 WHERE caller = $1 AND key = $2")
            .bind(caller)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The key's task could not be published: a repeat may try again.
    pub async fn release_key(&self, caller: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM idempotency WHERE caller = $1 AND key = $2 AND confirmed = 0")
            .bind(caller)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes what is older than `max_age_ms`, then the oldest finished tasks
    /// while the stored size passes `max_bytes`. Returns how many tasks went.
    pub async fn enforce_retention(
        &self,
        max_age_ms: i64,
        max_bytes: i64,
    ) -> Result<u64, StoreError> {
        let cutoff = now_ms() - max_age_ms;
        let mut gone = sqlx::query("DELETE FROM tasks WHERE updated_at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM task_events WHERE at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM idempotency WHERE created_at < $1")
            .bind(now_ms() - crate::IDEMPOTENCY_TTL.as_millis() as i64)
            .execute(&self.pool)
            .await?;
        loop {
            let row =
                sqlx::query("SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT), COUNT(*) FROM tasks")
                    .fetch_one(&self.pool)
                    .await?;
            let total: i64 = row.try_get(0)?;
            let count: i64 = row.try_get(1)?;
            if total <= max_bytes || count == 0 {
                break;
            }
            // The oldest tenth (at least one) of the finished tasks.
            let batch = (count / 10).max(1);
            let n = sqlx::query(
                "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE state = 'finished' \
                 ORDER BY updated_at LIMIT $1)",
            )
            .bind(batch)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if n == 0 {
                break;
            }
            gone += n;
        }
        sqlx::query("DELETE FROM task_events WHERE task_id NOT IN (SELECT id FROM tasks)")
            .execute(&self.pool)
            .await?;
        Ok(gone)
    }
}

enum Arg {
    S(String),
    I(i64),
}

/// Several writes committed together ([`Store::begin`]); dropped without
/// [`Tx::commit`], nothing of it is kept.
pub struct Tx(sqlx::Transaction<'static, sqlx::Any>);

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tx")
    }
}

impl Tx {
    /// One task, as this transaction sees it.
    pub async fn get(&mut self, id: &str) -> Result<Option<TaskRow>, StoreError> {
        get_on(&mut *self.0, id).await
    }

    /// [`Store::put`] inside the transaction.
    pub async fn put(&mut self, t: &TaskRow) -> Result<(), StoreError> {
        put_on(&mut *self.0, t).await
    }

    /// [`Store::add_event`] inside the transaction.
    pub async fn add_event(
        &mut self,
        task_id: &str,
        state: &str,
        worker: &str,
        at: i64,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        add_event_on(&mut *self.0, task_id, state, worker, at, detail).await
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        Ok(self.0.commit().await?)
    }
}

async fn get_on<'e, E>(e: E, id: &str) -> Result<Option<TaskRow>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM tasks WHERE id = $1"))
        .bind(id)
        .fetch_optional(e)
        .await?;
    row.map(|r| task_row(&r)).transpose()
}

async fn put_on<'e, E>(e: E, t: &TaskRow) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let size = [&t.spec, &t.result, &t.error, &t.blocked]
        .iter()
        .map(|s| s.as_ref().map_or(0, |s| s.len()))
        .sum::<usize>() as i64;
    sqlx::query(
        "INSERT INTO tasks (id, pool, state, status, caller, submitter, worker, sandbox, \
         attempt, exit_code, error, blocked, spec, result, submitted_at, started_at, \
         finished_at, updated_at, size) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
         $11, $12, $13, $14, $15, $16, $17, $18, $19) ON CONFLICT (id) DO UPDATE SET \
         pool = excluded.pool, \
         state = CASE WHEN tasks.state = 'finished' THEN tasks.state ELSE excluded.state END, \
         status = COALESCE(excluded.status, tasks.status), \
         caller = COALESCE(tasks.caller, excluded.caller), \
         submitter = COALESCE(excluded.submitter, tasks.submitter), \
         worker = COALESCE(excluded.worker, tasks.worker), \
         sandbox = COALESCE(excluded.sandbox, tasks.sandbox), \
         attempt = COALESCE(excluded.attempt, tasks.attempt), \
         exit_code = COALESCE(excluded.exit_code, tasks.exit_code), \
         error = COALESCE(excluded.error, tasks.error), \
         blocked = CASE WHEN tasks.state = 'finished' THEN NULL ELSE excluded.blocked END, \
         spec = COALESCE(tasks.spec, excluded.spec), \
         result = COALESCE(excluded.result, tasks.result), \
         submitted_at = COALESCE(tasks.submitted_at, excluded.submitted_at), \
         started_at = COALESCE(excluded.started_at, tasks.started_at), \
         finished_at = COALESCE(excluded.finished_at, tasks.finished_at), \
         updated_at = excluded.updated_at, \
         size = CASE WHEN excluded.size > tasks.size THEN excluded.size ELSE tasks.size END",
    )
    .bind(&t.id)
    .bind(&t.pool)
    .bind(&t.state)
    .bind(&t.status)
    .bind(&t.caller)
    .bind(&t.submitter)
    .bind(&t.worker)
    .bind(&t.sandbox)
    .bind(t.attempt)
    .bind(t.exit_code)
    .bind(&t.error)
    .bind(&t.blocked)
    .bind(&t.spec)
    .bind(&t.result)
    .bind(t.submitted_at)
    .bind(t.started_at)
    .bind(t.finished_at)
    .bind(t.updated_at)
    .bind(size)
    .execute(e)
    .await?;
    Ok(())
}

async fn add_event_on<'e, E>(
    e: E,
    task_id: &str,
    state: &str,
    worker: &str,
    at: i64,
    detail: Option<&str>,
) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO task_events (task_id, state, worker, at, detail) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(task_id)
    .bind(state)
    .bind(worker)
    .bind(at)
    .bind(detail)
    .execute(e)
    .await?;
    Ok(())
}

fn task_row(r: &AnyRow) -> Result<TaskRow, StoreError> {
    Ok(TaskRow {
        id: r.try_get("id")?,
        pool: r.try_get("pool")?,
        state: r.try_get("state")?,
        status: r.try_get("status")?,
        caller: r.try_get("caller")?,
        submitter: r.try_get("submitter")?,
        worker: r.try_get("worker")?,
        sandbox: r.try_get("sandbox")?,
        attempt: r.try_get("attempt")?,
        exit_code: r.try_get("exit_code")?,
        error: r.try_get("error")?,
        blocked: r.try_get("blocked")?,
        spec: r.try_get("spec")?,
        result: r.try_get("result")?,
        submitted_at: r.try_get("submitted_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> Store {
        Store::open("sqlite::memory:")
            .await
            .expect("in-memory store")
    }

    #[tokio::test]
    async fn an_idempotency_key_is_claimed_once_and_expires() {
        let s = store().await;
        let day = 24 * 3600 * 1000;
        assert_eq!(
            s.claim_key("a", "k", "t1", "h1", day).await.expect("claim"),
            Claim::Fresh
        );
        let again = s.claim_key("a", "k", "t2", "h1", day).await.expect("claim");
        assert_eq!(
            again,
            Claim::Taken {
                task_id: "t1".into(),
                request_hash: "h1".into(),
                confirmed: false
            }
        );
        // Another caller's key of the same name is its own.
        assert_eq!(
            s.claim_key("b", "k", "t3", "h1", day).await.expect("claim"),
            Claim::Fresh
        );
        s.confirm_key("a", "k").await.expect("confirm");
        assert!(matches!(
            s.claim_key("a", "k", "t4", "h1", day).await.expect("claim"),
            Claim::Taken {
                confirmed: true,
                ..
            }
        ));
        // A confirmed key is not released; an unconfirmed one is.
        s.release_key("a", "k").await.expect("release");
        assert!(matches!(
            s.claim_key("a", "k", "t5", "h1", day).await.expect("claim"),
            Claim::Taken { .. }
        ));
        s.release_key("b", "k").await.expect("release");
        assert_eq!(
            s.claim_key("b", "k", "t6", "h1", day).await.expect("claim"),
            Claim::Fresh
        );
        // Past its time to live the key is free again.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert_eq!(
            s.claim_key("a", "k", "t7", "h2", 1).await.expect("claim"),
            Claim::Fresh
        );
    }

    #[tokio::test]
    async fn a_finished_task_keeps_its_result_against_a_late_event() {
        let s = store().await;
        s.insert_submitted("t", "p", "alice", "{}")
            .await
            .expect("insert");
        let mut done = s.get("t").await.expect("get").expect("row");
        done.state = "finished".into();
        done.status = Some("succeeded".into());
        done.result = Some("{\"r\":1}".into());
        s.put(&done).await.expect("put");
        // A writer that read the row before the result: started, no result.
        let stale = TaskRow {
            id: "t".into(),
            pool: "p".into(),
            state: "started".into(),
            worker: Some("w".into()),
            updated_at: now_ms(),
            ..TaskRow::default()
        };
        s.put(&stale).await.expect("put");
        let t = s.get("t").await.expect("get").expect("row");
        assert_eq!(t.state, "finished");
        assert_eq!(t.result.as_deref(), Some("{\"r\":1}"));
        assert_eq!(t.caller.as_deref(), Some("alice"));
        assert_eq!(t.worker.as_deref(), Some("w"));
    }

    #[tokio::test]
    async fn retention_drops_by_age_then_by_size() {
        let s = store().await;
        for i in 0..20 {
            let mut t = TaskRow {
                id: format!("t{i:02}"),
                pool: "p".into(),
                state: "finished".into(),
                spec: Some("x".repeat(100)),
                updated_at: now_ms() - i64::from(i) * 1000,
                ..TaskRow::default()
            };
            if i == 19 {
                t.updated_at = now_ms() - 10 * 24 * 3600 * 1000;
            }
            s.put(&t).await.expect("put");
        }
        let week = 7 * 24 * 3600 * 1000;
        assert_eq!(s.enforce_retention(week, i64::MAX).await.expect("age"), 1);
        assert!(s.get("t19").await.expect("get").is_none());
        // 19 × 100 bytes; keep at most 1000: the oldest go first.
        let gone = s.enforce_retention(week, 1000).await.expect("size");
        assert!(gone >= 9, "{gone}");
        assert!(
            s.get("t00").await.expect("get").is_some(),
            "the newest stays"
        );
        assert!(
            s.get("t18").await.expect("get").is_none(),
            "the oldest went"
        );
    }
}
