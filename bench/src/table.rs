//! The report for people: one block per phase, the ceiling, and the
//! targets with ✓ (holds), ✗ (does not) or – (nothing to judge by).

use super::cases::{Load, Upstream};
use super::report::{PhaseReport, Report};
use std::fmt::Write as _;

/// The whole table as text.
pub(crate) fn render(report: &Report) -> String {
    let mut out = String::new();
    let machine = &report.machine;
    let place = match &report.settings.isolation {
        super::vhost::Isolation::Vhost(name) => format!("vhost {name}"),
        super::vhost::Isolation::Names(pattern) => format!("names {pattern}"),
    };
    let _ = writeln!(
        out,
        "ticket-bench {}, case {}: {} core{}{}, {place}, database {}",
        report.version,
        report.case,
        machine.cores,
        if machine.cores == 1 { "" } else { "s" },
        machine
            .cpu_model
            .as_deref()
            .map(|m| format!(" ({m})"))
            .unwrap_or_default(),
        report.settings.database,
    );
    if !report.settings.worker_env.is_empty() {
        let _ = writeln!(
            out,
            "worker settings: {} (all others at their defaults)",
            report.settings.worker_env.join(" ")
        );
    } else {
        let _ = writeln!(out, "worker settings: the defaults");
    }
    if report.settings.burn_core {
        let _ = writeln!(
            out,
            "beside a CPU-hungry neighbour: one core spun for the whole run (--burn-core)"
        );
    }
    if let Some(bin) = &report.settings.worker_bin {
        let _ = writeln!(out, "worker binary: {bin}");
    }
    match &report.ceiling {
        Some(c) => {
            let _ = writeln!(
                out,
                "broker-only ceiling: {} events/s ({} messages in {:.2} s: consume, confirmed publish, ack; {} connections × prefetch {})",
                thousands(c.per_second),
                thousands(c.messages as f64),
                c.seconds,
                c.tasks,
                c.prefetch_per_task
            );
        }
        None => {
            let _ = writeln!(out, "broker-only ceiling: not measured");
        }
    }
    for phase in &report.phases {
        phase_block(&mut out, phase);
    }
    if !report.targets.is_empty() {
        let _ = writeln!(out, "\ntargets (issue 7):");
        let width = report
            .targets
            .iter()
            .map(|t| t.wanted.chars().count())
            .max()
            .unwrap_or(0);
        for target in &report.targets {
            let mark = match target.met {
                Some(true) => "✓",
                Some(false) => "✗",
                None => "–",
            };
            let pad = width - target.wanted.chars().count();
            let _ = writeln!(
                out,
                "  {mark} {}{}   {}",
                target.wanted,
                " ".repeat(pad),
                target.measured.as_deref().unwrap_or("n/a")
            );
        }
    }
    out
}

