use crate::{flags::*, types::*, value::*};
use nom::{
    self, Parser,
    bytes::streaming::take,
    combinator::{flat_map, map, map_opt, map_res},
    error::{ContextError, ErrorKind, ParseError, context},
    number::streaming::{
        be_f32, be_f64, be_i16, be_i32, be_i64, be_u16, be_u32, be_u64, i8 as be_i8, u8 as be_u8,
    },
    sequence::pair,
};
use std::{error, fmt};
use traits::*;

/// Error context for `ParserErrors`
#[derive(Clone, Debug, Eq, PartialEq)]
enum VerboseErrorKind {
    /// Static string added by the `context` function
    Context(&'static str),
    /// Indicates which character was expected by the `char` function
    Char(char),
    /// Error kind given by various nom parsers
    Nom(ErrorKind),
}

/// Struct holding the errors stack
#[derive(Clone, Debug, PartialEq)]
pub struct ParserErrors {
    error: VerboseErrorKind,
    errors: Option<Vec<VerboseErrorKind>>,
}

impl ParserErrors {
    #[cfg(not(feature = "verbose-errors"))]
    fn init_errors() -> Option<Vec<VerboseErrorKind>> {
        None
    }
    #[cfg(feature = "verbose-errors")]
    fn init_errors() -> Option<Vec<VerboseErrorKind>> {
        Some(Vec::new())
    }
}

impl<I> ParseError<I> for ParserErrors {
    fn from_error_kind(_input: I, kind: ErrorKind) -> Self {
        Self {
            error: VerboseErrorKind::Nom(kind),
            errors: Self::init_errors(),
        }
    }

    fn append(_input: I, kind: ErrorKind, mut other: Self) -> Self {
        if let Some(errors) = other.errors.as_mut() {
            errors.push(VerboseErrorKind::Nom(kind));
        }
        other
    }

    fn from_char(_input: I, c: char) -> Self {
        Self {
            error: VerboseErrorKind::Char(c),
            errors: Self::init_errors(),
        }
    }
}

impl<I> ContextError<I> for ParserErrors {
    fn add_context(_input: I, ctx: &'static str, mut other: Self) -> Self {
        if let Some(errors) = other.errors.as_mut() {
            errors.push(VerboseErrorKind::Context(ctx));
        }
        other
    }
}

impl<I, E> nom::error::FromExternalError<I, E> for ParserErrors {
    fn from_external_error(input: I, kind: ErrorKind, _e: E) -> Self {
        Self::from_error_kind(input, kind)
    }
}

impl fmt::Display for ParserErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Parser error: {:?}", self.error)?;
        if let Some(errors) = self.errors.as_ref() {
            for error in errors {
                writeln!(f)?;
                write!(f, "\tat {error:?}")?;
            }
        }
        Ok(())
    }
}

impl error::Error for ParserErrors {}

/// Error returned by parsers
pub type ParserError = nom::Err<ParserErrors>;
/// Return type of parsers
pub type ParserResult<I, T> = Result<(I, T), ParserError>;

/// How deep field tables and arrays are decoded. The entries of a table or
/// array handed to [`parse_field_table`], [`parse_field_array`] or
/// [`parse_value`] are at level 1, the entries of a table inside it at level
/// 2, and so on. A table or an array at level `MAX_NESTING_DEPTH` is not
/// decoded: its bytes are skipped (its length prefix says how many) and
/// [`AMQPValue::Void`] stands in its place.
///
/// Decoding recurses once per level, so without a bound a peer could make
/// the parser overflow its thread's stack, which aborts the process: a
/// frame of RabbitMQ's default `frame_max` (128 KiB) holds arrays nested
/// some 26,000 deep, and brokers pass such headers on. Consumers that must
/// tell a real `Void` from a skipped value treat any value at this level as
/// possibly skipped.
pub const MAX_NESTING_DEPTH: usize = 64;

/// How many values one field table or array is decoded into, nested values
/// included (each entry of a table, each element of an array counts once).
/// Once as many are decoded, the rest of every enclosing table and array is
/// skipped, so what one frame decodes into stays within a small multiple of
/// the frame's size (a one-byte `Void` element decodes into a 32-byte
/// [`AMQPValue`]). Consumers that must know whether anything was skipped
/// treat a table or array holding this many values as possibly truncated.
pub const MAX_VALUES: usize = 1024;

/// What is left of the [`MAX_VALUES`] of the table or array being decoded.
#[derive(Debug)]
struct Budget(std::cell::Cell<usize>);

impl Budget {
    fn new() -> Budget {
        Budget(std::cell::Cell::new(MAX_VALUES))
    }

    /// Takes one value from the budget; false when it is spent.
    fn take(&self) -> bool {
        let left = self.0.get();
        if left == 0 {
            return false;
        }
        self.0.set(left - 1);
        true
    }
}

