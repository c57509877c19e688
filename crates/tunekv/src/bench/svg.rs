//! Two small SVG bar charts (no plotting dependency): latency by level (p50 and p99) and
//! served staleness by level (p99 ms and p99 entries).

use super::LevelResult;
use std::fmt::Write;

/// A grouped bar chart: one group per level, one bar per series.
fn bars(title: &str, unit: &str, labels: &[String], series: &[(&str, &str, Vec<f64>)]) -> String {
    let (w, h, left, bottom, top) = (120 + 110 * labels.len(), 360, 70.0, 90.0, 40.0);
    let max = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let plot_h = h as f64 - bottom - top;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="24" font-size="15">{title}</text>"#
    );
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = top + plot_h - plot_h * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.1}</text>"##,
            w - 20,
            left - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="14" y="{:.0}" transform="rotate(-90 14 {:.0})">{unit}</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    let group = 110.0;
    let bar = (group - 20.0) / series.len().max(1) as f64;
    for (i, label) in labels.iter().enumerate() {
        let x0 = left + 10.0 + group * i as f64;
        for (j, (_, color, values)) in series.iter().enumerate() {
            let v = values.get(i).copied().unwrap_or(0.0);
            let bh = plot_h * v / max;
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{color}"><title>{label}: {v:.2} {unit}</title></rect>"#,
                x0 + bar * j as f64,
                top + plot_h - bh,
                bar - 2.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" transform="rotate(30 {:.1} {:.1})">{}</text>"#,
            x0,
            top + plot_h + 16.0,
            x0,
            top + plot_h + 16.0,
            label.replace('&', "&amp;").replace('<', "&lt;")
        );
    }
    for (j, (name, color, _)) in series.iter().enumerate() {
        let x = left + 140.0 * j as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{color}"/><text x="{}" y="{}">{name}</text>"#,
            h - 18,
            x + 16.0,
            h - 8
        );
    }
    s.push_str("</svg>\n");
    s
}

pub fn latency(results: &[LevelResult]) -> String {
    let labels: Vec<String> = results.iter().map(|r| r.label.clone()).collect();
    let q = |q: f64| -> Vec<f64> {
        results
            .iter()
            .map(|r| r.latency_us.value_at_quantile(q) as f64 / 1000.0)
            .collect()
    };
    bars(
        "latency by level",
        "ms",
        &labels,
        &[("p50", "#4c78a8", q(0.5)), ("p99", "#f58518", q(0.99))],
    )
}

pub fn staleness(results: &[LevelResult]) -> String {
    let labels: Vec<String> = results.iter().map(|r| r.label.clone()).collect();
    let p99 = |f: fn(&LevelResult) -> &hdrhistogram::Histogram<u64>| -> Vec<f64> {
        results
            .iter()
            .map(|r| {
                let h = f(r);
                if h.is_empty() {
                    0.0
                } else {
                    h.value_at_quantile(0.99) as f64
                }
            })
            .collect()
    };
    bars(
        "served staleness by level (p99, from receipts)",
        "ms / entries",
        &labels,
        &[
            ("p99 ms", "#54a24b", p99(|r| &r.stale_ms)),
            ("p99 entries", "#e45756", p99(|r| &r.stale_entries)),
        ],
    )
}
