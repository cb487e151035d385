//! The curve's chart (scenario 8): throughput and p50 over parallelism, two
//! panels side by side, drawn as SVG with `plotters`.

use std::path::Path;

use plotters::prelude::*;

/// Which panel a series goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Panel {
    /// Tasks (or spawns) per second.
    Rate,
    /// p50 in ms.
    P50,
}

/// One line of the chart: (parallelism, value) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub panel: Panel,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn rate(label: &str, points: Vec<(f64, f64)>) -> Self {
        Series {
            label: label.into(),
            panel: Panel::Rate,
            points,
        }
    }
    pub fn p50(label: &str, points: Vec<(f64, f64)>) -> Self {
        Series {
            label: label.into(),
            panel: Panel::P50,
            points,
        }
    }
}

const COLOURS: [RGBColor; 3] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), BLACK];

/// Writes the two panels to `path`.
pub fn curve(path: &Path, series: &[Series]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (960, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(draw)?;
    let (left, right) = root.split_horizontally(480);
    for (area, panel, caption, y_desc) in [
        (&left, Panel::Rate, "throughput", "tasks/s"),
        (&right, Panel::P50, "p50 submit → result", "ms"),
    ] {
        let lines: Vec<&Series> = series.iter().filter(|s| s.panel == panel).collect();
        let x_max = lines
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .fold(1.0, f64::max);
        let y_max = lines
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d((1.0..x_max * 1.15).log_scale(), 0.0..y_max * 1.15)
            .map_err(draw)?;
        chart
            .configure_mesh()
            .x_desc("N = slots in all (workers × slots)")
            .y_desc(y_desc)
            .x_label_formatter(&|x| format!("{x:.0}"))
            // The log scale's minor lines would crowd the panel: major lines only.
            .light_line_style(WHITE)
            .draw()
            .map_err(draw)?;
        for (i, s) in lines.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(draw)?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                .map_err(draw)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw)?;
    }
    root.present().map_err(draw)?;
    Ok(())
}

fn draw<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_both_panels_with_every_label() {
        let path = std::env::temp_dir().join(format!("krill-chart-{}.svg", std::process::id()));
        curve(
            &path,
            &[
                Series::rate("slots", vec![(1.0, 100.0), (2.0, 180.0), (16.0, 250.0)]),
                Series::p50("slots", vec![(1.0, 4.0), (2.0, 5.0), (16.0, 40.0)]),
                Series::p50("floor", vec![(1.0, 2.0), (16.0, 9.0)]),
            ],
        )
        .expect("chart");
        let svg = std::fs::read_to_string(&path).expect("svg written");
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        for text in ["throughput", "p50 submit", "slots", "floor", "tasks/s"] {
            assert!(svg.contains(text), "missing {text}");
        }
    }
}
