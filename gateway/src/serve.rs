//! The gateway's task tree and its flags: the store, the gateway's own key,
//! the history recorder, result collectors, retention, and the HTTP server;
//! `tokens add|list|remove` for the operator.
//!
//! ```text
//! run ─┬─ history::run        (events of watched pools and replies → store; durable queues)
//!      ├─ live::run           (every live log chunk, one queue and consumer → the followed tasks' buffers)
//!      ├─ retention           (every RETENTION_EVERY: age, then size)
//!      ├─ web::live::run      (heartbeat report for the pages; pool samples for the charts)
//!      ├─ collect_result × n  (per task an earlier version submitted: its reply queue → store)
//!      └─ axum::serve         (until the shutdown token)
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use broker::protocol::TaskResult;
use broker::trust::{BoxPublicKey, Credentials, Identity};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::rights::{new_token, Rights};
use crate::store::Store;
use crate::{AppState, Notifier};

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default data directory (SQLite file, gateway key).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/krill";
/// Default largest request body: 16 MiB.
pub const DEFAULT_MAX_BODY: usize = 16 << 20;
/// How often retention runs.
pub const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// `krill-gateway`: HTTP submit and the task history.
#[derive(Debug, Parser)]
#[command(name = "krill-gateway", version)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Where the history lives.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// Directory of the default SQLite file and of the gateway's key.
    #[arg(long, env = "KRILL_GATEWAY_DATA_DIR", default_value = DEFAULT_DATA_DIR, global = true)]
    pub data_dir: PathBuf,
    /// `sqlite:///path/file.db` or `postgres://user:pass@host/db` (default: gateway.db in --data-dir).
    #[arg(long, env = "KRILL_GATEWAY_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
}

impl DbArgs {
    pub fn url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("gateway.db").display()))
    }
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Serve the API (the default).
    Serve,
    /// Manage bearer tokens.
    #[command(subcommand)]
    Tokens(TokensCmd),
}

#[derive(Debug, Subcommand)]
pub enum TokensCmd {
    /// Adds (or replaces) token NAME and prints it once; only its hash is stored.
    Add {
        name: String,
        /// submit:POOL[+POOL…] | submit:* , see:own | see:all , cancel , drain , replay , admin
        #[arg(long, default_value = "submit:default,see:own")]
        rights: String,
        /// Valid for this long (`30d`, `12h`; default: until removed).
        #[arg(long, value_parser = broker::units::parse_duration)]
        expires: Option<Duration>,
    },
    /// Lists the tokens: name, rights, created, expires (never the hash).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Removes token NAME: its requests answer 401 from now on.
    Remove { name: String },
}

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long, env = "KRILL_GATEWAY_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    #[arg(long, env = "KRILL_AMQP_URL", default_value = broker::amqp::DEFAULT_AMQP_URL)]
    pub amqp_url: String,
    /// The gateway's signing key (made on first start when missing): add its
    /// public line to the workers' trusted-keys file with the restrictions HTTP callers get.
    #[arg(long, env = "KRILL_GATEWAY_KEY")]
    pub key: Option<PathBuf>,
    /// Name of the key made on first start.
    #[arg(long, env = "KRILL_GATEWAY_KEY_NAME", default_value = "gateway")]
    pub key_name: String,
    /// The pool's public key (file or base64): secrets are sealed to it before they leave the gateway.
    #[arg(long, env = "KRILL_POOL_PUBLIC_KEY")]
    pub pool_public_key: Option<String>,
    /// Pools whose task events are recorded (comma-separated; `*`: every pool).
    #[arg(
        long,
        env = "KRILL_GATEWAY_WATCH",
        default_value = "*",
        value_delimiter = ','
    )]
    pub watch: Vec<String>,
    /// The gateway's durable event queue (gateways of one database share it).
    #[arg(
        long,
        env = "KRILL_GATEWAY_QUEUE",
        default_value = "krill.gateway.history"
    )]
    pub queue: String,
    /// Tasks older than this are deleted.
    #[arg(long, env = "KRILL_GATEWAY_RETENTION", default_value = "30days", value_parser = broker::units::parse_duration)]
    pub retention: Duration,
    /// The history is kept under this size (oldest finished tasks go first).
    #[arg(long, env = "KRILL_GATEWAY_MAX_HISTORY", default_value = "10g", value_parser = broker::units::parse_size)]
    pub max_history: u64,
    /// Largest request body.
    #[arg(long, env = "KRILL_GATEWAY_MAX_BODY", default_value_t = DEFAULT_MAX_BODY)]
    pub max_body: usize,
    /// Mark the web view's session cookie `Secure` (set it when the gateway is behind TLS).
    #[arg(long, env = "KRILL_GATEWAY_SECURE_COOKIE", default_value_t = false, action = clap::ArgAction::Set)]
    pub secure_cookie: bool,
    /// How long a web sign-in lasts.
    #[arg(long, env = "KRILL_GATEWAY_SESSION_TTL", default_value = "12h", value_parser = broker::units::parse_duration)]
    pub session_ttl: Duration,
}

