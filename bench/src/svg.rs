//! The plot of a run, as a self-contained SVG written by hand: one panel
//! per phase, with the `ticket.ready` events that arrived in each second
//! (throughput, left axis) and the p50 and p99 login-to-ready of those
//! events (right axis, milliseconds), over the seconds since the first
//! publish. Every series is a `<polyline>` with an id (`phase-1-throughput`,
//! `phase-1-p50`, `phase-1-p99`) and a class, so it can be restyled or
//! checked by a script.

use super::report::{PhaseReport, Report};
use super::table::thousands;
use std::fmt::Write as _;

const WIDTH: f64 = 960.0;
const PANEL: f64 = 300.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 80.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 45.0;
const HEADER: f64 = 40.0;

/// The SVG document for `report`.
pub(crate) fn render(report: &Report) -> String {
    let height = HEADER + PANEL * report.phases.len().max(1) as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<style>.throughput{{fill:none;stroke:#1f77b4;stroke-width:2}} .p50{{fill:none;stroke:#2ca02c;stroke-width:1.5}} .p99{{fill:none;stroke:#d62728;stroke-width:1.5}} .axis{{stroke:#444}} .grid{{stroke:#ddd}}</style>"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title = format!(
        "ticket-bench, case {}: ready events per second and login-to-ready",
        report.case
    );
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="24" font-size="16">{}</text>"#,
        escape(&title)
    );
    for (index, phase) in report.phases.iter().enumerate() {
        panel(&mut svg, index + 1, HEADER + PANEL * index as f64, phase);
    }
    svg.push_str("</svg>\n");
    svg
}

fn panel(svg: &mut String, number: usize, top: f64, phase: &PhaseReport) {
    let x0 = LEFT;
    let x1 = WIDTH - RIGHT;
    let y0 = top + PANEL - BOTTOM; // the x axis
    let y1 = top + TOP; // the top of the plot
    let seconds = phase.timeline.len().max(1) as f64;
    let x = |second: f64| x0 + (x1 - x0) * second / seconds;
    let max_rate = nice(
        phase
            .timeline
            .iter()
            .map(|s| s.ready as f64)
            .fold(0.0, f64::max),
    );
    let max_ms = nice(phase.timeline.iter().map(|s| s.p99_ms).fold(0.0, f64::max));
    let y_rate = |rate: f64| y0 - (y0 - y1) * rate / max_rate;
    let y_ms = |ms: f64| y0 - (y0 - y1) * ms / max_ms;

    let _ = writeln!(svg, r#"<g id="phase-{number}">"#);
    let _ = writeln!(
        svg,
        r#"<text x="{x0}" y="{}" font-size="14">{}</text>"#,
        top + 22.0,
        escape(&format!(
            "phase {}: {} events/s, p99 login-to-ready {} ms",
            phase.name,
            thousands(phase.throughput_per_s),
            thousands(phase.login_to_ready.p99_ms)
        ))
    );
    legend(svg, x0, top + 40.0);
    // Grid and axes: five steps on each.
    for step in 0..=5 {
        let fraction = f64::from(step) / 5.0;
        let y = y0 - (y0 - y1) * fraction;
        let _ = writeln!(
            svg,
            r#"<line class="grid" x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}"/>"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            x0 - 6.0,
            y + 4.0,
            thousands(max_rate * fraction)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            x1 + 6.0,
            y + 4.0,
            thousands(max_ms * fraction)
        );
    }
    // Whole seconds, about eight ticks, at 1, 2 or 5 × 10ⁿ apart.
    let step = nice(seconds / 8.0).max(1.0);
    for tick in 0..=(seconds / step).floor() as usize {
        let second = step * tick as f64;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{:.0}</text>"#,
            x(second),
            y0 + 16.0,
            second
        );
    }
    let _ = writeln!(
        svg,
        r#"<line class="axis" x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}"/><line class="axis" x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}"/><line class="axis" x1="{x1}" y1="{y0}" x2="{x1}" y2="{y1}"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since the first publish</text>"#,
        (x0 + x1) / 2.0,
        y0 + 34.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate({:.1},{:.1}) rotate(-90)" text-anchor="middle">ready events per second</text>"#,
        x0 - 58.0,
        (y0 + y1) / 2.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate({:.1},{:.1}) rotate(90)" text-anchor="middle">login-to-ready (ms)</text>"#,
        x1 + 58.0,
        (y0 + y1) / 2.0
    );

    let throughput: Vec<(f64, f64)> = phase
        .timeline
        .iter()
        .map(|s| (x(s.at as f64 + 0.5), y_rate(s.ready as f64)))
        .collect();
    let with_ready = || phase.timeline.iter().filter(|s| s.ready > 0);
    let p50: Vec<(f64, f64)> = with_ready()
        .map(|s| (x(s.at as f64 + 0.5), y_ms(s.p50_ms)))
        .collect();
    let p99: Vec<(f64, f64)> = with_ready()
        .map(|s| (x(s.at as f64 + 0.5), y_ms(s.p99_ms)))
        .collect();
    for (series, points) in [("throughput", throughput), ("p50", p50), ("p99", p99)] {
        let _ = writeln!(
            svg,
            r#"<polyline id="phase-{number}-{series}" class="{series}" points="{}"/>"#,
            points
                .iter()
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    svg.push_str("</g>\n");
}

fn legend(svg: &mut String, x: f64, y: f64) {
    for (i, (class, words)) in [
        ("throughput", "ready events/s (left)"),
        ("p50", "p50 login-to-ready (right)"),
        ("p99", "p99 login-to-ready (right)"),
    ]
    .into_iter()
    .enumerate()
    {
        let left = x + 230.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line class="{class}" x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}"/><text x="{:.1}" y="{:.1}">{words}</text>"#,
            y - 4.0,
            left + 24.0,
            y - 4.0,
            left + 30.0,
            y
        );
    }
}

/// The smallest 1, 2 or 5 × 10ⁿ at or above `value` (1 for nothing).
pub(crate) fn nice(value: f64) -> f64 {
    if !value.is_finite() || value <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= value)
        .unwrap_or(10.0 * magnitude)
}

/// Text for XML content and attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Second;

    #[test]
    fn axes_end_at_round_numbers() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(1_234.0), 2_000.0);
        assert_eq!(nice(5_000.0), 5_000.0);
        assert_eq!(nice(0.03), 0.05);
    }

    #[test]
    fn the_plot_is_xml_with_each_series_of_each_phase() {
        let mut report = crate::report::example();
        let mut second = report.phases[0].clone();
        second.name = "2 <replicas> & \"more\"".into();
        second.timeline = (0..5)
            .map(|at| Second {
                at,
                ready: if at == 2 { 0 } else { 100 * (at as usize + 1) },
                answered: 100,
                p50_ms: 10.0,
                p99_ms: 20.0 * at as f64,
            })
            .collect();
        report.phases.push(second);
        let svg = render(&report);
        let document = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let root = document.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        let series = |id: &str| {
            document
                .descendants()
                .find(|n| n.attribute("id") == Some(id))
                .and_then(|n| n.attribute("points"))
                .map(|points| points.split_whitespace().count())
        };
        assert_eq!(series("phase-1-throughput"), Some(1));
        assert_eq!(series("phase-1-p99"), Some(1));
        assert_eq!(series("phase-2-throughput"), Some(5), "every second");
        assert_eq!(series("phase-2-p50"), Some(4), "seconds with ready events");
        assert_eq!(series("phase-2-p99"), Some(4));
        assert!(svg.contains("2 &lt;replicas&gt; &amp; &quot;more&quot;"));
    }
}
