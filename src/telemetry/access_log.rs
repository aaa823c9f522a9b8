//! The access log's writer: one line per request, formatted on the worker
//! without allocating and handed to a writer thread through a bounded
//! buffer.
//!
//! Written on the request path, every line was a `write(2)` to stderr
//! under a lock: about 40% of the proxy's throughput. `tracing-appender`'s
//! non-blocking writer moves the write off the request path, but costs an
//! allocation and, whenever its writer thread has caught up and sleeps, a
//! futex wake-up per line, which at tens of thousands of lines a second is
//! most of the remaining cost. Here lines are appended to a shared buffer
//! that the writer thread swaps out and writes every [`FLUSH_EVERY`]: one
//! write per batch, no wake-ups, nothing allocated once the buffers have
//! grown. When the buffer is full (stderr stuck) lines are dropped and
//! counted rather than making requests wait.
//!
//! The formatting follows `tracing-subscriber`'s `fmt` output, text or
//! JSON, so the access log reads like every other line.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tracing::field::{Field, Visit};

use super::LogFormat;

/// How long a line waits, at most, before the writer thread writes it.
/// Short, so each write is small and preempts a worker briefly (at 50 ms
/// the p99 with the log on was 1.8× that with it off).
const FLUSH_EVERY: Duration = Duration::from_millis(10);

/// The writer thread's nice value above the workers': a batch waits for a
/// request, not the other way round (see [`crate::background`]).
const WRITER_NICE: i32 = 5;

/// Bytes of lines waiting for the writer (about 25,000 typical lines, half
/// a second at full load); lines that do not fit are dropped.
const CAPACITY: usize = 4 << 20;

/// Lines waiting for the writer thread, shared with every worker.
struct Pending {
    lines: Mutex<Vec<u8>>,
    dropped: AtomicU64,
    stop: AtomicBool,
}

impl Pending {
    fn push(&self, line: &[u8]) {
        // A poisoned lock only means a panic elsewhere mid-append; the
        // bytes are still a buffer.
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() + line.len() > CAPACITY {
            drop(lines);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        lines.extend_from_slice(line);
    }

    /// Writes what is pending. `spare` is the buffer swapped in, so the
    /// workers append to an already grown one.
    fn write_out(&self, spare: &mut Vec<u8>) {
        std::mem::swap(&mut *self.lines.lock().unwrap_or_else(|e| e.into_inner()), spare);
        if spare.is_empty() {
            return;
        }
        // Holding std's stderr lock for the batch keeps other threads'
        // lines (`eprintln!`, the other log events) from landing inside it.
        // A failed write has nowhere to be reported; the lines are gone.
        let _ = std::io::stderr().lock().write_all(spare);
        spare.clear();
    }
}

/// The access log's handle, kept by the logging setup: the `tracing` layer
/// that formats lines, and the count of dropped lines for `/metrics`.
#[derive(Clone)]
pub(super) struct AccessLog {
    pending: Arc<Pending>,
    format: LogFormat,
}

/// Stops the writer thread when dropped, after it has written every line
/// still pending.
pub(super) struct Writer {
    pending: Arc<Pending>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.pending.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl AccessLog {
    /// Starts the writer thread. `None` if the OS refuses a thread: then
    /// lines are written by the worker itself (see [`AccessLog::record`]).
    pub(super) fn start(format: LogFormat) -> (AccessLog, Option<Writer>) {
        let pending = Arc::new(Pending {
            lines: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let shared = pending.clone();
        let thread = std::thread::Builder::new().name("postern-access-log".into()).spawn(move || {
            crate::background::lower_this_threads_priority(WRITER_NICE);
            let mut spare = Vec::new();
            while !shared.stop.load(Ordering::Acquire) {
                std::thread::park_timeout(FLUSH_EVERY);
                shared.write_out(&mut spare);
            }
            shared.write_out(&mut spare);
        });
        let log = AccessLog { pending: pending.clone(), format };
        match thread {
            Ok(thread) => (log, Some(Writer { pending, thread: Some(thread) })),
            Err(e) => {
                eprintln!("postern: no access log writer thread ({e}); writing the access log directly");
                log.pending.stop.store(true, Ordering::Release);
                (log, None)
            }
        }
    }

    pub(super) fn dropped(&self) -> u64 {
        self.pending.dropped.load(Ordering::Relaxed)
    }

    fn record(&self, event: &tracing::Event<'_>) {
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else { return };
            line.clear();
            format_line(&mut line, self.format, event, SystemTime::now());
            if self.pending.stop.load(Ordering::Relaxed) {
                let _ = std::io::stderr().lock().write_all(&line);
            } else {
                self.pending.push(&line);
            }
        });
    }
}

thread_local! {
    /// The line being formatted, kept per worker so formatting allocates
    /// only until it has grown to the longest line.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AccessLog {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.record(event);
    }
}

/// One line as `tracing-subscriber`'s `fmt` writes it: text
/// (`TIMESTAMP  LEVEL target: message key=value ...`) or JSON with the
/// fields flattened (`{"timestamp":..,"level":..,"message":..,"key":..,"target":..}`).
fn format_line(out: &mut Vec<u8>, format: LogFormat, event: &tracing::Event<'_>, now: SystemTime) {
    let meta = event.metadata();
    match format {
        LogFormat::Text => {
            timestamp(out, now);
            // `{:>5}`: the level right-aligned in five columns.
            let level = meta.level().as_str();
            out.resize(out.len() + 6 - level.len(), b' ');
            out.extend_from_slice(level.as_bytes());
            out.push(b' ');
            out.extend_from_slice(meta.target().as_bytes());
            out.push(b':');
            event.record(&mut TextFields { out });
        }
        LogFormat::Json => {
            out.extend_from_slice(b"{\"timestamp\":\"");
            timestamp(out, now);
            out.extend_from_slice(b"\",\"level\":\"");
            out.extend_from_slice(meta.level().as_str().as_bytes());
            out.push(b'"');
            event.record(&mut JsonFields { out });
            out.extend_from_slice(b",\"target\":");
            json_string(out, meta.target());
            out.push(b'}');
        }
    }
    out.push(b'\n');
}

thread_local! {
    /// The formatted date and time up to the second (`2026-12-04T22:57:06.`)
    /// of the last line this worker wrote, and that second: lines in the
    /// same second reuse it and format only the microseconds.
    static SECOND: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
}

/// `now` as RFC 3339 UTC with microseconds, as `tracing-subscriber` writes it.
fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since_epoch = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let (secs, micros) = (since_epoch.as_secs(), since_epoch.subsec_micros());
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != secs {
            let formatted = humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
            second.1.clear();
            let _ = write!(second.1, "{formatted}");
            // `...:06Z` → `...:06.`
            second.1.pop();
            second.1.push(b'.');
            second.0 = secs;
        }
        out.extend_from_slice(&second.1);
    });
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(micros).as_bytes();
    out.resize(out.len() + 6 - digits.len(), b'0');
    out.extend_from_slice(digits);
    out.push(b'Z');
}

