//! Fuzz the UDS and DoIP decoders and the ECU-side state machine with
//! attacker-controlled bytes (anything on the CAN bus or the DoIP socket).
//!
//! The first input byte picks a mode:
//! - 0: one buffer as a UDS request and as a UDS response; a request that
//!   decodes must encode back to the same bytes' meaning (decode ∘ encode is a
//!   fixed point).
//! - 1: the buffer, cut into PDUs at 0x00 bytes, fed to an [`EcuServer`] in
//!   programming session, unlocked, with a download active; time advances per
//!   PDU. Must not panic; every response must decode.
//! - 2: the buffer, cut into arbitrary reads, to a [`DoipFramer`] with a small
//!   payload limit. Must not panic or buffer without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secureev_uds::codec::{Request, Response, RoutineControlType};
use secureev_uds::doip::DoipFramer;
use secureev_uds::security::{HmacSha256Algorithm, SecurityAlgorithm};
use secureev_uds::server::{
    Context, DownloadRequest, EcuBackend, EcuServer, ImageSink, Progress, ServerConfig,
};
use secureev_uds::Nrc;
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"fuzzing secret, at least 16 bytes";

struct Sink(u64);
impl ImageSink for Sink {
    fn begin(&mut self, d: &DownloadRequest) -> Result<(), Nrc> {
        if d.size > 1 << 20 {
            return Err(Nrc::RequestOutOfRange);
        }
        self.0 = 0;
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Nrc> {
        assert_eq!(offset, self.0, "writes are sequential and never repeated");
        self.0 += data.len() as u64;
        Ok(())
    }
    fn finish(&mut self) -> Result<Progress<Vec<u8>>, Nrc> {
        Ok(Progress::Ready(vec![]))
    }
}
impl EcuBackend for Sink {
    fn read_did(&mut self, d: u16, _: &Context) -> Result<Vec<u8>, Nrc> {
        if d == 0xF1A0 {
            Ok(b"FUZZ".to_vec())
        } else {
            Err(Nrc::RequestOutOfRange)
        }
    }
    fn write_did(&mut self, _: u16, _: &[u8], _: &Context) -> Result<(), Nrc> {
        Ok(())
    }
    fn routine(
        &mut self,
        _: RoutineControlType,
        r: u16,
        _: &[u8],
        _: &Context,
    ) -> Result<Progress<Vec<u8>>, Nrc> {
        if r == 0xD001 {
            Ok(Progress::Busy)
        } else {
            Ok(Progress::Ready(vec![0]))
        }
    }
}

struct Counter(u64);
impl rand_core::RngCore for Counter {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = (self.next_u64() >> 56) as u8;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(req) = Request::decode(rest) {
                assert_eq!(Request::decode(&req.encode()).as_ref(), Ok(&req));
            }
            if let Ok(rsp) = Response::decode(rest) {
                let _ = Response::decode(&rsp.encode());
            }
        }
        1 => {
            let alg = HmacSha256Algorithm::new(SECRET).expect("secret");
            let mut server = EcuServer::new(
                Sink(0),
                ServerConfig::default(),
                Box::new(alg.clone()),
                Box::new(Counter(1)),
            );
            let mut now = Instant::now();
            // Unlock and open a download so the fuzzer reaches TransferData.
            server.handle(&[0x10, 0x02], now);
            let seed = server.handle(&[0x27, 0x11], now).expect("seed");
            let mut key = vec![0x27, 0x12];
            key.extend(alg.compute_key(0x11, &seed[2..]));
            server.handle(&key, now);
            server.handle(&[0x34, 0x00, 0x44, 0, 0, 0, 0, 0, 0, 0x10, 0x00], now);
            for pdu in rest.split(|b| *b == 0x00) {
                now += Duration::from_millis(u64::from(pdu.first().copied().unwrap_or(0)) * 40);
                for out in server.handle(pdu, now).into_iter().chain(server.poll(now)) {
                    Response::decode(&out).expect("the server only sends valid responses");
                }
            }
        }
        _ => {
            let mut framer = DoipFramer::new(256);
            let mut input = rest;
            while !input.is_empty() {
                let n = usize::from(input[0] % 64) + 1;
                let (chunk, tail) = input.split_at(n.min(input.len()));
                input = tail;
                framer.push(chunk);
                while let Ok(Some(_)) | Err(_) = framer.next_message() {
                    if framer.buffered() == 0 {
                        break;
                    }
                }
                assert!(framer.buffered() <= 8 + 256 + 64);
            }
        }
    }
});