/// `tokens add`: the new token, printed once.
pub async fn add_token(
    db: &DbArgs,
    name: &str,
    rights: &str,
    expires: Option<Duration>,
) -> anyhow::Result<String> {
    let rights = Rights::parse(rights)?;
    let store = open_store(db).await?;
    let token = new_token();
    let at =
        expires.map(|d| crate::store::now_ms() + d.as_millis().min(i64::MAX as u128 / 2) as i64);
    store.add_token(name, &token, &rights, at).await?;
    Ok(token)
}

/// `tokens list`: a table (or JSON) of names, rights, created, expires.
pub async fn list_tokens(db: &DbArgs, json: bool) -> anyhow::Result<String> {
    let list = open_store(db).await?.tokens().await?;
    if json {
        return Ok(serde_json::to_string_pretty(&list)?);
    }
    let when = |ms: Option<i64>| crate::api::rfc3339(ms).unwrap_or_else(|| "never".into());
    let now = crate::store::now_ms();
    let mut out = format!("{:<20} {:<26} {:<26} RIGHTS", "NAME", "CREATED", "EXPIRES");
    for t in &list {
        let expired = if t.expires_at.is_some_and(|at| at <= now) {
            " (expired)"
        } else {
            ""
        };
        out.push_str(&format!(
            "\n{:<20} {:<26} {:<26} {}",
            t.name,
            when(Some(t.created_at)),
            format!("{}{expired}", when(t.expires_at)),
            t.rights.describe()
        ));
    }
    Ok(out)
}

/// `tokens remove`: false when there was no such token.
pub async fn remove_token(db: &DbArgs, name: &str) -> anyhow::Result<bool> {
    Ok(open_store(db).await?.remove_token(name).await?)
}

async fn open_store(db: &DbArgs) -> anyhow::Result<Store> {
    if db.database_url.is_none() {
        std::fs::create_dir_all(&db.data_dir)
            .with_context(|| format!("creating {}", db.data_dir.display()))?;
    }
    Ok(Store::open(&db.url()).await?)
}