/// Appends ` name=` (the name as given).
fn text_key(out: &mut Vec<u8>, field: &Field) {
    out.push(b' ');
    out.extend_from_slice(field.name().as_bytes());
    out.push(b'=');
}

/// Appends `value` as Rust's `Debug` writes a string: printable ASCII
/// without `"` or `\\` as it is, in quotes (every access-log value, nearly
/// always); anything else through `Debug` itself.
fn text_quoted(out: &mut Vec<u8>, value: &str) {
    if value.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{value:?}");
    }
}

/// `key=value` pairs after the message; strings quoted and escaped as
/// `tracing-subscriber` does (Rust's `Debug`), numbers bare.
struct TextFields<'a> {
    out: &'a mut Vec<u8>,
}

impl Visit for TextFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.out.push(b' ');
            self.out.extend_from_slice(value.as_bytes());
        } else {
            text_key(self.out, field);
            text_quoted(self.out, value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        text_key(self.out, field);
        self.out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        text_key(self.out, field);
        self.out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        text_key(self.out, field);
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.out, " {value:?}");
        } else {
            text_key(self.out, field);
            let _ = write!(self.out, "{value:?}");
        }
    }
}

/// `,"key":value` members; strings JSON-escaped.
struct JsonFields<'a> {
    out: &'a mut Vec<u8>,
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        self.out.push(b',');
        json_string(self.out, field.name());
        self.out.push(b':');
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        json_string(self.out, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            self.out.extend_from_slice(b"null");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        self.out.push(b'"');
        let _ = std::fmt::Write::write_fmt(&mut JsonEscaped(self.out), format_args!("{value:?}"));
        self.out.push(b'"');
    }
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let _ = std::fmt::Write::write_str(&mut JsonEscaped(out), s);
    out.push(b'"');
}