/// Parse the [AMQPValue](../type.AMQPValue.html) of the given [AMQPType](../type.AMQPType.html)
#[must_use]
pub fn parse_raw_value<I: ParsableInput>(
    amqp_type: AMQPType,
) -> impl Parser<I, Output = AMQPValue, Error = ParserErrors> {
    context("parse_raw_value", move |i| {
        parse_raw_value_within(i, amqp_type, 1, &Budget::new())
    })
}

/// [`parse_raw_value`] for a value at `level` (see [`MAX_NESTING_DEPTH`]),
/// drawing on `budget` for nested values. Tables and arrays recurse through
/// here, so this frame stays small: scalars are parsed in a function of
/// their own, which returns before any recursion.
fn parse_raw_value_within<I: ParsableInput>(
    i: I,
    amqp_type: AMQPType,
    level: usize,
    budget: &Budget,
) -> ParserResult<I, AMQPValue> {
    match amqp_type {
        AMQPType::FieldArray | AMQPType::FieldTable if level >= MAX_NESTING_DEPTH => {
            skip_nested(i)
        }
        AMQPType::FieldArray => parse_field_array_within(i, level + 1, budget)
            .map(|(i, array)| (i, AMQPValue::FieldArray(array))),
        AMQPType::FieldTable => parse_field_table_within(i, level + 1, budget)
            .map(|(i, table)| (i, AMQPValue::FieldTable(table))),
        scalar => parse_scalar(i, scalar),
    }
}

/// Parse a value that holds no other values.
#[inline(never)]
fn parse_scalar<I: ParsableInput>(i: I, amqp_type: AMQPType) -> ParserResult<I, AMQPValue> {
    match amqp_type {
        AMQPType::Boolean => map(parse_boolean, AMQPValue::Boolean).parse(i),
        AMQPType::ShortShortInt => map(parse_short_short_int, AMQPValue::ShortShortInt).parse(i),
        AMQPType::ShortShortUInt => map(parse_short_short_uint, AMQPValue::ShortShortUInt).parse(i),
        AMQPType::ShortInt => map(parse_short_int, AMQPValue::ShortInt).parse(i),
        AMQPType::ShortUInt => map(parse_short_uint, AMQPValue::ShortUInt).parse(i),
        AMQPType::LongInt => map(parse_long_int, AMQPValue::LongInt).parse(i),
        AMQPType::LongUInt => map(parse_long_uint, AMQPValue::LongUInt).parse(i),
        AMQPType::LongLongInt => map(parse_long_long_int, AMQPValue::LongLongInt).parse(i),
        /* RabbitMQ treats LongLongUInt as a LongLongInt hence expose it as such */
        AMQPType::LongLongUInt => map(parse_long_long_int, AMQPValue::LongLongInt).parse(i),
        AMQPType::Float => map(parse_float, AMQPValue::Float).parse(i),
        AMQPType::Double => map(parse_double, AMQPValue::Double).parse(i),
        AMQPType::DecimalValue => map(parse_decimal_value, AMQPValue::DecimalValue).parse(i),
        AMQPType::ShortString => map(parse_short_string, AMQPValue::ShortString).parse(i),
        AMQPType::LongString => map(parse_long_string, AMQPValue::LongString).parse(i),
        AMQPType::Timestamp => map(parse_timestamp, AMQPValue::Timestamp).parse(i),
        AMQPType::ByteArray => map(parse_byte_array, AMQPValue::ByteArray).parse(i),
        AMQPType::Void => Ok((i, AMQPValue::Void)),
        AMQPType::FieldArray => map(parse_field_array, AMQPValue::FieldArray).parse(i),
        AMQPType::FieldTable => map(parse_field_table, AMQPValue::FieldTable).parse(i),
    }
}

/// Skips a table or an array nested too deep to decode (see
/// [`MAX_NESTING_DEPTH`]), leaving [`AMQPValue::Void`] in its place.
fn skip_nested<I: ParsableInput>(i: I) -> ParserResult<I, AMQPValue> {
    context(
        "skip_nested",
        map(flat_map(parse_long_uint, take), |_| AMQPValue::Void),
    )
    .parse(i)
}

/// The length-prefixed content of a table or an array, and what follows it.
#[inline(never)]
fn length_prefixed<I: ParsableInput>(i: I) -> ParserResult<I, I> {
    flat_map(parse_long_uint, take).parse(i)
}

