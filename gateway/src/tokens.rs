//! The tokens table of the history store: add (hash only), look up (with
//! expiry), list (never the hash) and remove.

use sqlx::Row;

use crate::rights::{hash_token, Caller, Rights};
use crate::store::{now_ms, Store, StoreError};

/// What a bearer token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Caller(Caller),
    /// Token `name` expired at `at` (Unix ms).
    Expired {
        name: String,
        at: i64,
    },
}

/// A token as `tokens list` shows it (never its hash).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenInfo {
    pub name: String,
    pub rights: Rights,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

impl Store {
    /// Adds a token (its hash) named `name` with `rights`, valid until
    /// `expires_at` (Unix ms; `None`: for ever).
    pub async fn add_token(
        &self,
        name: &str,
        token: &str,
        rights: &Rights,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tokens (name, hash, rights, created_at, expires_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, rights = excluded.rights, \
             created_at = excluded.created_at, expires_at = excluded.expires_at",
        )
        .bind(name)
        .bind(hash_token(token))
        .bind(serde_json::to_string(rights)?)
        .bind(now_ms())
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The caller a bearer token belongs to (`Expired` past its expiry).
    pub async fn caller(&self, token: &str) -> Result<Option<Found>, StoreError> {
        let row = sqlx::query("SELECT name, rights, expires_at FROM tokens WHERE hash = $1")
            .bind(hash_token(token))
            .fetch_optional(&self.read)
            .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        let name: String = r.try_get(0)?;
        if let Some(at) = r.try_get::<Option<i64>, _>(2)? {
            if at <= now_ms() {
                return Ok(Some(Found::Expired { name, at }));
            }
        }
        Ok(Some(Found::Caller(Caller {
            name,
            rights: serde_json::from_str(&r.try_get::<String, _>(1)?)?,
        })))
    }

    /// Every token: name, rights, created, expires (never the hash), by name.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let rows =
            sqlx::query("SELECT name, rights, created_at, expires_at FROM tokens ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenInfo {
                    name: r.try_get(0)?,
                    rights: serde_json::from_str(&r.try_get::<String, _>(1)?)?,
                    created_at: r.try_get(2)?,
                    expires_at: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Removes token `name`; false when there was none.
    pub async fn remove_token(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM tokens WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
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
    async fn tokens_are_found_by_their_hash_only() {
        let s = store().await;
        let rights = Rights::parse("submit:p,cancel").expect("rights");
        s.add_token("ci", "krill_secret", &rights, None)
            .await
            .expect("add");
        let Some(Found::Caller(c)) = s.caller("krill_secret").await.expect("caller") else {
            panic!("found");
        };
        assert_eq!(c.name, "ci");
        assert_eq!(c.rights, rights);
        assert!(s.caller("krill_other").await.expect("caller").is_none());
        let row = sqlx::query("SELECT hash FROM tokens")
            .fetch_one(&s.pool)
            .await
            .expect("row");
        assert_ne!(row.try_get::<String, _>(0).expect("hash"), "krill_secret");
    }

    #[tokio::test]
    async fn tokens_list_without_hashes_expire_and_go() {
        let s = store().await;
        let rights = Rights::parse("see:all").expect("rights");
        s.add_token("old", "krill_old", &rights, Some(now_ms() - 1))
            .await
            .expect("add");
        s.add_token("new", "krill_new", &rights, Some(now_ms() + 60_000))
            .await
            .expect("add");
        assert!(matches!(
            s.caller("krill_old").await.expect("caller"),
            Some(Found::Expired { name, .. }) if name == "old"
        ));
        let list = s.tokens().await.expect("list");
        let names: Vec<&str> = list.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["new", "old"]);
        assert!(list[0].expires_at.is_some());
        let json = serde_json::to_string(&list).expect("json");
        assert!(
            !json.contains(&crate::rights::hash_token("krill_new")),
            "{json}"
        );
        assert!(s.remove_token("new").await.expect("remove"));
        assert!(!s.remove_token("new").await.expect("remove"));
        assert!(s.caller("krill_new").await.expect("caller").is_none());
    }
}
