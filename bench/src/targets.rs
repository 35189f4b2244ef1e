//! Judging a run by its case's targets (`cases.rs`): each one's figure,
//! taken from the main phase (or compared with the first, or over all
//! replicas), and whether it holds.

use super::cases::Target;
use super::report::{PhaseReport, Report, TargetResult};

/// Every target of the plan, judged.
pub(crate) fn judge(report: &Report) -> Vec<TargetResult> {
    let plan = &report.settings.plan;
    plan.targets
        .iter()
        .map(|target| {
            let main = report.phases.get(plan.main);
            let first = report.phases.first();
            let (value, measured, met) = match (*target, main) {
                (_, None) => (None, None, None),
                (Target::CeilingShare { at_least }, Some(main)) => match main.ceiling_ratio {
                    Some(ratio) => (
                        Some(ratio),
                        Some(format!(
                            "{:.1} % of the ceiling ({ratio:.2}×)",
                            ratio * 100.0
                        )),
                        Some(ratio >= at_least),
                    ),
                    None => (None, Some("no ceiling measured".into()), None),
                },
                (Target::CpuPerEvent { at_most_us }, Some(main)) => {
                    let us = main.worker_cpu_us_per_event;
                    (
                        Some(us),
                        Some(format!("{} µs/event", super::table::thousands(us))),
                        Some(us <= at_most_us),
                    )
                }
                (Target::CommitsPerEvent { at_most }, Some(main)) => {
                    let per = main.postgres.per_event;
                    (
                        Some(per),
                        Some(format!("{per:.2} per event")),
                        Some(per <= at_most),
                    )
                }
                (Target::ReferenceShare { at_least }, Some(main)) => {
                    share_of_first(main, first, at_least, |ratio| {
                        format!("{:.0} % of the instant upstream's", ratio * 100.0)
                    })
                }
                (Target::ReplicaScaling { at_least, .. }, Some(main)) => {
                    share_of_first(main, first, at_least, |ratio| format!("{ratio:.2}× one"))
                }
                (Target::UpstreamBoundShare { at_least }, Some(main)) => {
                    match main.upstream.bound_per_s {
                        Some(bound) if bound > 0.0 => {
                            let ratio = main.throughput_per_s / bound;
                            (
                                Some(ratio),
                                Some(format!(
                                    "{:.0} % of {}/s",
                                    ratio * 100.0,
                                    super::table::thousands(bound)
                                )),
                                Some(ratio >= at_least),
                            )
                        }
                        _ => (None, Some("the upstream has no bound".into()), None),
                    }
                }
                (
                    Target::QuotaShare {
                        quota,
                        at_least,
                        at_most,
                    },
                    Some(main),
                ) => {
                    let ratio = main.throughput_per_s / quota;
                    (
                        Some(ratio),
                        Some(format!(
                            "{:.0}/s = {:.0} % of the quota",
                            main.throughput_per_s,
                            ratio * 100.0
                        )),
                        Some((at_least..=at_most).contains(&ratio)),
                    )
                }
                (Target::UpstreamP99 { under }, Some(main)) => {
                    let p99 = main.upstream.in_upstream_ms.p99;
                    under_ms(p99, under.as_secs_f64() * 1000.0)
                }
                (Target::LoginToReadyP99 { under }, Some(main)) => {
                    let p99 = main.login_to_ready.p99_ms;
                    under_ms(p99, under.as_secs_f64() * 1000.0)
                }
                (Target::PeakRss { under_mib }, Some(_)) => {
                    let peak = report
                        .phases
                        .iter()
                        .flat_map(|p| p.replicas.iter())
                        .map(|r| r.peak_rss_mib)
                        .fold(None, |max: Option<f64>, mib| {
                            Some(max.map_or(mib, |m| m.max(mib)))
                        });
                    match peak {
                        Some(peak) => (
                            Some(peak),
                            Some(format!("{peak:.1} MiB")),
                            Some(peak < under_mib),
                        ),
                        None => (None, None, None),
                    }
                }
            };
            TargetResult {
                wanted: target.wanted(),
                target: *target,
                measured,
                value,
                met,
            }
        })
        .collect()
}

type Judged = (Option<f64>, Option<String>, Option<bool>);

fn share_of_first(
    main: &PhaseReport,
    first: Option<&PhaseReport>,
    at_least: f64,
    words: impl Fn(f64) -> String,
) -> Judged {
    match first {
        Some(first) if first.throughput_per_s > 0.0 => {
            let ratio = main.throughput_per_s / first.throughput_per_s;
            (Some(ratio), Some(words(ratio)), Some(ratio >= at_least))
        }
        _ => (None, None, None),
    }
}

fn under_ms(value: f64, bound: f64) -> Judged {
    (
        Some(value),
        Some(format!("{value:.0} ms")),
        Some(value < bound),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_judged_from_the_main_phase() {
        let mut report = super::super::report::example();
        let judged = judge(&report);
        let met: Vec<Option<bool>> = judged.iter().map(|t| t.met).collect();
        assert_eq!(met, [Some(false), Some(true), Some(true)]);
        assert_eq!(judged[0].value, Some(2_000.0 / 24_000.0));

        report.phases[0].ceiling_ratio = None;
        report.phases[0].replicas[0].peak_rss_mib = 70.0;
        let judged = judge(&report);
        assert_eq!(judged[0].met, None, "no ceiling: nothing to judge by");
        assert_eq!(judged[2].met, Some(false));

        // Two phases: the second compared with the first.
        report.settings.plan.targets = vec![Target::ReplicaScaling {
            replicas: 2,
            at_least: 1.6,
        }];
        let mut second = report.phases[0].clone();
        second.throughput_per_s = 3_400.0;
        report.phases.push(second);
        report.settings.plan.main = 1;
        let judged = judge(&report);
        assert_eq!(judged[0].value, Some(1.7));
        assert_eq!(judged[0].met, Some(true));
    }
}
