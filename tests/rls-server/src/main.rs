//! meshguard-test-rls --listen 127.0.0.1:0 --limits limits.json
//!                    [--redis redis://127.0.0.1:PORT] [--delay-ms N]

use meshguard_test_rls::{limits, server::Server, service::Service};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

const USAGE: &str = "usage: meshguard-test-rls --listen 127.0.0.1:0 --limits limits.json \
[--redis redis://127.0.0.1:PORT] [--delay-ms N]

An Envoy rate limit service (gRPC envoy.service.ratelimit.v3.RateLimitService,
HTTP/2 cleartext) on limitador. Prints `listening on ADDR` once bound.
  --listen ADDR    address to listen on (default 127.0.0.1:0: a free port)
  --limits FILE    JSON list of limits (see tests/rls-server/README.md)
  --redis URL      count in this Redis (shared by every server using it);
                   default: in memory, this process only
  --delay-ms N     wait N ms before answering each call";

struct Args {
    listen: SocketAddr,
    limits: String,
    redis: Option<String>,
    delay: Duration,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let mut limits = None;
    let mut redis = None;
    let mut delay = Duration::ZERO;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                listen = v.parse().map_err(|e| format!("--listen {v:?}: {e}"))?;
            }
            "--limits" => limits = Some(value()?),
            "--redis" => redis = Some(value()?),
            "--delay-ms" => {
                let v = value()?;
                let ms: u64 = v.parse().map_err(|e| format!("--delay-ms {v:?}: {e}"))?;
                delay = Duration::from_millis(ms);
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(Args {
        listen,
        limits: limits.ok_or("--limits is required")?,
        redis,
        delay,
    })
}

async fn run(args: Args) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.limits)
        .map_err(|e| format!("reading {}: {e}", args.limits))?;
    let limits = limits::parse(&text).map_err(|e| format!("{}: {e}", args.limits))?;
    let count = limits.len();
    let service = match &args.redis {
        None => Service::in_memory(limits),
        Some(url) => Service::redis(url, limits).await?,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("binding {}: {e}", args.listen))?;
    eprintln!(
        "rls: {count} limit(s) from {}, counters in {}, delay {} ms",
        args.limits,
        service.storage_name(),
        args.delay.as_millis()
    );
    let server = Arc::new(Server {
        service: Arc::new(service),
        delay: args.delay,
    });
    server
        .run(listener)
        .await
        .map_err(|e| format!("serving: {e}"))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("meshguard-test-rls: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshguard-test-rls: tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshguard-test-rls: {e}");
            ExitCode::FAILURE
        }
    }
}
