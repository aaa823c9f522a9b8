//! A steady, bounded load for fault tests: `clients` concurrent loopback
//! clients sending GETs until stopped, until `max_requests` in all, or until
//! `max_time`, whichever comes first. Every request is recorded (when it
//! started, how long it took, how it ended) so a test can count failures
//! by reason and by time window.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A 2xx answer whose body was read in full.
    Ok,
    /// Any other status, body read.
    Status(u16),
    /// The TCP connection was refused (nothing listening).
    Refused,
    /// Any other transport error, with reqwest's description.
    Error(String),
}

/// One request as the load saw it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub client: usize,
    pub started: Instant,
    pub took: Duration,
    pub outcome: Outcome,
}

/// Limits: a load never runs unbounded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub clients: usize,
    pub max_requests: usize,
    pub max_time: Duration,
    /// Each client's pause between requests (keeps 2 CI cores usable).
    pub pause: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            clients: 8,
            max_requests: 2_000_000,
            max_time: Duration::from_secs(120),
            pause: Duration::from_millis(2),
        }
    }
}

/// A running load; [`Load::stop`] ends it and returns the samples.
pub struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `limits.clients` tasks, each with its own client from
    /// `make_client` (so each holds its own keep-alive connections), all
    /// sending GET `url`.
    pub fn start(make_client: impl Fn() -> reqwest::Client, url: &str, limits: Limits) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + limits.max_time;
        let tasks = (0..limits.clients)
            .map(|client_id| {
                let (client, url, stop, samples, sent) =
                    (make_client(), url.to_string(), stop.clone(), samples.clone(), sent.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed)
                        && Instant::now() < deadline
                        && sent.fetch_add(1, Ordering::Relaxed) < limits.max_requests
                    {
                        let started = Instant::now();
                        let outcome = one(&client, &url).await;
                        let sample = Sample { client: client_id, started, took: started.elapsed(), outcome };
                        samples.lock().expect("samples lock").push(sample);
                        tokio::time::sleep(limits.pause).await;
                    }
                })
            })
            .collect();
        Load { stop, samples, tasks }
    }

    /// Samples so far (the load keeps running).
    pub fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().expect("samples lock").clone()
    }

    /// Stops every client (each finishes the request it is in) and returns
    /// all samples, in the order they completed.
    pub async fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        let samples = self.samples.lock().expect("samples lock").clone();
        Report { samples }
    }
}

async fn one(client: &reqwest::Client, url: &str) -> Outcome {
    match client.get(url).timeout(Duration::from_secs(10)).send().await {
        Ok(resp) => {
            let status = resp.status();
            match resp.bytes().await {
                Ok(_) if status.is_success() => Outcome::Ok,
                Ok(_) => Outcome::Status(status.as_u16()),
                Err(e) => Outcome::Error(format!("body: {e}")),
            }
        }
        Err(e) if e.is_connect() && refused(&e) => Outcome::Refused,
        Err(e) => Outcome::Error(format!("{e:?}").chars().take(300).collect()),
    }
}

fn refused(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = s.source();
    }
    false
}

/// What a load saw.
pub struct Report {
    pub samples: Vec<Sample>,
}

impl Report {
    pub fn sent(&self) -> usize {
        self.samples.len()
    }

    pub fn ok(&self) -> usize {
        self.samples.iter().filter(|s| s.outcome == Outcome::Ok).count()
    }

    /// Samples that did not end [`Outcome::Ok`].
    pub fn failed(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.outcome != Outcome::Ok).collect()
    }

    /// Failures counted by reason (status code, refused, error text).
    pub fn failures_by_reason(&self) -> BTreeMap<String, usize> {
        let mut by = BTreeMap::new();
        for s in self.failed() {
            let reason = match &s.outcome {
                Outcome::Ok => continue,
                Outcome::Status(c) => format!("status {c}"),
                Outcome::Refused => "refused".to_string(),
                Outcome::Error(e) => e.clone(),
            };
            *by.entry(reason).or_insert(0) += 1;
        }
        by
    }

    /// Latency percentile `p` (0..=100) over successful requests.
    pub fn percentile(&self, p: f64) -> Duration {
        let mut ok: Vec<Duration> = self.samples.iter().filter(|s| s.outcome == Outcome::Ok).map(|s| s.took).collect();
        if ok.is_empty() {
            return Duration::ZERO;
        }
        ok.sort();
        let i = ((p / 100.0) * (ok.len() - 1) as f64).round() as usize;
        ok[i.min(ok.len() - 1)]
    }

    /// One line for the test output (and the README's figures).
    pub fn summary(&self) -> String {
        format!(
            "sent {} ok {} failed {} {:?}; p50 {:?} p99 {:?}",
            self.sent(),
            self.ok(),
            self.failed().len(),
            self.failures_by_reason(),
            self.percentile(50.0),
            self.percentile(99.0)
        )
    }
}

/// Open file descriptors of process `pid` (entries of /proc/<pid>/fd).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}