/// An entry that runs past the end of its table or array is an error, not
/// a request for more input (the content's length is known).
fn complete_within<I: ParsableInput, T>(
    input: I,
    what: &'static str,
    result: ParserResult<I, T>,
) -> ParserResult<I, T> {
    result.map_err(|error| match error {
        nom::Err::Incomplete(_) => nom::Err::Error(ParserErrors::add_context(
            input.clone(),
            what,
            ParserErrors::from_error_kind(input, ErrorKind::Complete),
        )),
        nom::Err::Error(e) => nom::Err::Error(ParserErrors::add_context(input, what, e)),
        nom::Err::Failure(e) => nom::Err::Failure(ParserErrors::add_context(input, what, e)),
    })
}

/// Parse an [AMQPValue](../type.AMQPValue.html)
pub fn parse_value<I: ParsableInput>(i: I) -> ParserResult<I, AMQPValue> {
    context("parse_value", |i: I| parse_value_within(i, 1, &Budget::new())).parse(i)
}

/// [`parse_value`] for a value at `level`, drawing on `budget`.
fn parse_value_within<I: ParsableInput>(
    i: I,
    level: usize,
    budget: &Budget,
) -> ParserResult<I, AMQPValue> {
    let (i, amqp_type) = parse_type(i)?;
    parse_raw_value_within(i, amqp_type, level, budget)
}

/// Parse an [AMQPType](../type.AMQPType.html)
pub fn parse_type<I: ParsableInput>(i: I) -> ParserResult<I, AMQPType> {
    context(
        "parse_type",
        map_opt(be_u8, |t| AMQPType::from_id(t as char)),
    )
    .parse(i)
}

/// Parse an id [(ShortUInt)](../type.ShortUInt.html)
pub fn parse_id<I: ParsableInput>(i: I) -> ParserResult<I, ShortUInt> {
    context("parse_id", parse_short_uint).parse(i)
}

/// Parse a [Boolean](../type.Boolean.html)
pub fn parse_boolean<I: ParsableInput>(i: I) -> ParserResult<I, Boolean> {
    context("parse_boolean", map(be_u8, |b| b != 0)).parse(i)
}

/// Parse a [ShortShortInt](../type.ShortShortInt.html)
pub fn parse_short_short_int<I: ParsableInput>(i: I) -> ParserResult<I, ShortShortInt> {
    context("parse_short_short_int", be_i8).parse(i)
}

/// Parse a [ShortShortUInt](../type.ShortShortUInt.html)
pub fn parse_short_short_uint<I: ParsableInput>(i: I) -> ParserResult<I, ShortShortUInt> {
    context("parse_short_short_uint", be_u8).parse(i)
}

/// Parse a [ShortInt](../type.ShortInt.html)
pub fn parse_short_int<I: ParsableInput>(i: I) -> ParserResult<I, ShortInt> {
    context("parse_short_int", be_i16).parse(i)
}

/// Parse a [ShortUInt](../type.ShortUInt.html)
pub fn parse_short_uint<I: ParsableInput>(i: I) -> ParserResult<I, ShortUInt> {
    context("parse_short_uint", be_u16).parse(i)
}

/// Parse a [LongInt](../type.LongInt.html)
pub fn parse_long_int<I: ParsableInput>(i: I) -> ParserResult<I, LongInt> {
    context("parse_long_int", be_i32).parse(i)
}

/// Parse a [LongUInt](../type.LongUInt.html)
pub fn parse_long_uint<I: ParsableInput>(i: I) -> ParserResult<I, LongUInt> {
    context("parse_long_uint", be_u32).parse(i)
}

/// Parse a [LongLongInt](../type.LongLongInt.html)
pub fn parse_long_long_int<I: ParsableInput>(i: I) -> ParserResult<I, LongLongInt> {
    context("parse_long_long_int", be_i64).parse(i)
}

/// Parse a [LongLongUInt](../type.LongLongUInt.html)
pub fn parse_long_long_uint<I: ParsableInput>(i: I) -> ParserResult<I, LongLongUInt> {
    context("parse_long_long_uint", be_u64).parse(i)
}

/// Parse a [Float](../type.Float.html)
pub fn parse_float<I: ParsableInput>(i: I) -> ParserResult<I, Float> {
    context("parse_float", be_f32).parse(i)
}

/// Parse a [Double](../type.Double.html)
pub fn parse_double<I: ParsableInput>(i: I) -> ParserResult<I, Double> {
    context("parse_double", be_f64).parse(i)
}

/// Parse a [DecimalValue](../type.DecimalValue.html)
pub fn parse_decimal_value<I: ParsableInput>(i: I) -> ParserResult<I, DecimalValue> {
    context(
        "parse_decimal_value",
        map(
            pair(parse_short_short_uint, parse_long_uint),
            |(scale, value)| DecimalValue { scale, value },
        ),
    )
    .parse(i)
}

fn make_str<I: Input<Item = u8>>(i: I) -> Result<String, std::string::FromUtf8Error> {
    String::from_utf8(i.iter_elements().collect())
}

