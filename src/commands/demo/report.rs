//! What the demo shows at the end: the tickets it finds in Postgres (masked)
//! and a summary of the run, with the query an app backend would run.

use crate::domain::TicketRecord;
use std::collections::HashSet;
use std::time::Duration;

/// The first rows the run wrote, tickets masked.
pub(super) fn print_table(records: &[TicketRecord]) {
    println!();
    println!(
        "auth_tickets (first {} of {} rows written by this demo):",
        records.len().min(12),
        records.len()
    );
    println!(
        "  {:<12} {:<10} {:<8} {:<14} {:<16} {:<20}",
        "xcUserID", "userID", "platform", "device", "ticket", "expires_at (UTC)"
    );
    for record in records.iter().take(12) {
        let ticket = record.ticket.expose();
        let masked = format!(
            "{}…({} chars)",
            ticket.chars().take(4).collect::<String>(),
            ticket.chars().count()
        );
        println!(
            "  {:<12} {:<10} {:<8} {:<14} {:<16} {:<20}",
            record.xc_user_id,
            record.user_id,
            record.platform.as_str(),
            record.user_device_id.chars().take(14).collect::<String>(),
            masked,
            record.expires_at.format("%Y-%m-%d %H:%M:%S")
        );
    }
}

/// How many events became tickets, which failed and why, and how fast.
pub(super) fn print_summary(
    published: usize,
    records: &[TicketRecord],
    failed: &[(String, String)],
    elapsed: Duration,
    keep: bool,
) {
    let mut reasons: Vec<(String, usize)> = Vec::new();
    let unique: HashSet<&(String, String)> = failed.iter().collect();
    for (_, reason) in unique {
        match reasons.iter_mut().find(|(r, _)| r == reason) {
            Some((_, n)) => *n += 1,
            None => reasons.push((reason.clone(), 1)),
        }
    }
    reasons.sort();
    let failed_text = reasons
        .iter()
        .map(|(r, n)| format!("{n} {r}"))
        .collect::<Vec<_>>()
        .join(", ");
    let users: HashSet<&str> = records.iter().map(|r| r.xc_user_id.as_str()).collect();
    println!();
    println!(
        "{published} login events → {} tickets stored for {} users, ticket.failed: {}",
        records.len(),
        users.len(),
        if failed_text.is_empty() {
            "none".into()
        } else {
            failed_text
        }
    );
    println!(
        "{:.1} s from first publish to last answer: {:.0} events/s",
        elapsed.as_secs_f64(),
        published as f64 / elapsed.as_secs_f64().max(0.001)
    );
    if let Some(first) = records.first() {
        let select = format!(
            "SELECT user_id, ticket, expires_at FROM current_auth_ticket('{}');",
            first.xc_user_id
        );
        if keep {
            println!("an app backend reads a user's current ticket with: {select}");
        } else {
            println!(
                "an app backend reads a user's current ticket with: {select} (this run's rows are removed as it ends; --keep keeps them)"
            );
        }
    }
}
