//! A tiny service for datom's tests: listens on a port (answering HTTP 200), records its start
//! in a file, and can exit early or ignore SIGTERM on demand. Standard library only.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut port: Option<u16> = None;
    let mut record: Option<String> = None;
    let mut exit_after: Option<u64> = None;
    let mut name = std::env::var("DATOM_SERVICE").unwrap_or_else(|_| "test".into());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()),
            "--record" => record = args.next(),
            "--exit-after-ms" => exit_after = args.next().and_then(|p| p.parse().ok()),
            "--name" => name = args.next().unwrap_or(name),
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    if let Some(path) = &record {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("record file");
        writeln!(f, "{name} start {}", std::process::id()).expect("write record");
    }
    println!("{name} started, pid {}", std::process::id());
    if let Some(ms) = exit_after {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            eprintln!("{name}: exiting on purpose after {ms} ms");
            std::process::exit(1);
        });
    }
    match port {
        Some(p) => {
            let l = TcpListener::bind(("127.0.0.1", p)).expect("bind");
            for mut s in l.incoming().flatten() {
                let mut buf = [0u8; 512];
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        }
        None => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
    }
}
