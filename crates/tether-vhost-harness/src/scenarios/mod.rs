//! Conformance scenarios for vhost-user-vsock backends, each run on a fresh backend
//! process: plain functions that pass (with a detail line) or fail (with the reason and the
//! backend's stderr), timed, and a table of them for one or two backends.

mod basic;
mod malformed;
mod scale;
mod session;
pub mod util;

use crate::backend::{Backend, BackendProcess, StderrLog};
use crate::guest::{Guest, GuestOptions};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// A scenario failure: what went wrong, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail(pub String);

impl<E: std::error::Error> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(e.to_string())
    }
}

/// What a scenario body returns: a detail line on success.
pub type Check = Result<String, Fail>;

/// Fails with a formatted reason unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::scenarios::Fail(format!($($fmt)+)));
        }
    };
}
pub(crate) use ensure;

/// Knobs shared by every scenario.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Guest setup for scenarios that do not need a particular one.
    pub guest: GuestOptions,
    /// Bytes moved each way by the data checks.
    pub data_bytes: usize,
    /// Concurrent connections in the scale scenarios (Firecracker's limit is 1023).
    pub connections: usize,
    /// How many connections the bound probe opens at most looking for a refusal.
    pub limit_probe: usize,
    /// Bound on waiting for the backend's socket and for handshakes.
    pub timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            guest: GuestOptions {
                io_timeout: Duration::from_secs(5),
                ..GuestOptions::default()
            },
            data_bytes: 1 << 20,
            connections: 1023,
            limit_probe: 1100,
            timeout: Duration::from_secs(2),
        }
    }
}

/// What a scenario body gets: the backend template, the settings, and a way to start
/// backends and guests whose stderr ends up in the report if the scenario fails.
pub struct Ctx<'a> {
    /// The backend under test.
    pub spec: &'a Backend,
    /// Shared knobs.
    pub settings: &'a Settings,
    logs: Vec<StderrLog>,
}

impl Ctx<'_> {
    /// A fresh backend process.
    pub fn spawn(&mut self) -> Result<BackendProcess, Fail> {
        let p = self.spec.spawn()?;
        self.logs.push(p.stderr_log());
        Ok(p)
    }

    /// A guest on `backend` with the default options.
    pub fn guest(&self, backend: &BackendProcess) -> Result<Guest, Fail> {
        self.guest_with(backend, self.settings.guest.clone())
    }

    /// A guest on `backend` with `options`; waits for the hybrid socket too.
    pub fn guest_with(
        &self,
        backend: &BackendProcess,
        options: GuestOptions,
    ) -> Result<Guest, Fail> {
        let guest = Guest::start(backend.socket_path(), options)?;
        wait_for_path(backend.uds_path(), self.settings.timeout * 2)?;
        Ok(guest)
    }

    /// A fresh backend and a guest on it.
    pub fn setup(&mut self) -> Result<(BackendProcess, Guest), Fail> {
        let backend = self.spawn()?;
        let guest = self.guest(&backend)?;
        Ok((backend, guest))
    }
}

