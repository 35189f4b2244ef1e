//! The last line of defence for secrets: every log line is scrubbed of every
//! registered secret just before it is written, whichever crate produced it
//! and in whichever of the encodings a library is likely to print.
//!
//! Secrets are registered with [`register_secret`] (and [`register_url`] for
//! the passwords inside a URL) as soon as the settings are parsed. From each
//! one the redactor derives its *needles*, the spellings to look for:
//!
//! - the secret as is, JSON-escaped, as Rust's `Debug` escapes it, and both
//!   (a `Debug` string inside a JSON log line);
//! - percent-encoded: every byte but letters and digits encoded (lapin's
//!   AMQP URIs), or every byte but RFC 3986's unreserved ones, with upper- and
//!   lower-case hex digits, and with `+` for spaces (query strings);
//! - as a decimal byte list the way `Debug` prints `[u8]` (`112, 97, 115`)
//!   and JSON prints byte arrays (`112,97,115`): lapin logs the SASL PLAIN
//!   response, `\0user\0password`, as exactly that;
//!   (`{:#?}`, one number per line, is not recognised: `tracing` formats
//!   fields with `{:?}`, and no library we use logs pretty-printed bytes);
//! - as hex digits, lower and upper case;
//! - as base64 (standard and URL-safe alphabets) at each of the three
//!   alignments a secret can have inside a larger encoded blob (such as the
//!   `Server-Key` header, `base64(id:secret)`): for each shift `s` in 0..3,
//!   `s` filler bytes plus the secret are encoded and only the characters made
//!   of the secret's bits alone are kept.
//!
//! Secrets shorter than [`MIN_ENCODED_LEN`] bytes are scrubbed in their text
//! forms only: their byte lists, hex and base64 spellings are so short (a
//! 3-byte secret is 4 base64 characters, or e.g. `97, 98, 99`) that they would
//! match ordinary log text and blank out unrelated numbers and words. No real
//! password or key is that short; one that is gets no protection from
//! encoding, which is documented rather than hidden.
//!
//! Matching is one Aho–Corasick pass over the line, so the cost hardly grows
//! with the number of secrets. Overlapping matches are merged and each merged
//! span becomes one `[REDACTED]`: two secrets that overlap in a line leave
//! nothing of either. Should the matcher ever fail to build, the redactor fails
//! closed: whole log lines are withheld rather than written unscrubbed.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io::{self, Write};
use std::sync::RwLock;
use tracing_subscriber::fmt::MakeWriter;

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// What replaces a whole line if the matcher cannot be built.
const WITHHELD: &[u8] = b"[log line withheld: the secret redactor is unavailable]\n";

/// Secrets shorter than this (in bytes) get no byte-list, hex or base64
/// needles (see the module documentation).
pub const MIN_ENCODED_LEN: usize = 4;

/// The registered secrets of this process.
static REDACTOR: RwLock<Redactor> = RwLock::new(Redactor::new());

/// Registers a secret: from now on no log line written through
/// [`RedactingMakeWriter`], and no text passed to [`scrub`], shows it in any
/// of the forms listed in the module documentation. Registering the same
/// secret again is cheap; an empty one is ignored.
pub fn register_secret(secret: &str) {
    if secret.is_empty() {
        return;
    }
    if REDACTOR
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .knows(secret)
    {
        return;
    }
    REDACTOR
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .add(secret);
}

/// Registers the secrets inside a URL: the password of the user info and the
/// value of every password-like query parameter (the parameters
/// [`redact_url`] masks), each as written in the URL
/// (percent-encoded) and decoded. A string that does not parse as a URL is
/// registered whole: better an over-eager redaction than a leak.
pub fn register_url(raw: &str) {
    for part in url_list(raw) {
        for secret in url_secrets(part) {
            register_secret(&secret);
        }
    }
}

