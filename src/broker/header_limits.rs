//! Headers the worker cannot read in full, and taking them off its copies.
//!
//! The AMQP frame parser (amq-protocol-types, carried patched: see
//! `patches/README.md`) decodes header tables and arrays at most
//! [`MAX_NESTING_DEPTH`] levels deep and [`MAX_VALUES`] values per message,
//! so that no header can overflow a thread's stack or swell a 128 KiB frame
//! into megabytes. Beyond those bounds it skips what is left and leaves a
//! `Void` in place of a table or array it did not decode. So a header that
//! reaches the deepest level, or headers that hold the whole budget of
//! values, may have been cut short: [`check`] says so, and the pipeline
//! refuses such a message (`invalid`, `unreadable_headers`). [`strip`] takes
//! the headers that may have been cut off the copies the worker publishes
//! (the dead letter among them), so that no copy carries a half-read value.
//!
//! Levels count as the parser counts them: a header's own value is at level
//! 1, the entries of a table or array it holds at level 2, and so on.

use crate::delivery::UnreadableHeaders;
use lapin::types::parsing::{MAX_NESTING_DEPTH, MAX_VALUES};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use std::collections::BTreeMap;

/// The deepest level whose values are surely read in full.
pub const DEEPEST_READ: usize = MAX_NESTING_DEPTH - 1;

/// The most values a message's headers may hold and surely be read in full.
pub const MOST_VALUES_READ: usize = MAX_VALUES - 1;

/// Header on a copy from which headers that could not be read in full were
/// removed.
pub const UNREADABLE_HEADER: &str = "x-ticket-worker-unreadable-headers";

/// What the deepest and the total of one header value are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Shape {
    /// The deepest level any value in it reaches (its own value: 1).
    deepest: usize,
    /// The values in it, its own included.
    values: usize,
}

/// Walks one header value without recursion (the walk must not be what a
/// hostile header overflows).
fn shape(value: &AMQPValue) -> Shape {
    let mut shape = Shape::default();
    let mut stack = vec![(value, 1usize)];
    while let Some((value, level)) = stack.pop() {
        shape.deepest = shape.deepest.max(level);
        shape.values = shape.values.saturating_add(1);
        let next = level.saturating_add(1);
        match value {
            AMQPValue::FieldArray(array) => {
                stack.extend(array.as_slice().iter().map(|v| (v, next)));
            }
            AMQPValue::FieldTable(table) => {
                stack.extend(table.inner().values().map(|v| (v, next)));
            }
            _ => {}
        }
    }
    shape
}

/// What a refused message's `ticket.failed` and dead letter say: worded
/// here, with the limits the parser reads to.
impl std::fmt::Display for UnreadableHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnreadableHeaders::TooDeep { header, levels } => write!(
                f,
                "header {header:?} nests tables or arrays {levels} levels deep; the worker reads at most {DEEPEST_READ}: send headers that nest less"
            ),
            UnreadableHeaders::TooMany { values } => write!(
                f,
                "the headers hold {values} values or more; the worker reads at most {MOST_VALUES_READ}: send fewer"
            ),
        }
    }
}

/// Whether the parser may have cut any of these headers short.
pub fn check(headers: Option<&FieldTable>) -> Option<UnreadableHeaders> {
    let headers = headers?;
    let mut values = 0usize;
    let mut deepest: Option<(usize, &ShortString)> = None;
    for (name, value) in headers.inner() {
        let shape = shape(value);
        values = values.saturating_add(shape.values);
        if deepest.is_none_or(|(level, _)| shape.deepest > level) {
            deepest = Some((shape.deepest, name));
        }
    }
    if let Some((level, name)) = deepest.filter(|(level, _)| *level > DEEPEST_READ) {
        return Some(UnreadableHeaders::TooDeep {
            header: crate::domain::text::printable(name.as_str(), 64),
            levels: level,
        });
    }
    (values > MOST_VALUES_READ).then_some(UnreadableHeaders::TooMany { values })
}

