//! The SVG plot of a run: read-latency percentile curves of cacheback and the peers on W2 (the
//! stale burst, in one process and across 4 processes on Redis) and W4 (the mixed workload),
//! log-scaled so the tail shows.

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::report::Record;

/// Percentiles are plotted on a "nines" axis: x = log10(1 / (1 - q)), 0 → p0, 3 → p99.9.
const MAX_NINES: f64 = 3.0;
const COLORS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),   // cacheback: blue
    RGBColor(213, 94, 0),    // moka: vermilion
    RGBColor(0, 158, 115),   // cached plain: green
    RGBColor(204, 121, 167), // cached SWR: purple
    RGBColor(230, 159, 0),   // amalgam-cache: orange
    RGBColor(86, 180, 233),  // cacheback with near caches: sky blue
    RGBColor(120, 80, 0),    // amalgam-cache, processes that never read the key: brown
];

/// One panel: a title and a curve per subject (its label).
struct Panel<'a> {
    title: String,
    curves: Vec<(String, &'a Histogram<u64>)>,
}

/// The label of a W2 curve across processes: the subject and what sets the variant apart.
fn fleet_label(r: &Record) -> String {
    if r.variant.contains("near cache") {
        format!("{} (near caches)", r.subject)
    } else if r.variant.contains("already serving") {
        format!("{} (processes serving the key)", r.subject)
    } else if r.variant.contains("never read") {
        format!("{} (processes that never read it)", r.subject)
    } else {
        r.subject.clone()
    }
}

/// The SVG, or `None` when the run has no W2/W4 latencies.
pub(crate) fn latency_svg(records: &[Record]) -> Option<String> {
    let panel =
        |title: &str, pick: &dyn Fn(&Record) -> bool, label: &dyn Fn(&Record) -> String| Panel {
            title: title.to_owned(),
            curves: records
                .iter()
                .filter(|r| pick(r))
                .filter_map(|r| Some((label(r), r.latencies.as_ref()?)))
                .collect(),
        };
    let subject = |r: &Record| r.subject.clone();
    let is = |r: &Record, variant: &str| {
        matches!(r.workload, "W2" | "W4" | "W6") && r.variant == variant
    };
    let panels: Vec<Panel<'_>> = [
        panel(
            "W2: 64 readers of a key that just turned stale (200 ms fetch)",
            &|r| is(r, "memory, one process") && (r.workload != "W6" || r.subject != "cacheback"),
            &subject,
        ),
        panel(
            "W2 on Redis: 4 processes × 16 readers of a stale key",
            &|r| {
                matches!(r.workload, "W2" | "W6")
                    && r.variant.starts_with("Redis")
                    && r.variant.contains("4 processes")
                    && (r.subject != "cacheback"
                        || r.variant.starts_with("Redis,")
                        || r.variant.starts_with("Redis + near cache,"))
            },
            &fleet_label,
        ),
        panel(
            "W4 prewarmed: Zipf reads, 2 s lifetime, 20 ms fetch",
            &|r| is(r, "memory, prewarmed") && (r.workload != "W6" || r.subject != "cacheback"),
            &subject,
        ),
    ]
    .into_iter()
    .filter(|p| !p.curves.is_empty())
    .collect();
    if panels.is_empty() {
        return None;
    }
    let mut svg = String::new();
    {
        let width = 640 * panels.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (width, 480)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let areas = root.split_evenly((1, panels.len()));
        for (area, panel) in areas.iter().zip(&panels) {
            draw_panel(area, panel).ok()?;
        }
        root.present().ok()?;
    }
    Some(svg)
}

fn subject_color(subject: &str) -> RGBColor {
    match subject {
        "cacheback" => COLORS[0],
        s if s.starts_with("cacheback (near") => COLORS[5],
        s if s.starts_with("amalgam") && s.contains("never read") => COLORS[6],
        s if s.starts_with("moka") => COLORS[1],
        s if s.starts_with("cached #") => COLORS[2],
        s if s.starts_with("amalgam") => COLORS[4],
        _ => COLORS[3],
    }
}

/// (nines, latency in µs) points of a histogram.
pub(crate) fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    (0..=300)
        .map(|i| {
            let nines = f64::from(i) / 100.0;
            let q = 1.0 - 10f64.powf(-nines);
            let us = h.value_at_quantile(q) as f64 / 1_000.0;
            (nines, us.max(0.01))
        })
        .collect()
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel<'_>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let curves: Vec<_> = panel
        .curves
        .iter()
        .map(|(name, h)| (name.as_str(), percentile_curve(h)))
        .collect();
    let max = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    let min = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(f64::INFINITY, f64::min)
        .max(0.01);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..MAX_NINES, (min / 2.0..max * 3.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("read latency (µs, log scale)")
        .x_labels(4)
        .x_label_formatter(&|x| match (x * 10.0).round() as i64 {
            0 => "p0".to_owned(),
            10 => "p90".to_owned(),
            20 => "p99".to_owned(),
            30 => "p99.9".to_owned(),
            _ => String::new(),
        })
        .y_label_formatter(&|y| {
            if *y >= 1000.0 {
                format!("{:.0} ms", y / 1000.0)
            } else if *y >= 1.0 {
                format!("{y:.0} µs")
            } else {
                format!("{y:.2} µs")
            }
        })
        .draw()?;
    for (name, curve) in curves {
        let color = subject_color(name);
        chart
            .draw_series(LineSeries::new(curve, color.stroke_width(3)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats;
    use std::time::Duration;

    #[test]
    fn curve_is_monotone_and_spans_the_nines() {
        let mut h = stats::latency_histogram();
        for us in 1..=10_000u64 {
            stats::record(&mut h, Duration::from_micros(us));
        }
        let c = percentile_curve(&h);
        assert_eq!(c.len(), 301);
        assert_eq!(c[0].0, 0.0);
        assert_eq!(c[300].0, 3.0);
        assert!(c.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!((c[200].1 - 9_900.0).abs() < 20.0, "p99 {}", c[200].1);
    }

    #[test]
    fn svg_is_drawn_for_w2_records() {
        let mut h = stats::latency_histogram();
        stats::record(&mut h, Duration::from_micros(3));
        let mut r = Record::new("W2", "memory, one process", "cacheback");
        r.latencies = Some(h);
        let svg = latency_svg(&[r]).expect("a plot");
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("cacheback"));
        assert!(latency_svg(&[]).is_none());
    }

    /// The W2 runs across processes get a panel of their own, a curve per case.
    #[test]
    fn fleet_runs_get_their_panel() {
        let record = |workload, variant: &str, subject| {
            let mut h = stats::latency_histogram();
            stats::record(&mut h, Duration::from_micros(300));
            let mut r = Record::new(workload, variant, subject);
            r.latencies = Some(h);
            r
        };
        let records = [
            record(
                "W2",
                "Redis, 4 processes × 16 readers + a worker process",
                "cacheback",
            ),
            record(
                "W2",
                "Redis + near cache, 4 processes × 16 readers + a worker process",
                "cacheback",
            ),
            record(
                "W6",
                "Redis, 4 processes × 16 readers, processes that never read the key",
                "amalgam-cache",
            ),
        ];
        let svg = latency_svg(&records).expect("a plot");
        assert!(svg.contains("4 processes"));
        assert!(svg.contains("cacheback (near caches)"));
        assert!(svg.contains("amalgam-cache (processes that never read it)"));
    }
}
