//! A pool's queue depth and running tasks over the last hour as inline SVG,
//! drawn on the server: labelled axes, a solid line for the depth and a dashed
//! one for the running tasks (readable without colour), a title and a summary
//! for screen readers.

use maud::{html, Markup, PreEscaped};

use super::db::Sample;

const W: f64 = 560.0;
const H: f64 = 180.0;
/// Room for the axes' labels.
const LEFT: f64 = 44.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 34.0;
/// The span drawn: the last hour.
pub const SPAN_MS: i64 = 3600 * 1000;

fn points(samples: &[Sample], now: i64, max: i64, pick: fn(&Sample) -> i64) -> String {
    let x = |at: i64| LEFT + (W - LEFT - RIGHT) * (1.0 - (now - at) as f64 / SPAN_MS as f64);
    let y = |v: i64| TOP + (H - TOP - BOTTOM) * (1.0 - v as f64 / max as f64);
    samples
        .iter()
        .map(|s| format!("{:.1},{:.1}", x(s.0), y(pick(s))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The chart of `pool` from its samples (oldest first) as of `now` (ms).
pub fn pool_chart(pool: &str, samples: &[Sample], now: i64) -> Markup {
    let max = samples
        .iter()
        .map(|s| s.1.max(s.2))
        .max()
        .unwrap_or(0)
        .max(1);
    let depth = points(samples, now, max, |s| s.1);
    let running = points(samples, now, max, |s| s.2);
    let last = samples.last();
    let summary = match last {
        Some(s) => format!(
            "{} samples over the last hour; now {} waiting and {} running; at most {max}.",
            samples.len(),
            s.1,
            s.2
        ),
        None => "No samples yet.".to_string(),
    };
    let id = format!(
        "chart-{}",
        pool.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    );
    let plot_bottom = H - BOTTOM;
    let plot_right = W - RIGHT;
    html! {
        figure class="chart" {
            svg xmlns="http://www.w3.org/2000/svg" viewBox={"0 0 " (W) " " (H)} width=(W) height=(H)
                role="img" aria-labelledby={(id) "-t " (id) "-d"} {
                title id={(id) "-t"} { "Pool " (pool) ": queue depth and running tasks, last hour" }
                desc id={(id) "-d"} { (summary) }
                // Axes.
                line x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(plot_bottom) class="axis" {}
                line x1=(LEFT) y1=(plot_bottom) x2=(plot_right) y2=(plot_bottom) class="axis" {}
                @for (v, label) in [(max, max.to_string()), (max / 2, (max / 2).to_string()), (0, "0".to_string())] {
                    @let y = TOP + (H - TOP - BOTTOM) * (1.0 - v as f64 / max as f64);
                    line x1=(LEFT - 4.0) y1=(y) x2=(LEFT) y2=(y) class="axis" {}
                    text x=(LEFT - 7.0) y=(y + 4.0) text-anchor="end" { (label) }
                }
                @for m in [60, 45, 30, 15, 0] {
                    @let x = LEFT + (W - LEFT - RIGHT) * (1.0 - f64::from(m) / 60.0);
                    line x1=(x) y1=(plot_bottom) x2=(x) y2=(plot_bottom + 4.0) class="axis" {}
                    text x=(x) y=(plot_bottom + 16.0) text-anchor="middle" {
                        @if m == 0 { "now" } @else { "-" (m) " min" }
                    }
                }
                text x=(LEFT) y=(H - 3.0) { "time (minutes before now)" }
                @let mid = TOP + (H - TOP - BOTTOM) / 2.0;
                text x="12" y=(mid) transform={"rotate(-90 12 " (mid) ")"} text-anchor="middle" { "tasks" }
                @if !depth.is_empty() {
                    polyline points=(depth) class="depth" fill="none" {}
                    polyline points=(running) class="running" fill="none" {}
                }
            }
            figcaption {
                svg width="30" height="10" aria-hidden="true" { line x1="0" y1="5" x2="30" y2="5" class="depth" {} }
                " queue depth (waiting) "
                svg width="30" height="10" aria-hidden="true" { line x1="0" y1="5" x2="30" y2="5" class="running" {} }
                " running "
                (PreEscaped("&mdash; "))
                (summary)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_has_both_lines_axes_and_a_summary() {
        let now = 10_000_000;
        let s = vec![(now - 600_000, 4, 1), (now - 300_000, 2, 2), (now, 0, 2)];
        let svg = pool_chart("p<1>", &s, now).into_string();
        assert!(svg.contains(r#"class="depth""#) && svg.contains(r#"class="running""#));
        assert!(svg.contains("now 0 waiting and 2 running"), "{svg}");
        assert!(svg.contains("-60 min") && svg.contains(">now<"));
        assert!(svg.contains("p&lt;1&gt;") && !svg.contains("p<1>"));
    }
}