fn phase_block(out: &mut String, p: &PhaseReport) {
    let s = &p.settings;
    let replicas = if s.replicas == 1 {
        "1 replica".to_owned()
    } else {
        format!("{} replicas", s.replicas)
    };
    let _ = writeln!(
        out,
        "\nphase {}: {replicas}, upstream {}, {}",
        p.name,
        upstream_words(&s.upstream),
        load_words(&s.load)
    );
    let _ = writeln!(
        out,
        "  events          {} published, {} answered ({} ready, {} failed{}), {} tickets stored",
        thousands(p.published as f64),
        thousands(p.answered as f64),
        thousands(p.ready as f64),
        thousands(p.failed as f64),
        if p.duplicates > 0 {
            format!(", {} duplicate answers", p.duplicates)
        } else {
            String::new()
        },
        thousands(p.tickets_stored as f64)
    );
    let ratio = p
        .ceiling_ratio
        .map(|r| format!(" = {:.1} % of the ceiling", r * 100.0))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  throughput      {} events/s over {:.2} s{ratio}",
        thousands(p.throughput_per_s),
        p.seconds
    );
    let l = &p.login_to_ready;
    let _ = writeln!(
        out,
        "  login-to-ready  p50 {}  p95 {}  p99 {}  max {}",
        ms(l.p50_ms),
        ms(l.p95_ms),
        ms(l.p99_ms),
        ms(l.max_ms)
    );
    let u = &p.upstream;
    let _ = writeln!(
        out,
        "  upstream        {} requests; inside p50 {}  p99 {}  max {}; peak {} in service, {} waiting; shed {}, 503 {}, 429 {}",
        thousands(u.requests as f64),
        ms(u.in_upstream_ms.p50),
        ms(u.in_upstream_ms.p99),
        ms(u.in_upstream_ms.max),
        u.peak_in_service,
        u.peak_waiting,
        u.shed,
        u.injected_503,
        u.injected_429
    );
    let _ = writeln!(
        out,
        "  worker CPU      {} µs/event (all replicas, first publish to last answer)",
        thousands(p.worker_cpu_us_per_event)
    );
    let pg = &p.postgres;
    let _ = writeln!(
        out,
        "  Postgres        {:.2} commits/event ({} commits, {} rollbacks{})",
        pg.per_event,
        thousands(pg.commits as f64),
        pg.rollbacks,
        if pg.settled {
            ""
        } else {
            "; some backends had not left, counts may be low"
        }
    );
    for r in &p.replicas {
        let limit = match (r.limit_last, r.limit_max) {
            (Some(last), Some(max)) => format!("limit {last:.0} (highest {max:.0})"),
            _ => "limit n/a".to_owned(),
        };
        let _ = writeln!(
            out,
            "  replica {:<7} peak RSS {:.1} MiB, CPU {:.2} s, {limit}{}",
            r.number,
            r.peak_rss_mib,
            r.cpu_ms / 1000.0,
            if r.killed {
                ", killed after SIGTERM"
            } else {
                ""
            }
        );
    }
}

fn upstream_words(u: &Upstream) -> String {
    let mut words = if u.latency.is_zero() && u.jitter.is_zero() {
        "answers at once".to_owned()
    } else if u.jitter.is_zero() {
        format!("{} ms", u.latency.as_millis())
    } else {
        format!(
            "{} ms + up to {} ms",
            u.latency.as_millis(),
            u.jitter.as_millis()
        )
    };
    if let Some(capacity) = u.capacity {
        let line = u
            .max_queue
            .map(|m| format!("{} may wait", thousands(m as f64)))
            .unwrap_or_else(|| "no limit on waiting".into());
        let _ = write!(words, ", {} at once, {line}", thousands(capacity as f64));
        if let Some(bound) = u.bound_per_second() {
            let _ = write!(words, " ({}/s at most)", thousands(bound));
        }
    }
    words
}

fn load_words(load: &Load) -> String {
    match *load {
        Load::Burst { events } => format!("burst of {}", thousands(events as f64)),
        Load::Rate { events, per_second } => format!(
            "{} events at {}/s",
            thousands(events as f64),
            thousands(per_second)
        ),
    }
}

fn ms(value: f64) -> String {
    if value < 1.0 {
        format!("{value:.2} ms")
    } else if value < 10.0 {
        format!("{value:.1} ms")
    } else {
        format!("{} ms", thousands(value))
    }
}

/// 12345.6 → "12,346".
pub(crate) fn thousands(value: f64) -> String {
    let rounded = value.round();
    if !rounded.is_finite() {
        return "n/a".into();
    }
    let digits = format!("{}", rounded.abs() as u64);
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if rounded < 0.0 {
        grouped.insert(0, '-');
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-12_345.0), "-12,345");
    }

    #[test]
    fn the_table_shows_figures_and_targets() {
        let report = super::super::report::example();
        let text = render(&report);
        for wanted in [
            "broker-only ceiling: 24,000 events/s",
            "phase instant: 1 replica, upstream answers at once, burst of 300",
            "throughput      2,000 events/s over 0.15 s = 8.3 % of the ceiling",
            "worker CPU      270 µs/event",
            "Postgres        2.00 commits/event",
            "limit n/a",
            "✗ throughput ≥ ⅓ of the ceiling",
            "✓ Postgres commits ≤ 3 per event",
        ] {
            assert!(text.contains(wanted), "{wanted:?} in\n{text}");
        }
    }
}
