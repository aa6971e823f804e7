//! A private OCI registry on loopback: Debian's `docker-registry`
//! (distribution 2.8) serving plain HTTP on a free port, its storage in
//! the test's directory, killed by pid on drop. Images are pushed from
//! OCI layout directories with `skopeo copy`.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::run_timeout;

pub const REGISTRY: &str = "/usr/bin/docker-registry";

pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Registry {
    /// Start a registry with its storage and log in `dir`; once `/v2/`
    /// answers. The port is one the kernel just handed out; should
    /// another process take it before the registry binds it, the
    /// registry exits and another port is tried.
    pub fn start(dir: &Path) -> Registry {
        fs::create_dir_all(dir).unwrap();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.join("config.yml");
            fs::write(
                &config,
                format!(
                    "version: 0.1\n\
                     log:\n  level: warn\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n\
                     http:\n  addr: {addr}\n",
                    dir.join("storage").display()
                ),
            )
            .unwrap();
            let log = fs::File::create(dir.join("registry.log")).unwrap();
            let child = Command::new(REGISTRY)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting docker-registry");
            let mut r = Registry { child, addr };
            if r.wait_ready() {
                return r;
            }
        }
        let log = fs::read_to_string(dir.join("registry.log")).unwrap_or_default();
        panic!("docker-registry never answered on a free port; its log:\n{log}");
    }

    /// Poll `GET /v2/` until it answers 200; false if the registry exits.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            if self.get_v2().is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry on {} not ready after 30 s", self.addr);
    }

    fn get_v2(&self) -> Option<String> {
        let mut s = TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    /// Push OCI layout `layout` as `NAME:TAG`; returns the reference
    /// containerd pulls (`127.0.0.1:PORT/NAME:TAG`).
    pub fn push(&self, layout: &Path, name_tag: &str) -> String {
        let reference = format!("{}/{name_tag}", self.addr);
        run_timeout(
            Command::new("skopeo")
                .args(["--insecure-policy", "copy", "--quiet"])
                .args(["--dest-tls-verify=false", "--preserve-digests"])
                .arg(format!("oci:{}", layout.display()))
                .arg(format!("docker://{reference}")),
            Duration::from_secs(600),
        )
        .ok();
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