/// Appends text as the inside of a JSON string (RFC 8259 §7).
struct JsonEscaped<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let mut plain = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..0x20 | 0x7f => b"",
                _ => continue,
            };
            self.0.extend_from_slice(&s.as_bytes()[plain..i]);
            if escape.is_empty() {
                let _ = write!(self.0, "\\u{b:04x}");
            } else {
                self.0.extend_from_slice(escape);
            }
            plain = i + 1;
        }
        self.0.extend_from_slice(&s.as_bytes()[plain..]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// Collects what a layer writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8")
        }
    }

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Our formatter, as a layer writing into `Captured`.
    struct Ours(LogFormat, Captured);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Ours {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            format_line(&mut self.1.0.lock().expect("lock"), self.0, event, SystemTime::now());
        }
    }

    /// The same request line through our formatter and through
    /// `tracing-subscriber`'s, with values that need escaping.
    fn both(format: LogFormat) -> (String, String) {
        let (ours, theirs) = (Captured::default(), Captured::default());
        let writer = theirs.clone();
        let fmt = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(move || writer.clone());
        let fmt: Box<dyn tracing_subscriber::Layer<_> + Send + Sync> = match format {
            LogFormat::Json => Box::new(fmt.json().flatten_event(true)),
            LogFormat::Text => Box::new(fmt),
        };
        let subscriber = tracing_subscriber::registry().with(fmt).with(Ours(format, ours.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::event!(
                target: super::super::ACCESS_LOG,
                tracing::Level::INFO,
                http.method = "GET",
                http.host = "plain.example",
                http.path = "/a \"quoted\"\\path\n\u{1}é",
                http.status = 404u16,
                duration_ms = 1.25,
                http.bytes = 12u64,
                offset = -3i64,
                navigation = false,
                "request"
            );
        });
        (ours.text(), theirs.text())
    }

    #[test]
    fn json_lines_carry_what_tracing_subscriber_writes() {
        let (ours, theirs) = both(LogFormat::Json);
        let mut ours: serde_json::Value = serde_json::from_str(&ours).expect("our line is JSON");
        let mut theirs: serde_json::Value = serde_json::from_str(&theirs).expect("JSON");
        let (a, b) = (ours["timestamp"].take(), theirs["timestamp"].take());
        assert_eq!(ours, theirs);
        let parse = |v: &serde_json::Value| humantime::parse_rfc3339(v.as_str().expect("string")).expect("RFC 3339");
        let gap = parse(&b).duration_since(parse(&a)).unwrap_or_default();
        assert!(gap < Duration::from_secs(5), "{a} vs {b}");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds_across_seconds() {
        for (secs, micros, want) in [
            (1_796_425_026, 7, "2026-12-04T22:57:06.000007Z"),
            (1_796_425_026, 999_999, "2026-12-04T22:57:06.999999Z"),
            (1_796_425_027, 120_000, "2026-12-04T22:57:07.120000Z"),
            (0, 0, "1970-01-01T00:00:00.000000Z"),
        ] {
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros);
            let mut out = Vec::new();
            timestamp(&mut out, now);
            assert_eq!(String::from_utf8(out).expect("utf-8"), want);
            assert_eq!(humantime::format_rfc3339_micros(now).to_string(), want);
        }
    }

    #[test]
    fn text_lines_read_like_tracing_subscribers() {
        let (ours, theirs) = both(LogFormat::Text);
        // Past the timestamp (27 bytes): the same text.
        assert_eq!(ours[27..], theirs[27..], "\nours:   {ours}theirs: {theirs}");
        assert!(ours.ends_with('\n') && ours.matches('\n').count() == 1, "one line: {ours:?}");
    }

    #[test]
    fn a_full_buffer_drops_and_counts_lines_and_takes_more_once_written() {
        let pending =
            Pending { lines: Mutex::new(Vec::new()), dropped: AtomicU64::new(0), stop: AtomicBool::new(false) };
        let line = vec![b'x'; 1000];
        for _ in 0..CAPACITY / 1000 + 10 {
            pending.push(&line);
        }
        // CAPACITY / 1000 lines fit (4 MiB is not a multiple of 1000).
        assert_eq!(pending.dropped.load(Ordering::Relaxed), 10);
        assert!(pending.lines.lock().expect("lock").len() <= CAPACITY);
        // Written out, the buffer takes lines again.
        let mut spare = Vec::new();
        std::mem::swap(&mut *pending.lines.lock().expect("lock"), &mut spare);
        pending.push(&line);
        assert_eq!(pending.lines.lock().expect("lock").len(), 1000);
    }
}
