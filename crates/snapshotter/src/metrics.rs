//! Counters for operators: per-stage Apply timings and snapshot operation
//! counts, as structured log lines and as a Prometheus text endpoint.
//!
//! Counters only (no histograms): rates and averages per stage follow from
//! `_seconds_total / _total`, and the per-layer detail is in the log line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::differ::Timings;

#[derive(Default)]
struct State {
    /// result → count
    applies: BTreeMap<String, u64>,
    /// stage → seconds
    stages: BTreeMap<&'static str, f64>,
    blob_bytes: u64,
    tar_bytes: u64,
    /// (operation, result) → (count, seconds)
    ops: BTreeMap<(&'static str, String), (u64, f64)>,
}

#[derive(Default)]
pub struct Metrics {
    state: Mutex<State>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    /// A successful Apply.
    pub fn applied(&self, t: &Timings) {
        self.with(|s| {
            *s.applies.entry("ok".into()).or_default() += 1;
            for (stage, _, d) in stages(t) {
                *s.stages.entry(stage).or_default() += d.as_secs_f64();
            }
            s.blob_bytes += t.blob_bytes;
            s.tar_bytes += t.tar_bytes;
        });
    }

    /// An Apply that failed (`result` is the gRPC code's name).
    pub fn apply_failed(&self, result: &str) {
        self.with(|s| *s.applies.entry(result.to_string()).or_default() += 1);
    }

    /// A snapshot operation and how long it took.
    pub fn op(&self, op: &'static str, result: &str, took: Duration) {
        self.with(|s| {
            let e = s.ops.entry((op, result.to_string())).or_default();
            e.0 += 1;
            e.1 += took.as_secs_f64();
        });
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        self.with(|s| {
            let mut out = String::new();
            let p = "erofs_snapshotter";
            let _ = writeln!(
                out,
                "# HELP {p}_apply_total Layers the differ applied, by result.\n# TYPE {p}_apply_total counter"
            );
            for (result, n) in &s.applies {
                let _ = writeln!(out, "{p}_apply_total{{result=\"{result}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "# HELP {p}_apply_stage_seconds_total Time successful applies spent per stage.\n# TYPE {p}_apply_stage_seconds_total counter"
            );
            for (stage, secs) in &s.stages {
                let _ = writeln!(
                    out,
                    "{p}_apply_stage_seconds_total{{stage=\"{stage}\"}} {secs:.6}"
                );
            }
            let _ = writeln!(
                out,
                "# HELP {p}_apply_blob_bytes_total Compressed layer bytes read.\n# TYPE {p}_apply_blob_bytes_total counter\n{p}_apply_blob_bytes_total {}",
                s.blob_bytes
            );
            let _ = writeln!(
                out,
                "# HELP {p}_apply_tar_bytes_total Uncompressed tar bytes converted.\n# TYPE {p}_apply_tar_bytes_total counter\n{p}_apply_tar_bytes_total {}",
                s.tar_bytes
            );
            let _ = writeln!(
                out,
                "# HELP {p}_operations_total Snapshot operations, by operation and result.\n# TYPE {p}_operations_total counter"
            );
            for ((op, result), (n, _)) in &s.ops {
                let _ = writeln!(
                    out,
                    "{p}_operations_total{{operation=\"{op}\",result=\"{result}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "# HELP {p}_operation_seconds_total Time spent in snapshot operations.\n# TYPE {p}_operation_seconds_total counter"
            );
            for ((op, result), (_, secs)) in &s.ops {
                let _ = writeln!(
                    out,
                    "{p}_operation_seconds_total{{operation=\"{op}\",result=\"{result}\"}} {secs:.6}"
                );
            }
            out
        })
    }

    /// Serve `/metrics` on `listener` until the task is dropped. A minimal
    /// HTTP/1.0-style responder: one request per connection, which is all
    /// a Prometheus scraper needs.
    pub async fn serve(self: std::sync::Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let metrics = self.clone();
            tokio::spawn(async move {
                let mut req = Vec::with_capacity(1024);
                let mut buf = [0u8; 1024];
                // Headers end with an empty line; 8 KiB is plenty for a GET.
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let response = if req.starts_with(b"GET /metrics ") {
                    let body = metrics.render();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    }
}

/// Each stage's metric label, log key and time.
fn stages(t: &Timings) -> [(&'static str, &'static str, Duration); 6] {
    [
        ("read", "read_ms", t.read),
        ("hash", "hash_ms", t.hash),
        ("inflate", "inflate_ms", t.inflate),
        ("convert", "convert_ms", t.convert),
        ("fsync", "fsync_ms", t.fsync),
        ("total", "total_ms", t.total),
    ]
}

/// One structured log line (logfmt) on standard error: `ts`, `msg`, then
/// the fields in order. Values with spaces, quotes or `=` are quoted.
pub fn log(msg: &str, fields: &[(&str, String)]) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut line = format!("ts={}.{:03}", now.as_secs(), now.subsec_millis());
    for (k, v) in std::iter::once(&("msg", msg.to_string())).chain(fields) {
        let needs_quotes = v.is_empty() || v.contains([' ', '"', '=', '\n']);
        if needs_quotes {
            let _ = write!(line, " {k}={v:?}");
        } else {
            let _ = write!(line, " {k}={v}");
        }
    }
    eprintln!("{line}");
}

/// A duration as log lines show it: milliseconds, one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// The log fields of one Apply, in milliseconds.
pub fn apply_fields(t: &Timings) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("blob_bytes", t.blob_bytes.to_string()),
        ("tar_bytes", t.tar_bytes.to_string()),
        ("entries", t.entries.to_string()),
    ];
    for (_, key, d) in stages(t) {
        f.push((key, ms(d)));
    }
    f
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn serves_metrics_over_http() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let m = std::sync::Arc::new(Metrics::default());
        m.op("prepare", "ok", Duration::from_millis(1));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(m.clone().serve(listener));
        let get = |path: &'static str| async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(
            ok.contains(
                "erofs_snapshotter_operations_total{operation=\"prepare\",result=\"ok\"} 1"
            ),
            "{ok}"
        );
        let body = ok.split("\r\n\r\n").nth(1).unwrap();
        let len: usize = ok
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(body.len(), len);
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
        server.abort();
    }

    #[test]
    fn renders_counters() {
        let m = Metrics::default();
        m.applied(&Timings {
            read: Duration::from_millis(5),
            total: Duration::from_millis(20),
            blob_bytes: 100,
            tar_bytes: 1000,
            ..Default::default()
        });
        m.apply_failed("InvalidArgument");
        m.op("commit", "ok", Duration::from_millis(3));
        let text = m.render();
        for line in [
            "erofs_snapshotter_apply_total{result=\"ok\"} 1",
            "erofs_snapshotter_apply_total{result=\"InvalidArgument\"} 1",
            "erofs_snapshotter_apply_stage_seconds_total{stage=\"read\"} 0.005000",
            "erofs_snapshotter_apply_stage_seconds_total{stage=\"total\"} 0.020000",
            "erofs_snapshotter_apply_blob_bytes_total 100",
            "erofs_snapshotter_apply_tar_bytes_total 1000",
            "erofs_snapshotter_operations_total{operation=\"commit\",result=\"ok\"} 1",
            "erofs_snapshotter_operation_seconds_total{operation=\"commit\",result=\"ok\"} 0.003000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