/// The URLs of a comma-separated list of URLs (`AMQP_URL` may be one): split
/// only at a comma that starts another URL (`…,amqp://…`), so that a single
/// URL with commas of its own (Postgres' `postgres://h1:5432,h2:5432/db`)
/// stays whole.
pub fn url_list(raw: &str) -> Vec<&str> {
    let starts_url = |rest: &str| {
        let rest = rest.trim_start();
        let scheme_end = rest.find("://");
        scheme_end.is_some_and(|end| {
            end > 0
                && rest[..end]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        })
    };
    let mut parts = Vec::new();
    let mut start = 0;
    for (at, _) in raw.match_indices(',') {
        if starts_url(&raw[at + 1..]) {
            parts.push(raw[start..at].trim());
            start = at + 1;
        }
    }
    parts.push(raw[start..].trim());
    parts
}

/// `text` with every registered secret replaced by `[REDACTED]`.
pub fn scrub(text: &str) -> String {
    let redactor = REDACTOR.read().unwrap_or_else(|p| p.into_inner());
    match redactor.scrub(text.as_bytes()) {
        Some(Cow::Borrowed(_)) => text.to_owned(),
        Some(Cow::Owned(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        None => String::from_utf8_lossy(WITHHELD).trim_end().to_owned(),
    }
}

/// A URL with its passwords replaced by `***`, for logs and `Debug`: the one
/// in the user info and any `password`-like query parameter (Postgres
/// accepts `?password=` and `?sslpassword=`).
pub fn redact_url(raw: &str) -> String {
    // `AMQP_URL` may be a comma-separated list of URLs.
    let parts = url_list(raw);
    if parts.len() > 1 {
        return parts
            .into_iter()
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",");
    }
    let Ok(mut url) = url::Url::parse(raw) else {
        return "[unparseable URL]".to_owned();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query_pairs().any(|(key, _)| is_secret_parameter(&key)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let value = if is_secret_parameter(&k) {
                    "***".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Whether a URL's query parameter carries a secret (`password`,
/// `sslpassword`, `secret`, `pass`, in any case), for [`redact_url`] and
/// [`register_url`] alike.
fn is_secret_parameter(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("secret") || key == "pass"
}

/// The secrets a URL carries (see [`register_url`]).
fn url_secrets(raw: &str) -> Vec<String> {
    let Ok(url) = url::Url::parse(raw) else {
        return vec![raw.to_owned()];
    };
    let mut secrets = Vec::new();
    if let Some(password) = url.password() {
        secrets.push(password.to_owned());
        secrets.push(String::from_utf8_lossy(&percent_decode(password)).into_owned());
    }
    for (key, value) in url.query_pairs() {
        if is_secret_parameter(&key) {
            secrets.push(value.into_owned());
        }
    }
    for pair in url.query().unwrap_or_default().split('&') {
        if let Some((key, value)) = pair.split_once('=')
            && is_secret_parameter(&String::from_utf8_lossy(&percent_decode(key)))
        {
            secrets.push(value.to_owned());
        }
    }
    secrets.retain(|s| !s.is_empty());
    secrets
}

/// `%XX` replaced by its byte; anything else, a malformed escape included,
/// kept as is.
pub(crate) fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// A set of secrets and the matcher for all their needles.
pub(crate) struct Redactor {
    secrets: BTreeSet<String>,
    needles: BTreeSet<Vec<u8>>,
    matcher: Matcher,
}

enum Matcher {
    /// No secrets yet: lines pass unchanged.
    Empty,
    Ready(AhoCorasick),
    /// The matcher could not be built: withhold every line.
    Broken,
}

impl Redactor {
    pub(crate) const fn new() -> Redactor {
        Redactor {
            secrets: BTreeSet::new(),
            needles: BTreeSet::new(),
            matcher: Matcher::Empty,
        }
    }

    fn knows(&self, secret: &str) -> bool {
        self.secrets.contains(secret)
    }

    pub(crate) fn add(&mut self, secret: &str) {
        if secret.is_empty() || !self.secrets.insert(secret.to_owned()) {
            return;
        }
        self.needles.extend(needles(secret.as_bytes()));
        self.matcher = match AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&self.needles)
        {
            Ok(matcher) => Matcher::Ready(matcher),
            Err(_) => Matcher::Broken,
        };
    }

    /// `line` without any needle; `None` when the line must be withheld.
    pub(crate) fn scrub<'a>(&self, line: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        match &self.matcher {
            Matcher::Empty => Some(Cow::Borrowed(line)),
            Matcher::Broken => None,
            Matcher::Ready(matcher) => {
                // Every match, overlapping ones too, merged into spans: two
                // secrets that overlap in a line leave nothing of either.
                let mut found: Vec<(usize, usize)> = matcher
                    .find_overlapping_iter(line)
                    .map(|m| (m.start(), m.end()))
                    .collect();
                if found.is_empty() {
                    return Some(Cow::Borrowed(line));
                }
                found.sort_unstable();
                let mut out = Vec::with_capacity(line.len());
                let mut written = 0;
                let mut spans = found.into_iter().peekable();
                while let Some((start, mut end)) = spans.next() {
                    while let Some(&(next_start, next_end)) = spans.peek() {
                        if next_start > end {
                            break;
                        }
                        end = end.max(next_end);
                        spans.next();
                    }
                    out.extend_from_slice(&line[written..start]);
                    out.extend_from_slice(REDACTED.as_bytes());
                    written = end;
                }
                out.extend_from_slice(&line[written..]);
                Some(Cow::Owned(out))
            }
        }
    }
}

/// Every spelling of `secret` the redactor looks for.
fn needles(secret: &[u8]) -> BTreeSet<Vec<u8>> {
    let mut needles = BTreeSet::new();
    needles.insert(secret.to_vec());
    let text = String::from_utf8_lossy(secret);
    let json = json_escape(&text);
    let debug = debug_escape(&text);
    let json_of_debug = json_escape(&debug);
    for escaped in [json, debug, json_of_debug] {
        needles.insert(escaped.into_bytes());
    }
    for keep in [KEEP_ALPHANUMERIC, KEEP_UNRESERVED] {
        for upper in [true, false] {
            needles.insert(percent_encode(secret, keep, upper, false).into_bytes());
            needles.insert(percent_encode(secret, keep, upper, true).into_bytes());
        }
    }
    if secret.len() >= MIN_ENCODED_LEN {
        for separator in [", ", ","] {
            let list: Vec<String> = secret.iter().map(u8::to_string).collect();
            needles.insert(list.join(separator).into_bytes());
        }
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        needles.insert(hex.to_ascii_uppercase().into_bytes());
        needles.insert(hex.into_bytes());
        needles.extend(base64_needles(secret));
    }
    needles.retain(|n| !n.is_empty());
    needles
}

fn json_escape(text: &str) -> String {
    let quoted = serde_json::to_string(text).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(&quoted)
        .to_owned()
}

fn debug_escape(text: &str) -> String {
    let quoted = format!("{text:?}");
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(&quoted)
        .to_owned()
}

const KEEP_ALPHANUMERIC: &[u8] = b"";
const KEEP_UNRESERVED: &[u8] = b"-._~";

/// Percent-encodes every byte except ASCII letters, digits and `keep`;
/// `plus_for_space` spells a space `+`, as query strings do.
fn percent_encode(secret: &[u8], keep: &[u8], upper: bool, plus_for_space: bool) -> String {
    let mut out = String::with_capacity(secret.len() * 3);
    for &byte in secret {
        if byte.is_ascii_alphanumeric() || keep.contains(&byte) {
            out.push(char::from(byte));
        } else if plus_for_space && byte == b' ' {
            out.push('+');
        } else if upper {
            out.push_str(&format!("%{byte:02X}"));
        } else {
            out.push_str(&format!("%{byte:02x}"));
        }
    }
    out
}

/// The base64 characters that encode `secret` alone, at each alignment it
/// can have inside a larger blob, in both alphabets.
fn base64_needles(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut needles = Vec::new();
    for shift in 0..3usize {
        let mut blob = vec![0u8; shift];
        blob.extend_from_slice(secret);
        // Bits [first_bit, end_bit) of the blob are the secret's; a base64
        // character covers bits [6i, 6i + 6).
        let first_bit = 8 * shift;
        let end_bit = 8 * (shift + secret.len());
        let first_char = first_bit.div_ceil(6);
        let end_char = end_bit / 6;
        if end_char <= first_char {
            continue;
        }
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let encoded = engine.encode(&blob);
            if let Some(part) = encoded.as_bytes().get(first_char..end_char) {
                needles.push(part.to_vec());
            }
        }
    }
    needles
}

/// Wraps a [`MakeWriter`] so that everything written through it is scrubbed
/// of every registered secret. Each writer it makes buffers what one event
/// writes and scrubs it as a whole when flushed or dropped, so a secret is
/// found even if a formatter writes a line in pieces.
#[derive(Debug, Clone)]
pub struct RedactingMakeWriter<M> {
    inner: M,
}

impl<M> RedactingMakeWriter<M> {
    pub fn new(inner: M) -> RedactingMakeWriter<M> {
        RedactingMakeWriter { inner }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingMakeWriter<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter::new(self.inner.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingWriter::new(self.inner.make_writer_for(meta))
    }
}

/// One event's writer: buffers, then scrubs and writes in one call.
pub struct RedactingWriter<W: Write> {
    inner: W,
    buffer: Vec<u8>,
}

impl<W: Write> RedactingWriter<W> {
    fn new(inner: W) -> RedactingWriter<W> {
        RedactingWriter {
            inner,
            buffer: Vec::new(),
        }
    }

    fn emit(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let buffer = std::mem::take(&mut self.buffer);
        // The lock is released before the (possibly slow) write.
        let clean = REDACTOR
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .scrub(&buffer);
        match clean {
            Some(clean) => self.inner.write_all(&clean)?,
            None => self.inner.write_all(WITHHELD)?,
        }
        self.inner.flush()
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        // Nowhere to report a failure to write a log line.
        let _ = self.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_of_passwords_in_user_info_and_query() {
        assert_eq!(
            redact_url("amqp://guest:guest@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("::"), "[unparseable URL]");
        assert_eq!(
            redact_url("postgres://u@h/db?sslmode=require&password=hunter2&sslpassword=x"),
            "postgres://u@h/db?sslmode=require&password=***&sslpassword=***"
        );
    }

    fn scrubbed(redactor: &Redactor, text: &str) -> String {
        let clean = redactor.scrub(text.as_bytes()).expect("a matcher");
        String::from_utf8_lossy(&clean).into_owned()
    }

    fn redactor(secrets: &[&str]) -> Redactor {
        let mut redactor = Redactor::new();
        for secret in secrets {
            redactor.add(secret);
        }
        redactor
    }

    #[test]
    fn without_secrets_lines_pass_unchanged() {
        let redactor = Redactor::new();
        assert_eq!(scrubbed(&redactor, "hello 1, 2, 3"), "hello 1, 2, 3");
    }

    #[test]
    fn text_forms_are_scrubbed() {
        let secret = r#"Pw@x/"y\z 1"#;
        let r = redactor(&[secret]);
        for form in [
            secret.to_owned(),
            json_escape(secret),
            debug_escape(secret),
            json_escape(&debug_escape(secret)),
            "Pw%40x%2F%22y%5Cz%201".to_owned(),
            "Pw%40x%2f%22y%5cz%201".to_owned(),
            "Pw%40x%2F%22y%5Cz+1".to_owned(),
        ] {
            let line = format!("before {form} after");
            assert_eq!(scrubbed(&r, &line), "before [REDACTED] after", "{form}");
        }
    }

    #[test]
    fn lapins_sasl_frame_is_scrubbed() {
        use lapin::protocol::AMQPClass;
        use lapin::protocol::connection::{AMQPMethod, StartOk};
        use lapin::types::{FieldTable, LongString, ShortString};
        let password = "Amqp@Pw/e7c1";
        let method = AMQPClass::Connection(AMQPMethod::StartOk(StartOk {
            client_properties: FieldTable::default(),
            mechanism: ShortString::from("PLAIN"),
            response: LongString::from(format!("\0guest\0{password}")),
            locale: ShortString::from("en_US"),
        }));
        // lapin::io_loop logs the frame with Display, which prints the method
        // with Debug: `AMQPFrame::Method({method:?})` (amq-protocol's
        // frame/structs.rs; lapin does not re-export the frame type).
        for line in [
            format!("AMQPFrame::Method({method:?})"),
            format!("frame={:?}", format!("AMQPFrame::Method({method:?})")),
        ] {
            let listed: Vec<String> = password.bytes().map(|b| b.to_string()).collect();
            assert!(line.contains(&listed.join(", ")), "{line}");
            let clean = scrubbed(&redactor(&[password]), &line);
            assert!(!clean.contains(&listed.join(", ")), "{clean}");
            assert!(clean.contains("LongString([0, 103, 117, 101, 115, 116, 0, [REDACTED]])"));
        }
    }

    #[test]
    fn byte_lists_and_hex_are_scrubbed() {
        let r = redactor(&["pass"]);
        assert_eq!(
            scrubbed(
                &r,
                "[0, 112, 97, 115, 115, 1] [112,97,115,115] 70617373 70617373"
            ),
            "[0, [REDACTED], 1] [[REDACTED]] [REDACTED] [REDACTED]"
        );
        assert_eq!(scrubbed(&r, "0x70617373"), "0x[REDACTED]");
    }

    #[test]
    fn base64_is_scrubbed_at_every_alignment_in_both_alphabets() {
        let secret = "s3cr?t>~key";
        let r = redactor(&[secret]);
        for prefix in ["", "a", "ab", "abc", "abcd", "id:"] {
            for suffix in ["", "x", "xy", "xyz"] {
                let blob = format!("{prefix}{secret}{suffix}");
                for encoded in [
                    base64::engine::general_purpose::STANDARD.encode(&blob),
                    URL_SAFE_NO_PAD.encode(&blob),
                ] {
                    let clean = scrubbed(&r, &format!("key={encoded};"));
                    assert!(clean.contains(REDACTED), "{blob:?} {encoded}");
                    // What is left decodes to nothing containing the secret.
                    for piece in clean.split(|c: char| !c.is_ascii_alphanumeric()) {
                        for skip in 0..piece.len().min(4) {
                            let part = &piece[skip..];
                            let part = &part[..part.len() - part.len() % 4];
                            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                                if let Ok(bytes) = engine.decode(part) {
                                    assert!(
                                        !String::from_utf8_lossy(&bytes).contains(secret),
                                        "{clean}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn short_secrets_are_scrubbed_as_text_only() {
        let r = redactor(&["abc"]);
        assert_eq!(scrubbed(&r, "x abc y"), "x [REDACTED] y");
        // "abc" as bytes and base64: left alone, they would match anything.
        assert_eq!(scrubbed(&r, "97, 98, 99 YWJj"), "97, 98, 99 YWJj");
    }

    #[test]
    fn overlapping_secrets_leave_nothing_behind() {
        let r = redactor(&["secret-one", "one-two"]);
        assert_eq!(scrubbed(&r, "x secret-one-two y"), "x [REDACTED] y");
    }

    #[test]
    fn url_secrets_are_the_password_and_password_parameters_both_spellings() {
        let mut found = url_secrets("amqp://user:p%40ss%2Fword@h:5672/%2f");
        found.sort();
        assert_eq!(found, ["p%40ss%2Fword", "p@ss/word"]);
        let mut found =
            url_secrets("postgres://u@h/db?sslmode=require&password=a%2Bb&sslpassword=c+d");
        found.sort();
        found.dedup();
        assert_eq!(found, ["a%2Bb", "a+b", "c d", "c+d"]);
        assert!(url_secrets("postgres://u@h/db").is_empty());
        assert_eq!(url_secrets("not a url"), ["not a url"]);
    }

    #[test]
    fn the_writer_scrubs_what_one_event_writes_in_pieces() {
        let mut out = Vec::new();
        {
            let mut writer = RedactingWriter::new(&mut out);
            // The global registry is what the writer uses.
            register_secret("in-pieces-secret");
            writer.write_all(b"a in-pie").expect("write");
            writer.write_all(b"ces-secret b\n").expect("write");
        }
        assert_eq!(String::from_utf8_lossy(&out), "a [REDACTED] b\n");
        assert_eq!(scrub("x in-pieces-secret"), "x [REDACTED]");
    }
}
