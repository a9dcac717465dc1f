//! A Contentstack stand-in whose answers a test scripts per user and per attempt, and whose
//! held answers go out only when the test releases them: tests that need answers in a given
//! order wait on events, not on delays.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};

use serde_json::Value;

/// How one request is answered.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    /// At once, with this status and, if given, this `Retry-After` in seconds.
    Now(u16, Option<u64>),
    /// With this status, once the test calls `release`.
    Held(u16),
}

/// Which answer the `n`th request (from 0) for `user` gets.
pub type Script = fn(user: &str, n: usize) -> Answer;

pub struct ScriptedEdge {
    pub uri: String,
    shared: Arc<Shared>,
}

struct Shared {
    script: Script,
    /// (user, body) per request, in arrival order.
    received: Mutex<Vec<(String, Value)>>,
    released: (Mutex<bool>, Condvar),
}

impl ScriptedEdge {
    pub fn start(script: Script) -> ScriptedEdge {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap());
        let shared =
            Arc::new(Shared { script, received: Mutex::default(), released: (Mutex::new(false), Condvar::new()) });
        let serving = shared.clone();
        std::thread::spawn(move || {
            for socket in listener.incoming() {
                let Ok(socket) = socket else { return };
                let shared = serving.clone();
                std::thread::spawn(move || {
                    let _ = serve(socket, &shared);
                });
            }
        });
        ScriptedEdge { uri, shared }
    }

    /// Lets every held answer go.
    pub fn release(&self) {
        let (released, changed) = &self.shared.released;
        *released.lock().unwrap() = true;
        changed.notify_all();
    }

    /// (user, body) of every request so far, in arrival order.
    pub fn received(&self) -> Vec<(String, Value)> {
        self.shared.received.lock().unwrap().clone()
    }
}

/// Answers one request after another on a keep-alive connection, until it closes.
fn serve(socket: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut write = socket.try_clone()?;
    let mut read = BufReader::new(socket);
    loop {
        let (mut user, mut length, mut line) = (String::new(), 0usize, String::new());
        loop {
            line.clear();
            if read.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "x-cs-personalize-user-uid" => user = value.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        read.read_exact(&mut body)?;
        let n = {
            let mut received = shared.received.lock().unwrap();
            let n = received.iter().filter(|(u, _)| *u == user).count();
            received.push((user.clone(), serde_json::from_slice(&body).unwrap_or(Value::Null)));
            n
        };
        let (status, retry_after) = match (shared.script)(&user, n) {
            Answer::Now(status, retry_after) => (status, retry_after),
            Answer::Held(status) => {
                let (released, changed) = &shared.released;
                let _released = changed.wait_while(released.lock().unwrap(), |r| !*r).unwrap();
                (status, None)
            }
        };
        let retry_after = retry_after.map(|s| format!("retry-after: {s}\r\n")).unwrap_or_default();
        write!(write, "HTTP/1.1 {status} X\r\ncontent-length: 2\r\n{retry_after}\r\n{{}}")?;
        write.flush()?;
    }
}