/// Parse a [ShortString](../type.ShortString.html)
pub fn parse_short_string<I: ParsableInput>(i: I) -> ParserResult<I, ShortString> {
    context(
        "parse_short_string",
        map(
            map_res(flat_map(parse_short_short_uint, take), make_str),
            ShortString::from,
        ),
    )
    .parse(i)
}

/// Parse a [LongString](../type.LongString.html)
pub fn parse_long_string<I: ParsableInput>(i: I) -> ParserResult<I, LongString> {
    context(
        "parse_long_string",
        map(flat_map(parse_long_uint, take), |i: I| {
            i.iter_elements().collect::<Vec<u8>>().into()
        }),
    )
    .parse(i)
}

/// Parse a [FieldArray](../type.FieldArray.html), at most
/// [`MAX_NESTING_DEPTH`] levels deep and [`MAX_VALUES`] values in all.
pub fn parse_field_array<I: ParsableInput>(i: I) -> ParserResult<I, FieldArray> {
    context("parse_field_array", |i: I| {
        parse_field_array_within(i, 1, &Budget::new())
    })
    .parse(i)
}

/// [`parse_field_array`] for an array whose elements are at `level`. A loop
/// of plain calls, not a combinator chain, so that each level of nesting
/// costs the stack as little as it can.
fn parse_field_array_within<I: ParsableInput>(
    i: I,
    level: usize,
    budget: &Budget,
) -> ParserResult<I, FieldArray> {
    let (rest, mut content) = complete_within(i.clone(), "parse_field_array", length_prefixed(i))?;
    let mut array = FieldArray::default();
    while content.input_len() > 0 && budget.take() {
        let parsed = parse_value_within(content.clone(), level, budget);
        let (next, value) = complete_within(content, "parse_field_array_entry", parsed)?;
        array.push(value);
        content = next;
    }
    Ok((rest, array))
}

/// Parse a [Timestamp](../type.Timestamp.html)
pub fn parse_timestamp<I: ParsableInput>(i: I) -> ParserResult<I, Timestamp> {
    context("parse_timestamp", parse_long_long_uint).parse(i)
}

/// Parse a [FieldTable](../type.FieldTable.html), at most
/// [`MAX_NESTING_DEPTH`] levels deep and [`MAX_VALUES`] values in all.
pub fn parse_field_table<I: ParsableInput>(i: I) -> ParserResult<I, FieldTable> {
    context("parse_field_table", |i: I| {
        parse_field_table_within(i, 1, &Budget::new())
    })
    .parse(i)
}

/// [`parse_field_table`] for a table whose entries are at `level`.
fn parse_field_table_within<I: ParsableInput>(
    i: I,
    level: usize,
    budget: &Budget,
) -> ParserResult<I, FieldTable> {
    let (rest, mut content) = complete_within(i.clone(), "parse_field_table", length_prefixed(i))?;
    let mut table = FieldTable::default();
    while content.input_len() > 0 {
        let (after_key, key) = complete_within(
            content.clone(),
            "parse_field_table_entry",
            parse_short_string(content),
        )?;
        if table.inner().contains_key(&key) {
            // A name written twice: the first stands (RabbitMQ reads the
            // first too), and the repeat is skipped without being decoded,
            // so that it costs none of the budget and cannot hide, behind
            // values that were never kept, that the budget ran out.
            let skipped = skip_value(after_key.clone());
            let (next, ()) = complete_within(after_key, "parse_field_table_entry", skipped)?;
            content = next;
            continue;
        }
        if !budget.take() {
            break;
        }
        let parsed = parse_value_within(after_key.clone(), level, budget);
        let (next, value) = complete_within(after_key, "parse_field_table_entry", parsed)?;
        table.insert(key, value);
        content = next;
    }
    Ok((rest, table))
}

/// Skips one value (its type tag first) without keeping it: a table or an
/// array by its length prefix, without descending into it.
fn skip_value<I: ParsableInput>(i: I) -> ParserResult<I, ()> {
    let (i, amqp_type) = parse_type(i)?;
    match amqp_type {
        AMQPType::FieldArray | AMQPType::FieldTable => {
            length_prefixed(i).map(|(rest, _)| (rest, ()))
        }
        scalar => parse_scalar(i, scalar).map(|(rest, _)| (rest, ())),
    }
}

/// Parse a [ByteArray](../type.ByteArray.html)
pub fn parse_byte_array<I: ParsableInput>(i: I) -> ParserResult<I, ByteArray> {
    context(
        "parse_byte_array",
        map(flat_map(parse_long_uint, take), |i: I| {
            i.iter_elements().collect::<Vec<u8>>().into()
        }),
    )
    .parse(i)
}