/// Waits until `path` exists (a backend creates its hybrid socket when it likes).
fn wait_for_path(path: &std::path::Path, timeout: Duration) -> Result<(), Fail> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        ensure!(
            Instant::now() < deadline,
            "the backend did not create {} within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// A named scenario.
#[derive(Clone, Copy)]
pub struct Scenario {
    /// Short name, unique.
    pub name: &'static str,
    /// What it checks, one line.
    pub about: &'static str,
    /// The body.
    pub run: fn(&mut Ctx<'_>) -> Check,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// The outcome of one scenario on one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioResult {
    /// The scenario's name.
    pub name: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// The detail line (on failure: the reason, then the backend's stderr tail).
    pub detail: String,
    /// How long it took.
    pub elapsed: Duration,
}

/// Every scenario, in report order.
pub fn all() -> Vec<Scenario> {
    let mut v = basic::scenarios();
    v.extend(scale::scenarios());
    v.extend(malformed::scenarios());
    v.extend(session::scenarios());
    v
}

/// The scenario called `name`.
pub fn by_name(name: &str) -> Option<Scenario> {
    all().into_iter().find(|s| s.name == name)
}

/// Runs one scenario against `spec`.
pub fn run(scenario: &Scenario, spec: &Backend, settings: &Settings) -> ScenarioResult {
    let mut ctx = Ctx {
        spec,
        settings,
        logs: Vec::new(),
    };
    let start = Instant::now();
    let outcome = (scenario.run)(&mut ctx);
    let elapsed = start.elapsed();
    let (passed, detail) = match outcome {
        Ok(detail) => (true, detail),
        Err(Fail(reason)) => (false, with_stderr(reason, &ctx.logs)),
    };
    ScenarioResult {
        name: scenario.name,
        passed,
        detail,
        elapsed,
    }
}

fn with_stderr(reason: String, logs: &[StderrLog]) -> String {
    let tail: Vec<String> = logs
        .iter()
        .map(StderrLog::text)
        .filter(|t| !t.trim().is_empty())
        .collect();
    if tail.is_empty() {
        return reason;
    }
    let joined = tail.join("\n");
    let lines: Vec<&str> = joined.lines().collect();
    let last = &lines[lines.len().saturating_sub(5)..];
    format!("{reason}; backend stderr: {}", last.join(" | "))
}

/// Results of every scenario for one backend.
#[derive(Clone, Debug)]
pub struct ScenarioTable {
    /// The backend's name.
    pub backend: String,
    /// One result per scenario, in order.
    pub results: Vec<ScenarioResult>,
}

impl ScenarioTable {
    /// Number of passed scenarios.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }

    /// The result of the scenario called `name`.
    pub fn get(&self, name: &str) -> Option<&ScenarioResult> {
        self.results.iter().find(|r| r.name == name)
    }
}

/// Runs `scenarios` against `spec`, calling `progress` after each.
pub fn run_some(
    scenarios: &[Scenario],
    spec: &Backend,
    settings: &Settings,
    mut progress: impl FnMut(&ScenarioResult),
) -> ScenarioTable {
    let results = scenarios
        .iter()
        .map(|s| {
            let r = run(s, spec, settings);
            progress(&r);
            r
        })
        .collect();
    ScenarioTable {
        backend: spec.name().to_owned(),
        results,
    }
}

/// Runs every scenario against `spec`.
pub fn run_all(spec: &Backend, settings: &Settings) -> ScenarioTable {
    run_some(&all(), spec, settings, |_| {})
}

fn verdict(r: Option<&ScenarioResult>) -> String {
    match r {
        Some(r) if r.passed => format!("pass {:>9}", util::ms(r.elapsed)),
        Some(r) => format!("FAIL {:>9}", util::ms(r.elapsed)),
        None => "-".into(),
    }
}

/// Formats one or more tables side by side: a verdict grid, then every detail line.
pub fn format_tables(tables: &[&ScenarioTable]) -> String {
    let mut names: Vec<&'static str> = Vec::new();
    for t in tables {
        for r in &t.results {
            if !names.contains(&r.name) {
                names.push(r.name);
            }
        }
    }
    let width = names.iter().map(|n| n.len()).max().unwrap_or(8).max(8);
    let col = tables
        .iter()
        .map(|t| t.backend.len())
        .max()
        .unwrap_or(0)
        .max(16);
    let mut out = String::new();
    let _ = write!(out, "{:width$}", "scenario");
    for t in tables {
        let _ = write!(out, "  {:col$}", t.backend);
    }
    out.push('\n');
    for name in &names {
        let _ = write!(out, "{name:width$}");
        for t in tables {
            let _ = write!(out, "  {:col$}", verdict(t.get(name)));
        }
        out.push('\n');
    }
    let _ = write!(out, "{:width$}", "passed");
    for t in tables {
        let _ = write!(
            out,
            "  {:col$}",
            format!("{}/{}", t.passed(), t.results.len())
        );
    }
    out.push_str("\n\ndetails:\n");
    for name in &names {
        let _ = writeln!(out, "{name}:");
        for t in tables {
            if let Some(r) = t.get(name) {
                let mark = if r.passed { "pass" } else { "FAIL" };
                let _ = writeln!(out, "  [{}] {mark}: {}", t.backend, r.detail);
            }
        }
    }
    out
}

/// Formats two backends' tables side by side.
pub fn format_side_by_side(a: &ScenarioTable, b: &ScenarioTable) -> String {
    format_tables(&[a, b])
}
