//! Real processes for the tests: redis-server and the built server binary.

#![allow(dead_code)]

use meshguard_test_rls::grpc::Client;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A fresh directory under cargo's per-test scratch directory.
pub fn workdir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the work directory");
    dir
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// redis-server on 127.0.0.1, killed on drop.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut redis = Redis {
            port: free_port(),
            dir: workdir("redis"),
            child: None,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`pause = true`) or SIGCONT: a Redis that hangs.
    pub fn pause(&self, pause: bool) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let signal = if pause { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([signal, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {signal} {pid}");
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::File::create(self.dir.join("redis.log")).expect("redis log");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(log.try_clone().expect("redis log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): run `make rls`, which installs it")
            });
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} not answering PING:\n{}",
            self.port,
            std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
        );
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server binary, killed on drop; its stderr is in `log()`.
pub struct Rls {
    pub addr: SocketAddr,
    child: Child,
    log_path: PathBuf,
}

impl Rls {
    pub fn start(limits: &str, redis: Option<&str>, extra: &[&str]) -> Rls {
        let dir = workdir("rls");
        let limits_path = dir.join("limits.json");
        std::fs::write(&limits_path, limits).expect("writing limits.json");
        let log_path = dir.join("rls.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshguard-test-rls"));
        cmd.args(["--listen", "127.0.0.1:0", "--limits"])
            .arg(&limits_path)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log_path).expect("rls log"));
        if let Some(url) = redis {
            cmd.args(["--redis", url]);
        }
        let mut child = cmd.spawn().expect("starting meshguard-test-rls");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "meshguard-test-rls printed {line:?}, not `listening on ADDR`:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        };
        Rls {
            addr: addr.parse().expect("an address"),
            child,
            log_path,
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await.expect("connecting")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Rls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- meshguard-test-rls log ({}):\n{}",
                self.addr,
                self.log()
            );
        }
    }
}