/// Parse the [AMQPFlags](../type.AMQPFlags.html) for which the names are provided
pub fn parse_flags<I: ParsableInput>(i: I, names: &[&str]) -> ParserResult<I, AMQPFlags> {
    context(
        "parse_flags",
        map(take(names.len().div_ceil(8)), |b| {
            AMQPFlags::from_bytes(names, b)
        }),
    )
    .parse(i)
}

/// Traits required for parsing
pub mod traits {
    /// Reexport nom traits required for parsing
    pub use nom::{Compare, CompareResult, Input, Needed};

    /// Trait used to ensure we can properly parse input
    pub trait ParsableInput: Clone + Compare<&'static [u8]> + Input<Item = u8> + PartialEq {}

    impl<T: Clone + Compare<&'static [u8]> + Input<Item = u8> + PartialEq> ParsableInput for T {}
}

#[cfg(test)]
mod test {
    use super::*;

    const EMPTY: &[u8] = b"";

    #[test]
    fn test_parse_value() {
        assert_eq!(
            parse_value(&[84, 42, 42, 42, 42, 42, 42, 42, 42][..]),
            Ok((EMPTY, AMQPValue::Timestamp(3038287259199220266)))
        );
        assert_eq!(
            parse_value(&[83, 0, 0, 0, 4, 116, 101, 115, 116][..]),
            Ok((EMPTY, AMQPValue::LongString("test".into())))
        );
    }

    #[test]
    fn test_parse_raw_value() {
        assert_eq!(
            parse_raw_value(AMQPType::Timestamp).parse(&[42, 42, 42, 42, 42, 42, 42, 42][..]),
            Ok((EMPTY, AMQPValue::Timestamp(3038287259199220266)))
        );
        assert_eq!(
            parse_raw_value(AMQPType::LongString).parse(&[0, 0, 0, 4, 116, 101, 115, 116][..]),
            Ok((EMPTY, AMQPValue::LongString("test".into())))
        );
        /* Test internal exceptions */
        assert_eq!(
            parse_raw_value(AMQPType::LongLongUInt).parse(&[42, 42, 42, 42, 42, 42, 42, 42][..]),
            Ok((EMPTY, AMQPValue::LongLongInt(3038287259199220266)))
        );
        assert_eq!(
            parse_raw_value(AMQPType::ShortString).parse(&[4, 116, 101, 115, 116][..]),
            Ok((EMPTY, AMQPValue::ShortString("test".into())))
        );
    }

    #[test]
    fn test_parse_type() {
        assert_eq!(parse_type(&[116][..]), Ok((EMPTY, AMQPType::Boolean)));
        assert_eq!(parse_type(&[102][..]), Ok((EMPTY, AMQPType::Float)));
    }

    #[test]
    fn test_parse_id() {
        assert_eq!(parse_id(&[0, 0][..]), Ok((EMPTY, 0)));
        assert_eq!(parse_id(&[255, 255][..]), Ok((EMPTY, 65535)));
    }

    #[test]
    fn test_parse_boolean() {
        assert_eq!(parse_boolean(&[0][..]), Ok((EMPTY, false)));
        assert_eq!(parse_boolean(&[1][..]), Ok((EMPTY, true)));
    }

    #[test]
    fn test_parse_short_short_int() {
        assert_eq!(parse_short_short_int(&[0][..]), Ok((EMPTY, 0)));
        assert_eq!(parse_short_short_int(&[255][..]), Ok((EMPTY, -1)));
    }

    #[test]
    fn test_parse_short_short_uint() {
        assert_eq!(parse_short_short_uint(&[0][..]), Ok((EMPTY, 0)));
        assert_eq!(parse_short_short_uint(&[255][..]), Ok((EMPTY, 255)));
    }

    #[test]
    fn test_parse_short_int() {
        assert_eq!(parse_short_int(&[0, 0][..]), Ok((EMPTY, 0)));
        assert_eq!(parse_short_int(&[255, 255][..]), Ok((EMPTY, -1)));
    }

    #[test]
    fn test_parse_short_uint() {
        assert_eq!(parse_short_uint(&[0, 0][..]), Ok((EMPTY, 0)));
        assert_eq!(parse_short_uint(&[255, 255][..]), Ok((EMPTY, 65535)));
    }

    #[test]
    fn test_parse_long_int() {
        assert_eq!(parse_long_int(&[0, 0, 0, 0][..]), Ok((EMPTY, 0)));
        assert_eq!(parse_long_int(&[255, 255, 255, 255][..]), Ok((EMPTY, -1)));
    }

    #[test]
    fn test_parse_long_uint() {
        assert_eq!(parse_long_uint(&[0, 0, 0, 0][..]), Ok((EMPTY, 0)));
        assert_eq!(
            parse_long_uint(&[255, 255, 255, 255][..]),
            Ok((EMPTY, 4294967295))
        );
    }

