//! A raw RESP client for tests: commands as arrays of bulk strings, replies decoded into [`R`]
//! (RESP2 and RESP3, maps flattened into arrays).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A decoded reply, enough for tests.
#[derive(Debug, PartialEq)]
pub enum R {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<R>),
    NullArray,
    /// RESP3 out-of-band data (`>`).
    Push(Vec<R>),
}

pub struct Raw {
    pub reader: BufReader<TcpStream>,
}

impl Raw {
    pub fn connect(addr: &str) -> Raw {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Raw {
            reader: BufReader::new(s),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write");
    }

    pub fn cmd(&mut self, args: &[&str]) -> R {
        self.send(&frame(args));
        self.read()
    }

    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.reader.read_line(&mut l).expect("read");
        assert!(l.ends_with("\r\n"), "incomplete line {l:?}");
        l.truncate(l.len() - 2);
        l
    }

    pub fn read(&mut self) -> R {
        let l = self.line();
        let (kind, rest) = l.split_at(1);
        match kind {
            "+" => R::Simple(rest.into()),
            "-" => R::Error(rest.into()),
            ":" => R::Int(rest.parse().expect("int")),
            "_" => R::Bulk(None),
            "$" if rest == "-1" => R::Bulk(None),
            "$" => {
                let n: usize = rest.parse().expect("len");
                let mut b = vec![0; n + 2];
                self.reader.read_exact(&mut b).expect("bulk");
                b.truncate(n);
                R::Bulk(Some(b))
            }
            "*" if rest == "-1" => R::NullArray,
            "*" | "%" => {
                let n: usize = rest.parse().expect("count");
                let n = if kind == "%" { 2 * n } else { n };
                R::Array((0..n).map(|_| self.read()).collect())
            }
            ">" => {
                let n: usize = rest.parse().expect("count");
                R::Push((0..n).map(|_| self.read()).collect())
            }
            other => panic!("unexpected reply type {other:?} in {l:?}"),
        }
    }

    /// Whether the server closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0) | Err(_))
    }
}

/// One request as RESP bytes.
pub fn frame(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

pub fn bulk(s: &str) -> R {
    R::Bulk(Some(s.as_bytes().to_vec()))
}
