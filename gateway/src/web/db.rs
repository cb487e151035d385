//! The web view's tables: sessions (stored by the SHA-256 of their id, bound to
//! the hash of the token that signed in) and the pool samples of the charts.

use sqlx::Row;

use crate::rights::{hash_token, Caller};
use crate::store::{now_ms, Store, StoreError};

/// A signed-in browser: who it is and the CSRF token its forms carry.
#[derive(Debug, Clone)]
pub struct Session {
    pub caller: Caller,
    pub csrf: String,
}

/// One sample of a pool: (at ms, ready, running).
pub type Sample = (i64, i64, i64);

/// Starts a session `id` for the bearer `token` (already checked), valid for `ttl_ms`.
pub async fn create_session(
    store: &Store,
    id: &str,
    token: &str,
    csrf: &str,
    ttl_ms: i64,
) -> Result<(), StoreError> {
    let now = now_ms();
    sqlx::query("DELETE FROM web_sessions WHERE expires_at < $1")
        .bind(now)
        .execute(store.pool())
        .await?;
    sqlx::query(
        "INSERT INTO web_sessions (id_hash, token_hash, csrf, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(hash_token(id))
    .bind(hash_token(token))
    .bind(csrf)
    .bind(now)
    .bind(now + ttl_ms)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// The live session `id` with the rights its token has now (none: unknown,
/// expired, its token expired, or its token was replaced or removed).
pub async fn session(store: &Store, id: &str) -> Result<Option<Session>, StoreError> {
    let row = sqlx::query(
        "SELECT t.name, t.rights, s.csrf FROM web_sessions s JOIN tokens t \
         ON t.hash = s.token_hash WHERE s.id_hash = $1 AND s.expires_at > $2 \
         AND (t.expires_at IS NULL OR t.expires_at > $2)",
    )
    .bind(hash_token(id))
    .bind(now_ms())
    .fetch_optional(store.pool())
    .await?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some(Session {
            caller: Caller {
                name: r.try_get(0)?,
                rights: serde_json::from_str(&r.try_get::<String, _>(1)?)?,
            },
            csrf: r.try_get(2)?,
        })),
    }
}

/// Ends session `id`.
pub async fn delete_session(store: &Store, id: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1")
        .bind(hash_token(id))
        .execute(store.pool())
        .await?;
    Ok(())
}

/// Records one sample of `pool` and drops samples older than `keep_ms`.
pub async fn add_sample(
    store: &Store,
    pool: &str,
    at: i64,
    ready: i64,
    running: i64,
    consumers: i64,
    keep_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO pool_samples (pool, at, ready, running, consumers) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(pool)
    .bind(at)
    .bind(ready)
    .bind(running)
    .bind(consumers)
    .execute(store.pool())
    .await?;
    sqlx::query("DELETE FROM pool_samples WHERE at < $1")
        .bind(at - keep_ms)
        .execute(store.pool())
        .await?;
    Ok(())
}

/// The samples of `pool` since `since` (ms), oldest first.
pub async fn samples(store: &Store, pool: &str, since: i64) -> Result<Vec<Sample>, StoreError> {
    let rows = sqlx::query(
        "SELECT at, ready, running FROM pool_samples WHERE pool = $1 AND at >= $2 ORDER BY at",
    )
    .bind(pool)
    .bind(since)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// The oldest task of `pool` still waiting (queued or blocked): (id, state, submitted ms).
pub async fn oldest_waiting(
    store: &Store,
    pool: &str,
) -> Result<Option<(String, String, Option<i64>)>, StoreError> {
    let row = sqlx::query(
        "SELECT id, state, submitted_at FROM tasks WHERE pool = $1 \
         AND state IN ('queued', 'blocked') ORDER BY COALESCE(submitted_at, updated_at), id LIMIT 1",
    )
    .bind(pool)
    .fetch_optional(store.pool())
    .await?;
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .transpose()
        .map_err(|e: sqlx::Error| StoreError::from(e))
}

/// How many tasks of `pool` still queued were submitted before `at` (ms).
pub async fn queued_before(store: &Store, pool: &str, at: i64) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*) FROM tasks WHERE pool = $1 AND state = 'queued' AND submitted_at < $2",
    )
    .bind(pool)
    .bind(at)
    .fetch_one(store.pool())
    .await?;
    Ok(row.try_get(0)?)
}