    #[test]
    fn test_parse_long_long_int() {
        assert_eq!(
            parse_long_long_int(&[0, 0, 0, 0, 0, 0, 0, 0][..]),
            Ok((EMPTY, 0))
        );
        assert_eq!(
            parse_long_long_int(&[255, 255, 255, 255, 255, 255, 255, 255][..]),
            Ok((EMPTY, -1))
        );
    }

    #[test]
    fn test_parse_long_long_uint() {
        assert_eq!(
            parse_long_long_uint(&[0, 0, 0, 0, 0, 0, 0, 0][..]),
            Ok((EMPTY, 0))
        );
        assert_eq!(
            parse_long_long_uint(&[255, 255, 255, 255, 255, 255, 255, 255][..]),
            Ok((EMPTY, 18446744073709551615))
        );
    }

    #[test]
    fn test_parse_float() {
        assert_eq!(parse_float(&[0, 0, 0, 0][..]), Ok((EMPTY, 0.)));
        assert_eq!(parse_float(&[66, 41, 174, 20][..]), Ok((EMPTY, 42.42)));
    }

    #[test]
    fn test_parse_double() {
        assert_eq!(parse_double(&[0, 0, 0, 0, 0, 0, 0, 0][..]), Ok((EMPTY, 0.)));
        assert_eq!(
            parse_double(&[64, 69, 53, 194, 143, 92, 40, 246][..]),
            Ok((EMPTY, 42.42))
        );
    }

    #[test]
    fn test_parse_decimal_value() {
        assert_eq!(
            parse_decimal_value(&[0, 0, 0, 0, 0][..]),
            Ok((EMPTY, DecimalValue { scale: 0, value: 0 }))
        );
        assert_eq!(
            parse_decimal_value(&[255, 255, 255, 255, 255][..]),
            Ok((
                EMPTY,
                DecimalValue {
                    scale: 255,
                    value: 4294967295
                }
            ))
        );
    }

    #[test]
    fn test_parse_short_string() {
        assert_eq!(
            parse_short_string(&[0][..]),
            Ok((EMPTY, ShortString::default()))
        );
        assert_eq!(
            parse_short_string(&[4, 116, 101, 115, 116][..]),
            Ok((EMPTY, "test".into()))
        );
    }

    #[test]
    fn test_parse_long_string() {
        assert_eq!(
            parse_long_string(&[0, 0, 0, 0][..]),
            Ok((EMPTY, LongString::default()))
        );
        assert_eq!(
            parse_long_string(&[0, 0, 0, 4, 116, 101, 115, 116][..]),
            Ok((EMPTY, "test".into()))
        );
    }

    #[test]
    fn test_parse_field_array() {
        assert_eq!(
            parse_field_array(&[0, 0, 0, 0][..]),
            Ok((EMPTY, FieldArray::default()))
        );
        assert_eq!(
            parse_field_array(&[0, 0, 0, 10, 83, 0, 0, 0, 4, 116, 101, 115, 116, 86][..]),
            Ok((
                EMPTY,
                vec![AMQPValue::LongString("test".into()), AMQPValue::Void].into()
            ))
        );
    }

    #[test]
    fn test_parse_timestamp() {
        assert_eq!(
            parse_timestamp(&[0, 0, 0, 0, 0, 0, 0, 0][..]),
            Ok((EMPTY, 0))
        );
        assert_eq!(
            parse_timestamp(&[255, 255, 255, 255, 255, 255, 255, 255][..]),
            Ok((EMPTY, 18446744073709551615))
        );
    }

    #[test]
    fn test_parse_field_table() {
        let mut table = FieldTable::default();
        table.insert("test".into(), AMQPValue::LongString("test".into()));
        table.insert("tt".into(), AMQPValue::Void);
        assert_eq!(
            parse_field_table(&[0, 0, 0, 0][..]),
            Ok((EMPTY, FieldTable::default()))
        );
        assert_eq!(
            parse_field_table(
                &[
                    0, 0, 0, 18, 4, 116, 101, 115, 116, 83, 0, 0, 0, 4, 116, 101, 115, 116, 2, 116,
                    116, 86
                ][..]
            ),
            Ok((EMPTY, table))
        );
    }

    #[test]
    fn test_parse_byte_array() {
        assert_eq!(
            parse_byte_array(&[0, 0, 0, 0][..]),
            Ok((EMPTY, ByteArray::default()))
        );
        assert_eq!(
            parse_byte_array(&[0, 0, 0, 4, 42, 1, 2, 3][..]),
            Ok((EMPTY, vec![42, 1, 2, 3].into()))
        );
    }

