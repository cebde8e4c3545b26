//! Helpers shared by the phases: results file, environment, metrics scrape,
//! processes, perf profiles, the machine's load over a phase, and the
//! CPU-bound processes of the busy lag runs.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cm_bench::{busy_cpu_seconds, cpu_seconds, load_1min, tree_cpu_seconds};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Appends `key<TAB>value` lines to the results file and echoes them.
pub struct Results {
    path: PathBuf,
}

impl Results {
    pub fn new(path: &Path) -> Results {
        Results {
            path: path.to_path_buf(),
        }
    }

    pub fn put(&self, key: &str, value: impl std::fmt::Display) -> Result<()> {
        let value = value.to_string().replace(['\t', '\n'], " ");
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("open {}", self.path.display()))?;
        writeln!(file, "{key}\t{value}")?;
        eprintln!("  {key} = {value}");
        Ok(())
    }

    /// Stores a multi-line text (a profile) in a file beside the results
    /// and records its path.
    pub fn put_text(&self, key: &str, text: &str) -> Result<()> {
        let path = self.path.with_extension(format!("{key}.txt"));
        std::fs::write(&path, text)?;
        self.put(key, path.display())
    }
}

/// An environment variable parsed as a number, or `default`.
pub fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .replace('_', "")
            .parse()
            .with_context(|| format!("{name}={text:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// A required environment variable.
pub fn env_required(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| {
        format!("{name} is not set (scripts/bench starts the servers and sets it)")
    })
}

/// GET `http://{addr}/metrics` and return the body.
pub async fn scrape(addr: &str) -> Result<String> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .context("scrape timed out")??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        anyhow::bail!("metrics: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

/// One counter from memcached's `stats` (e.g. `evictions`).
pub async fn memcached_stat(addr: &str, name: &str) -> Result<u64> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(b"stats\r\n").await?;
        let mut text = Vec::new();
        let mut buf = vec![0_u8; 1 << 14];
        while !text.ends_with(b"END\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
        }
        anyhow::Ok(String::from_utf8_lossy(&text).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .context("memcached stats timed out")??;
    let prefix = format!("STAT {name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .with_context(|| format!("memcached stats has no {name}"))?
        .trim()
        .parse()
        .with_context(|| format!("memcached stat {name} is not a number"))
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Sends `sig` (e.g. "TERM", "INT") to `pid` with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// The newest `/usr/lib/postgresql/*/bin/NAME`, or `CM_PG_BIN/NAME`, or NAME
/// from PATH.
pub fn pg_program(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("CM_PG_BIN") {
        return Path::new(&dir).join(name);
    }
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let Some(version) = entry
                .file_name()
                .to_str()
                .and_then(|v| v.parse::<u32>().ok())
            else {
                continue;
            };
            let path = entry.path().join("bin").join(name);
            if path.exists() && best.as_ref().is_none_or(|(v, _)| version > *v) {
                best = Some((version, path));
            }
        }
    }
    best.map_or_else(|| PathBuf::from(name), |(_, path)| path)
}

/// Whether `program` runs (`program --version` exits 0).
pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `perf record` attached to a process, when perf is available and
/// CM_BENCH_PROFILE is not 0.
pub struct Profile {
    child: Child,
    data: PathBuf,
}

/// Starts profiling `pid` into a file under `work`; `None` when profiling
/// is off or perf is missing or does not start.
pub fn start_profile(pid: u32, work: &Path) -> Result<Option<Profile>> {
    if env_u64("CM_BENCH_PROFILE", 1)? == 0 || !have("perf") {
        return Ok(None);
    }
    let data = work.join(format!("perf-{pid}.data"));
    let child = Command::new("perf")
        .args(["record", "-F", "499", "-e", "cpu-clock", "-g", "-o"])
        .arg(&data)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    Ok(child.ok().map(|child| Profile { child, data }))
}

impl Profile {
    /// Stops recording and returns the top of `perf report`.
    pub fn finish(mut self) -> Result<String> {
        signal(self.child.id(), "INT");
        self.child.wait()?;
        let out = Command::new("perf")
            .args(["report", "--stdio", "--no-children", "-g", "none"])
            .args(["--percent-limit", "1.5", "--sort", "dso,symbol", "-i"])
            .arg(&self.data)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .take(30)
            .map(|l| {
                let mut words: Vec<&str> = l.split_whitespace().collect();
                while words.last() == Some(&"-") {
                    words.pop();
                }
                words.join(" ")
            })
            .collect();
        let _ = std::fs::remove_file(&self.data);
        Ok(lines.join("\n"))
    }
}

/// The machine's load over one phase: the 1-minute load average at its
/// start and end, and the CPU the machine spent in processes that are not
/// ours (busy time from `/proc/stat` minus the CPU time of the process
/// trees `roots`: this bench, its workers and CPU hogs, the test servers'
/// memcached and PostgreSQL).
pub struct PhaseLoad {
    name: String,
    roots: Vec<u32>,
    started: Instant,
    started_unix: f64,
    load: Option<f64>,
    busy: Option<f64>,
    own: f64,
}

fn read_busy() -> Option<f64> {
    busy_cpu_seconds(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn read_load() -> Option<f64> {
    load_1min(&std::fs::read_to_string("/proc/loadavg").ok()?)
}

impl PhaseLoad {
    /// Takes the start figures of phase `name` (letters, digits, `_`).
    pub fn start(name: &str, roots: &[u32]) -> PhaseLoad {
        PhaseLoad {
            name: name.to_owned(),
            roots: roots.to_vec(),
            started: Instant::now(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            load: read_load(),
            busy: read_busy(),
            own: tree_cpu_seconds(roots),
        }
    }

    /// Takes the end figures and records `phase.NAME.*`: `start_unix`,
    /// `seconds`, `load1_start`, `load1_end`, `own_cpus` and `other_cpus`
    /// (CPU seconds per second of the phase).
    pub fn finish(self, results: &Results) -> Result<()> {
        let seconds = self.started.elapsed().as_secs_f64();
        let own = tree_cpu_seconds(&self.roots) - self.own;
        let key = format!("phase.{}", self.name);
        results.put(
            &format!("{key}.start_unix"),
            format!("{:.1}", self.started_unix),
        )?;
        results.put(&format!("{key}.seconds"), format!("{seconds:.1}"))?;
        if let (Some(start), Some(end)) = (self.load, read_load()) {
            results.put(&format!("{key}.load1_start"), format!("{start:.2}"))?;
            results.put(&format!("{key}.load1_end"), format!("{end:.2}"))?;
        }
        if seconds > 0.0 {
            results.put(&format!("{key}.own_cpus"), format!("{:.2}", own / seconds))?;
            if let (Some(start), Some(end)) = (self.busy, read_busy()) {
                let other = (end - start - own).max(0.0) / seconds;
                results.put(&format!("{key}.other_cpus"), format!("{other:.2}"))?;
            }
        }
        Ok(())
    }
}

/// CPU-bound child processes (`sh -c 'while :; do :; done'`), the
/// neighbours of the busy lag runs; killed when dropped.
pub struct Hogs {
    children: Vec<Child>,
    started: Instant,
}

impl Hogs {
    /// Starts `count` of them.
    pub fn start(count: u64) -> Result<Hogs> {
        let mut hogs = Hogs {
            children: Vec::new(),
            started: Instant::now(),
        };
        for _ in 0..count {
            let child = Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start a CPU hog (sh)")?;
            hogs.children.push(child);
        }
        Ok(hogs)
    }

    /// CPU seconds the hogs have used together per second since they
    /// started (2.0: two whole CPUs).
    pub fn cpu_share(&self) -> f64 {
        let used: f64 = self
            .children
            .iter()
            .filter_map(|c| cpu_seconds(c.id()))
            .sum();
        used / self.started.elapsed().as_secs_f64().max(1e-3)
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
