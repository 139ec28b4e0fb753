//! TCP throughput over the loopback interface: a listener thread receives what the client
//! sends and answers with a hash of it, proving every byte arrived.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Instant;

use crate::rng::splitmix64;
use crate::{Line, Result, WorkloadError};

pub const DEFAULT_SIZE: u64 = 1 << 30;
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Params {
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub params: Params,
    pub secs: f64,
    pub checksum: u64,
}

impl Outcome {
    pub fn line(&self) -> Line {
        Line::new("net", self.checksum, self.secs)
            .param_num("size", self.params.size)
            .metric(
                "net",
                self.params.size as f64 / 1e6 / self.secs.max(1e-9),
                "MB/s",
                true,
            )
    }
}

fn hash_chunk(h: u64, buf: &[u8]) -> u64 {
    let mut h = h;
    let mut words = buf.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).rotate_left(7);
    }
    for &b in words.remainder() {
        h = (h ^ b as u64).rotate_left(3);
    }
    h
}

pub fn run(p: &Params) -> Result<Outcome> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(WorkloadError::io("listen on 127.0.0.1 (is loopback up?)"))?;
    let addr = listener
        .local_addr()
        .map_err(WorkloadError::io("local address"))?;
    let server = std::thread::spawn(move || -> std::io::Result<(u64, u64)> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; CHUNK];
        let (mut n, mut h) = (0u64, 0u64);
        // Hash in whole chunks as sent; a short read is completed first.
        let mut fill = 0usize;
        loop {
            let r = s.read(&mut buf[fill..])?;
            if r == 0 {
                break;
            }
            fill += r;
            n += r as u64;
            if fill == CHUNK {
                h = hash_chunk(h, &buf);
                fill = 0;
            }
        }
        h = hash_chunk(h, &buf[..fill]);
        s.write_all(&h.to_le_bytes())?;
        Ok((n, h))
    });
    let pattern: Vec<u8> = (0..CHUNK)
        .map(|j| (splitmix64(j as u64) >> 8) as u8)
        .collect();
    let start = Instant::now();
    let mut c =
        TcpStream::connect(addr).map_err(WorkloadError::io(format!("connect to {addr}")))?;
    let mut left = p.size;
    let mut expect = 0u64;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        c.write_all(&pattern[..n])
            .map_err(WorkloadError::io("send over loopback"))?;
        expect = hash_chunk(expect, &pattern[..n]);
        left -= n as u64;
    }
    c.shutdown(Shutdown::Write)
        .map_err(WorkloadError::io("shut down the sending side"))?;
    let mut answer = [0u8; 8];
    c.read_exact(&mut answer)
        .map_err(WorkloadError::io("read the receiver's hash"))?;
    let secs = start.elapsed().as_secs_f64();
    let (received, h) = server
        .join()
        .expect("receiver thread panicked")
        .map_err(WorkloadError::io("receive over loopback"))?;
    if received != p.size || h != expect || u64::from_le_bytes(answer) != expect {
        return Err(WorkloadError::Check {
            what: format!(
                "received {received} of {} bytes or a different hash",
                p.size
            ),
        });
    }
    Ok(Outcome {
        params: p.clone(),
        secs,
        checksum: splitmix64(expect ^ p.size),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_arrives() {
        // Not a multiple of the chunk size, so a partial last chunk is exercised.
        let p = Params {
            size: 3 * 65536 + 1234,
        };
        let a = run(&p).unwrap();
        assert_eq!(a.checksum, run(&p).unwrap().checksum);
        assert_ne!(
            a.checksum,
            run(&Params { size: p.size - 1 }).unwrap().checksum
        );
    }
}