    #[test]
    fn test_parse_flags() {
        let mut flags = AMQPFlags::default();
        let mut names = Vec::new();
        names.push("a");
        flags.add_flag("a".to_string(), true);
        names.push("b");
        flags.add_flag("b".to_string(), false);
        names.push("c");
        flags.add_flag("c".to_string(), true);
        names.push("d");
        flags.add_flag("d".to_string(), true);
        assert_eq!(
            parse_flags(&[0b00001101][..], &names),
            Ok((EMPTY, flags.clone()))
        );
        names.push("e");
        flags.add_flag("e".to_string(), true);
        names.push("f");
        flags.add_flag("f".to_string(), false);
        names.push("g");
        flags.add_flag("g".to_string(), true);
        names.push("h");
        flags.add_flag("h".to_string(), true);
        names.push("i");
        flags.add_flag("i".to_string(), false);
        names.push("j");
        flags.add_flag("j".to_string(), true);
        assert_eq!(
            parse_flags(&[0b11011101, 0b00000010][..], &names),
            Ok((EMPTY, flags))
        );
    }

    /// Arrays nested `levels` deep, the innermost holding `leaf`, encoded as
    /// the payload of a field array (length first), built without recursion.
    fn nested_arrays(levels: usize, leaf: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(levels * 5 + leaf.len() + 4);
        // The outermost array's own length, then one 'A' + length per level.
        out.extend_from_slice(&((5 * (levels - 1) + leaf.len()) as u32).to_be_bytes());
        for level in 1..levels {
            out.push(b'A');
            out.extend_from_slice(&((5 * (levels - 1 - level) + leaf.len()) as u32).to_be_bytes());
        }
        out.extend_from_slice(leaf);
        out
    }

    /// Tables nested `levels` deep under the key "k", the innermost holding
    /// `k: leaf`, encoded as a field table (length first).
    fn nested_tables(levels: usize, leaf: &[u8]) -> Vec<u8> {
        let entry = 2; // the key "k": its length byte and the byte itself
        let mut out = Vec::new();
        let inner = entry + leaf.len();
        out.extend_from_slice(&((7 * (levels - 1) + inner) as u32).to_be_bytes());
        for level in 1..levels {
            out.extend_from_slice(&[1, b'k', b'F']);
            out.extend_from_slice(&((7 * (levels - 1 - level) + inner) as u32).to_be_bytes());
        }
        out.extend_from_slice(&[1, b'k']);
        out.extend_from_slice(leaf);
        out
    }

