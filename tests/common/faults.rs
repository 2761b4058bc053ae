//! Misbehaving servers on loopback, for the back-end failure tests: a port nobody listens
//! on, a server that hangs up at once, one that answers every request with a fixed reply,
//! and a proxy that holds every answer of a real server back for a while.
//!
//! These stand in for failures that a healthy real server cannot be made to show on
//! demand (silence, slowness, a 500). Every other failure in those tests is produced by the
//! real server itself: a sealed OpenBao, a token without a policy, a PostgreSQL role
//! without rights, Prometheus without its lifecycle API.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// A loopback port that nothing listens on (bound once, then released).
pub fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// What a [`FaultServer`] does with each connection it accepts.
#[derive(Clone)]
pub enum Behaviour {
    /// Closes the connection at once, before a byte is exchanged.
    HangUp,
    /// Sends `greeting` (possibly empty), then answers every read with `reply`; an empty
    /// reply means the server never answers.
    Answer { greeting: Vec<u8>, reply: Vec<u8> },
    /// Answers every Redis command (each RESP array the client sends) with `reply`.
    Redis { reply: Vec<u8> },
    /// Sends one HTTP response to every request and closes the connection.
    Http { status: u16, body: String },
    /// Forwards to `upstream`, holding back every chunk of its answers by `delay`.
    Delay { upstream: u16, delay: Duration },
    /// Forwards to `upstream` at once, keeping a copy of everything the client sent.
    Relay {
        upstream: u16,
        sent: Arc<std::sync::Mutex<Vec<u8>>>,
    },
}

/// A loopback server that misbehaves as told, until dropped.
pub struct FaultServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FaultServer {
    pub fn start(behaviour: Behaviour) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let behaviour = behaviour.clone();
                        let stopping = stopping.clone();
                        std::thread::spawn(move || serve(stream, behaviour, stopping));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FaultServer {
            port,
            stop,
            thread: Some(thread),
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut stream: TcpStream, behaviour: Behaviour, stop: Arc<AtomicBool>) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    match behaviour {
        Behaviour::HangUp => {
            let _ = stream.shutdown(Shutdown::Both);
        }
        Behaviour::Answer { greeting, reply } => {
            let _ = stream.write_all(&greeting);
            let mut buffer = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                match stream.read(&mut buffer) {
                    Ok(0) => return,
                    Ok(_) if !reply.is_empty() => {
                        if stream.write_all(&reply).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) if is_timeout(&error) => {}
                    Err(_) => return,
                }
            }
        }
        Behaviour::Redis { reply } => {
            let mut buffer = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                match stream.read(&mut buffer) {
                    Ok(0) => return,
                    Ok(n) => {
                        // Pipelined commands arrive together: one reply for each.
                        let commands = buffer[..n]
                            .split(|&b| b == b'\n')
                            .filter(|line| line.starts_with(b"*"))
                            .count();
                        for _ in 0..commands {
                            if stream.write_all(&reply).is_err() {
                                return;
                            }
                        }
                    }
                    Err(error) if is_timeout(&error) => {}
                    Err(_) => return,
                }
            }
        }
        Behaviour::Http { status, body } => {
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) => return,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                    Err(error) if is_timeout(&error) && !stop.load(Ordering::Relaxed) => {}
                    Err(_) => return,
                }
            }
            let response = format!(
                "HTTP/1.1 {status} Fault\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
            let _ = stream.shutdown(Shutdown::Both);
        }
        Behaviour::Delay { upstream, delay } => relay(stream, upstream, delay, None),
        Behaviour::Relay { upstream, sent } => relay(stream, upstream, Duration::ZERO, Some(sent)),
    }
}

/// Copies between the client and `upstream`, delaying each chunk of the answers and, with
/// `sent`, recording what the client sent.
fn relay(
    stream: TcpStream,
    upstream: u16,
    delay: Duration,
    sent: Option<Arc<std::sync::Mutex<Vec<u8>>>>,
) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let _ = stream.set_read_timeout(None);
    let (mut to_server, mut from_client) = (server.try_clone().unwrap(), stream);
    let mut to_client = from_client.try_clone().unwrap();
    let mut from_server = server;
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16384];
        loop {
            match from_client.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(sent) = &sent {
                        sent.lock().unwrap().extend_from_slice(&buffer[..n]);
                    }
                    if to_server.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_server.shutdown(Shutdown::Write);
    });
    let mut buffer = [0u8; 16384];
    loop {
        match from_server.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                std::thread::sleep(delay);
                if to_client.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to_client.shutdown(Shutdown::Write);
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}