/// Removes the headers the parser may have cut short: those that reach the
/// deepest level, and, when the headers used up the parser's budget of
/// values, every table and array (the one the budget ran out in is among
/// them; the parser decodes whole scalars or none). Returns how many went.
pub fn strip(headers: &mut BTreeMap<ShortString, AMQPValue>) -> usize {
    let shapes: Vec<(ShortString, Shape, bool)> = headers
        .iter()
        .map(|(name, value)| {
            let nested = matches!(value, AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_));
            (name.clone(), shape(value), nested)
        })
        .collect();
    let values = shapes.iter().fold(0usize, |sum, (_, shape, _)| {
        sum.saturating_add(shape.values)
    });
    let budget_spent = values > MOST_VALUES_READ;
    let mut removed = 0;
    for (name, shape, nested) in shapes {
        if shape.deepest > DEEPEST_READ || (budget_spent && nested) {
            headers.remove(&name);
            removed += 1;
        }
    }
    removed
}

/// The note a copy carries when [`strip`] removed `count` headers.
pub fn note(count: usize) -> AMQPValue {
    AMQPValue::LongString(
        format!(
            "{count} original headers removed: they nest tables or arrays deeper than {DEEPEST_READ} levels, or hold more than {MOST_VALUES_READ} values, beyond what the worker reads in full"
        )
        .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldArray;

    /// Arrays nested so that the innermost value sits at `level`.
    fn nested(level: usize, innermost: AMQPValue) -> AMQPValue {
        let mut value = innermost;
        for _ in 1..level {
            value = AMQPValue::FieldArray(FieldArray::from(vec![value]));
        }
        value
    }

    fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
        let mut table = FieldTable::default();
        for (name, value) in entries {
            table.insert(name.into(), value);
        }
        table
    }

    #[test]
    fn headers_read_in_full_pass() {
        let headers = table(vec![
            ("traceparent", AMQPValue::LongString("00-ab-cd-01".into())),
            ("deep", nested(DEEPEST_READ, AMQPValue::Boolean(true))),
        ]);
        assert_eq!(check(Some(&headers)), None);
        assert_eq!(check(None), None);
    }

    #[test]
    fn a_header_reaching_the_parsers_bound_is_unreadable_and_stripped() {
        let headers = table(vec![
            ("traceparent", AMQPValue::LongString("00-ab-cd-01".into())),
            ("evil", nested(MAX_NESTING_DEPTH, AMQPValue::Void)),
        ]);
        assert_eq!(
            check(Some(&headers)),
            Some(UnreadableHeaders::TooDeep {
                header: "evil".into(),
                levels: MAX_NESTING_DEPTH
            })
        );
        let mut map = headers.inner().clone();
        assert_eq!(strip(&mut map), 1);
        assert!(map.contains_key("traceparent"));
        assert!(!map.contains_key("evil"));
    }

    #[test]
    fn headers_holding_the_whole_budget_lose_their_tables_and_arrays() {
        let many = AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Void; MOST_VALUES_READ]));
        let headers = table(vec![
            ("traceparent", AMQPValue::LongString("00-ab-cd-01".into())),
            ("many", many),
        ]);
        assert!(matches!(
            check(Some(&headers)),
            Some(UnreadableHeaders::TooMany { values }) if values == MAX_VALUES + 1
        ));
        let mut map = headers.inner().clone();
        assert_eq!(strip(&mut map), 1);
        assert_eq!(
            map.keys().map(ShortString::as_str).collect::<Vec<_>>(),
            ["traceparent"]
        );
    }

    #[test]
    fn the_walk_survives_what_no_parser_would_hand_it() {
        // Deeper than the parser ever decodes, built and dropped on a thread
        // with room for it, walked by `shape` without recursion.
        let walked = std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(|| shape(&nested(100_000, AMQPValue::Void)))
            .expect("spawn")
            .join()
            .expect("no panic");
        assert_eq!(walked.deepest, 100_000);
        assert_eq!(walked.values, 100_000);
    }
}