    /// The deepest level of `value`'s entries, counted as
    /// [`MAX_NESTING_DEPTH`] counts them, without recursion.
    fn depth(value: &AMQPValue) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(value, 0)];
        while let Some((value, level)) = stack.pop() {
            deepest = deepest.max(level);
            match value {
                AMQPValue::FieldArray(array) => {
                    stack.extend(array.as_slice().iter().map(|v| (v, level + 1)))
                }
                AMQPValue::FieldTable(table) => {
                    stack.extend(table.inner().values().map(|v| (v, level + 1)))
                }
                _ => {}
            }
        }
        deepest
    }

    /// Runs `f` on a thread with a small stack, as a consumer's I/O thread
    /// might have: an unbounded recursion would abort the test process.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .expect("spawn")
            .join()
            .expect("no panic")
    }

    #[test]
    fn nesting_up_to_the_bound_is_decoded_in_full() {
        // The array handed in, and 63 more inside it: the innermost one's
        // element is at level 64.
        let bytes = nested_arrays(MAX_NESTING_DEPTH, b"t\x01");
        let (rest, array) = parse_field_array(&bytes[..]).expect("parses");
        assert!(rest.is_empty());
        let value = AMQPValue::FieldArray(array);
        assert_eq!(depth(&value), MAX_NESTING_DEPTH);
        let mut innermost = &value;
        while let AMQPValue::FieldArray(array) = innermost {
            innermost = &array.as_slice()[0];
        }
        assert_eq!(innermost, &AMQPValue::Boolean(true));
    }

    #[test]
    fn arrays_nested_as_deep_as_a_frame_allows_are_cut_at_the_bound() {
        for levels in [MAX_NESTING_DEPTH + 1, 1_000, 1_500, 26_000] {
            let bytes = nested_arrays(levels, b"t\x01");
            let (depth, innermost) = on_small_stack(move || {
                let (rest, array) = parse_field_array(&bytes[..]).expect("parses");
                assert!(rest.is_empty(), "consumes the whole array");
                let value = AMQPValue::FieldArray(array);
                let mut innermost = &value;
                while let AMQPValue::FieldArray(array) = innermost {
                    innermost = &array.as_slice()[0];
                }
                (depth(&value), innermost.clone())
            });
            assert_eq!(depth, MAX_NESTING_DEPTH, "{levels} levels");
            assert_eq!(innermost, AMQPValue::Void, "the cut is marked");
        }
    }

    #[test]
    fn tables_nested_as_deep_as_a_frame_allows_are_cut_at_the_bound() {
        for levels in [1_000, 18_000] {
            let bytes = nested_tables(levels, b"V");
            let parsed = on_small_stack(move || {
                let (rest, table) = parse_field_table(&bytes[..]).expect("parses");
                assert!(rest.is_empty(), "consumes the whole table");
                depth(&AMQPValue::FieldTable(table))
            });
            assert_eq!(parsed, MAX_NESTING_DEPTH, "{levels} levels");
        }
    }

    #[test]
    fn what_follows_a_skipped_value_is_still_decoded() {
        // ["deep arrays", "after"] : the second element survives the skip.
        let deep = nested_arrays(5_000, b"V");
        let mut bytes = Vec::new();
        let element_len = 1 + deep.len() + 1 + 4 + 5;
        bytes.extend_from_slice(&(element_len as u32).to_be_bytes());
        bytes.push(b'A');
        bytes.extend_from_slice(&deep);
        bytes.extend_from_slice(&[b'S', 0, 0, 0, 5]);
        bytes.extend_from_slice(b"after");
        let (rest, array) = parse_field_array(&bytes[..]).expect("parses");
        assert!(rest.is_empty());
        assert_eq!(array.as_slice().len(), 2);
        assert_eq!(array.as_slice()[1], AMQPValue::LongString("after".into()));
    }

    #[test]
    fn a_table_with_more_values_than_the_budget_is_truncated_but_consumed() {
        // 100,000 one-byte Void elements: 100 KB on the wire, 3.2 MB decoded.
        let count = 100_000;
        let mut bytes = (count as u32).to_be_bytes().to_vec();
        bytes.extend(std::iter::repeat_n(b'V', count));
        bytes.extend_from_slice(b"next");
        let (rest, array) = parse_field_array(&bytes[..]).expect("parses");
        assert_eq!(rest, &b"next"[..], "the whole array is consumed");
        assert_eq!(array.as_slice().len(), MAX_VALUES);
    }

    #[test]
    fn the_budget_counts_nested_values_too() {
        // MAX_VALUES arrays of one element each: the budget runs out half way.
        let element = [b'A', 0, 0, 0, 1, b'V'];
        let mut bytes = ((element.len() * MAX_VALUES) as u32).to_be_bytes().to_vec();
        for _ in 0..MAX_VALUES {
            bytes.extend_from_slice(&element);
        }
        let (rest, array) = parse_field_array(&bytes[..]).expect("parses");
        assert!(rest.is_empty());
        let value = AMQPValue::FieldArray(array);
        let mut count = 0;
        let mut stack = vec![&value];
        while let Some(value) = stack.pop() {
            if let AMQPValue::FieldArray(array) = value {
                count += array.as_slice().len();
                stack.extend(array.as_slice());
            }
        }
        assert_eq!(count, MAX_VALUES);
    }

    #[test]
    fn malformed_nested_values_are_still_errors() {
        // An array claiming 10 bytes of content but holding an unknown type.
        assert!(parse_field_array(&[0, 0, 0, 2, b'?', 0][..]).is_err());
        // A table whose entry runs past its length.
        assert!(parse_field_table(&[0, 0, 0, 3, 1, b'k', b'S'][..]).is_err());
    }

    #[test]
    fn a_name_written_twice_keeps_the_first_and_costs_no_budget() {
        // MAX_VALUES + 10 entries "a": Void, then "b": true. The repeats are
        // skipped, so "b" still fits the budget, and "a" keeps its first value.
        let mut entries = vec![1, b'a', b'S', 0, 0, 0, 1, b'1'];
        for _ in 0..MAX_VALUES + 10 {
            entries.extend_from_slice(&[1, b'a', b'V']);
        }
        // A repeated nested table is skipped whole, however deep.
        entries.extend_from_slice(&[1, b'a']);
        let deep = nested_tables(5_000, b"V");
        entries.push(b'F');
        entries.extend_from_slice(&deep);
        entries.extend_from_slice(&[1, b'b', b't', 1]);
        let mut bytes = (entries.len() as u32).to_be_bytes().to_vec();
        bytes.extend(entries);
        let (rest, table) = parse_field_table(&bytes[..]).expect("parses");
        assert!(rest.is_empty());
        assert_eq!(table.inner().len(), 2);
        assert_eq!(
            table.inner().get("a"),
            Some(&AMQPValue::LongString("1".into()))
        );
        assert_eq!(table.inner().get("b"), Some(&AMQPValue::Boolean(true)));
    }
}
