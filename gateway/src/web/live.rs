//! The live pool view: one heartbeat-stream reader kept open, its report
//! refreshed every [`REFRESH_EVERY`] for the pages (so a page never waits for
//! the stream to be read), and each pool's depth and running tasks written to
//! `pool_samples` every [`SAMPLE_EVERY`] for the charts, kept [`SAMPLE_RETENTION`].

use std::sync::{Arc, RwLock};
use std::time::Duration;

use broker::status::{HeartbeatReader, Report, DEFAULT_SINCE};
use tokio_util::sync::CancellationToken;

use crate::store::now_ms;
use crate::AppState;

/// How often the report the pages show is rebuilt.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// How often each pool is sampled for its chart.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How long samples are kept (the chart shows the last hour).
pub const SAMPLE_RETENTION: Duration = Duration::from_secs(2 * 3600);

/// The latest report (none before the first one, or while the broker is away).
#[derive(Debug, Default)]
pub struct Live(RwLock<Option<Arc<Report>>>);

impl Live {
    pub fn get(&self) -> Option<Arc<Report>> {
        self.0.read().map(|r| r.clone()).unwrap_or(None)
    }
    fn set(&self, r: Option<Report>) {
        if let Ok(mut g) = self.0.write() {
            *g = r.map(Arc::new);
        }
    }
}

/// Keeps only the pools in `watch` (`*`: all).
fn only_watched(mut r: Report, watch: &[String]) -> Report {
    if watch.iter().any(|w| w == "*") {
        return r;
    }
    let ok = |p: &str| watch.iter().any(|w| w == p);
    r.workers.retain(|w| ok(&w.pool));
    r.pools.retain(|p| ok(&p.pool));
    r.keys.retain(|k| ok(&k.pool));
    r
}

/// Refreshes the report and samples the pools until `shutdown`, reconnecting
/// when the broker goes away (the pages then say the view is unavailable).
pub async fn run(st: Arc<AppState>, watch: Vec<String>, shutdown: CancellationToken) {
    let pools: Vec<String> = watch.iter().filter(|w| *w != "*").cloned().collect();
    loop {
        let r = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = refresh(&st, &watch, &pools) => r,
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "web: the live pool view stopped; again");
        }
        st.web.live.set(None);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

async fn refresh(
    st: &AppState,
    watch: &[String],
    pools: &[String],
) -> Result<(), broker::status::StatusError> {
    let mut reader = HeartbeatReader::open(&st.amqp_url, DEFAULT_SINCE).await?;
    reader.catch_up().await?;
    let mut last_sample = 0i64;
    loop {
        let report = only_watched(reader.report(pools).await?, watch);
        let now = now_ms();
        if now - last_sample >= SAMPLE_EVERY.as_millis() as i64 {
            last_sample = now;
            for p in &report.pools {
                let r = super::db::add_sample(
                    &st.store,
                    &p.pool,
                    now,
                    p.ready as i64,
                    i64::from(p.running),
                    i64::from(p.consumers),
                    SAMPLE_RETENTION.as_millis() as i64,
                )
                .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, pool = %p.pool, "web: storing a pool sample failed");
                }
            }
        }
        st.web.live.set(Some(report));
        reader.read_for(REFRESH_EVERY).await?;
    }
}