fn load_identity(path: &std::path::Path, name: &str) -> anyhow::Result<Identity> {
    if path.exists() {
        return Identity::load(path).with_context(|| format!("reading {}", path.display()));
    }
    let id = Identity::generate(name)?;
    id.save(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// Serves until `shutdown`.
pub async fn run(db: &DbArgs, a: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    if db.database_url.is_none() {
        std::fs::create_dir_all(&db.data_dir)
            .with_context(|| format!("creating {}", db.data_dir.display()))?;
    }
    let store = Store::open(&db.url())
        .await
        .context("opening the history")?;
    let key_path = a
        .key
        .clone()
        .unwrap_or_else(|| db.data_dir.join("gateway.key"));
    let identity = load_identity(&key_path, &a.key_name)?;
    tracing::info!(key = %identity.public_line(), "gateway signing key (trust it in the workers' trusted-keys file)");
    let pool_key = a
        .pool_public_key
        .as_deref()
        .map(BoxPublicKey::from_file_or_b64)
        .transpose()
        .context("--pool-public-key")?;
    if pool_key.is_none() {
        tracing::warn!("no --pool-public-key: secrets travel to the workers in plain text");
    }
    let notify = Arc::new(Notifier::default());
    let st = Arc::new(AppState {
        store: store.clone(),
        amqp_url: a.amqp_url.clone(),
        replies: crate::history::replies_queue(&a.queue),
        broker: tokio::sync::RwLock::new(None),
        creds: Credentials::new(Some(identity), pool_key),
        notify: notify.clone(),
        max_body: a.max_body,
        live: crate::live::Live::default(),
        tasks: tokio_util::task::TaskTracker::new(),
        shutdown: shutdown.clone(),
        web: crate::web::Web::new(a.secure_cookie, a.session_ttl),
    });
    let watch = crate::history::Watch {
        amqp_url: a.amqp_url.clone(),
        queue: a.queue.clone(),
        pools: a.watch.clone(),
    };
    // The event queue and the replies queue exist before the first task is
    // accepted: a result sent to a replies queue not yet declared would come
    // back unroutable and be lost to the history. With no broker yet, the
    // recorder declares them when it connects (a submit fails meanwhile).
    if let Err(e) = crate::history::declare_queue(&watch).await {
        tracing::warn!(error = %e, "history: cannot declare the gateway's queues yet; the recorder will");
    }
    st.tasks.spawn(crate::history::run(
        watch,
        store.clone(),
        notify,
        shutdown.clone(),
    ));
    // The one consumer of every live log chunk, bound before the first task
    // is accepted (so a task is followed from its first chunk).
    st.tasks.spawn(crate::live::run(st.clone()));
    if !st.live.bound(crate::live::BIND_WAIT).await {
        tracing::warn!(
            "live logs: not bound yet; tasks accepted meanwhile miss their first chunks"
        );
    }
    st.tasks.spawn(retention(
        store.clone(),
        a.retention,
        a.max_history,
        shutdown.clone(),
    ));
    st.tasks.spawn(crate::web::live::run(
        st.clone(),
        a.watch.clone(),
        shutdown.clone(),
    ));
    // Tasks an earlier gateway version submitted with a reply queue of their
    // own (the rest answer on the replies queue the recorder consumes).
    for id in store.unfinished_of_gateway().await? {
        collect_result(&st, id);
    }
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("listening on {}", a.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "krill-gateway serving");
    let app = crate::web::app(crate::api::router(st.clone()), st.clone());
    let token = shutdown.clone();
    // The peer address: the web sign-in's throttle counts failures per address.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await?;
    st.tasks.close();
    // Collectors end with the token; their results stay in the reply queues.
    let _ = tokio::time::timeout(Duration::from_secs(5), st.tasks.wait()).await;
    Ok(())
}

async fn retention(store: Store, age: Duration, max: u64, shutdown: CancellationToken) {
    loop {
        match store
            .enforce_retention(age.as_millis() as i64, max.min(i64::MAX as u64) as i64)
            .await
        {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "history: retention"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "history: retention failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETENTION_EVERY) => {}
        }
    }
}

/// Takes the result of task `id` from its own reply queue `krill.reply.<id>`
/// into the store, when there is one (a task an earlier gateway version
/// submitted; else its result comes on the gateway's replies queue), until
/// the shutdown token (then it stays in its durable queue and is collected
/// after the restart).
pub fn collect_result(st: &Arc<AppState>, id: String) {
    let st2 = st.clone();
    st.tasks.spawn(async move {
        let mut looked = false;
        loop {
            let client = match st2.client().await {
                Ok(c) => c,
                Err(_) => {
                    tokio::select! {
                        _ = st2.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if !looked {
                match client.peek(&id).await {
                    Ok(broker::client::Peek::Missing) => return,
                    Ok(_) => looked = true,
                    Err(e) => {
                        tracing::warn!(task_id = %id, error = %e, "looking for a reply queue failed; again");
                        st2.broker_failed().await;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let got = tokio::select! {
                _ = st2.shutdown.cancelled() => return,
                r = client.wait(&id, None) => r,
            };
            match got {
                Ok(result) => {
                    store_result(&st2, &result).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(task_id = %id, error = %e, "waiting for a result failed; again");
                    st2.broker_failed().await;
                }
            }
        }
    });
}

async fn store_result(st: &AppState, r: &TaskResult) {
    loop {
        match crate::history::record_result(&st.store, r, None).await {
            Ok(()) => {
                st.notify.notify(&r.id);
                return;
            }
            Err(e) => {
                tracing::warn!(task_id = %r.id, error = %e, "storing a result failed; again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Opens the outputs sealed to the gateway's key (for the caller that submitted).
pub fn open_outputs(r: &mut TaskResult, id: &Identity) {
    for name in broker::trust::open_result_outputs(r, id) {
        tracing::debug!(output = %name, "sensitive output sealed to another key");
    }
}
