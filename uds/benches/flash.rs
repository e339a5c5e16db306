//! In-memory flash of 1 MiB through the UDS state machines (no transport): the
//! protocol overhead per MiB, client and server together.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use secureev_uds::client::{Action, ClientConfig, FlashClient, FlashPlan, Step};
use secureev_uds::codec::{RoutineControlType, Session};
use secureev_uds::security::HmacSha256Algorithm;
use secureev_uds::server::{
    Context, DownloadRequest, EcuBackend, EcuServer, ImageSink, Progress, ServerConfig,
};
use secureev_uds::Nrc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"benchmark secret, 32 bytes long!";

#[derive(Default)]
struct Flash {
    mem: Vec<u8>,
}

impl ImageSink for Flash {
    fn begin(&mut self, d: &DownloadRequest) -> Result<(), Nrc> {
        self.mem.clear();
        self.mem.reserve(d.size as usize);
        Ok(())
    }
    fn write(&mut self, _: u64, data: &[u8]) -> Result<(), Nrc> {
        self.mem.extend_from_slice(data);
        Ok(())
    }
    fn finish(&mut self) -> Result<Progress<Vec<u8>>, Nrc> {
        Ok(Progress::Ready(vec![]))
    }
}

impl EcuBackend for Flash {
    fn read_did(&mut self, _: u16, _: &Context) -> Result<Vec<u8>, Nrc> {
        Err(Nrc::RequestOutOfRange)
    }
    fn write_did(&mut self, _: u16, _: &[u8], _: &Context) -> Result<(), Nrc> {
        Ok(())
    }
    fn routine(
        &mut self,
        _: RoutineControlType,
        _: u16,
        _: &[u8],
        _: &Context,
    ) -> Result<Progress<Vec<u8>>, Nrc> {
        Ok(Progress::Ready(vec![0]))
    }
}

fn flash(image: &Arc<[u8]>, block: u32) -> usize {
    let mut server = EcuServer::new(
        Flash::default(),
        ServerConfig {
            max_block_length: block,
            ..ServerConfig::default()
        },
        Box::new(HmacSha256Algorithm::new(SECRET).expect("secret")),
        Box::new(rand_core::OsRng),
    );
    let plan = FlashPlan::new()
        .step(Step::Session(Session::Programming))
        .step(Step::Unlock { level: 0x11 })
        .step(Step::Download {
            address: 0,
            data_format: 0,
            source: Box::new(image.clone()),
        });
    let config = ClientConfig {
        max_pdu: block as usize,
        ..ClientConfig::default()
    };
    let mut client = FlashClient::new(
        plan,
        Box::new(HmacSha256Algorithm::new(SECRET).expect("secret")),
        config,
    )
    .expect("plan");
    let mut now = Instant::now();
    let mut pending = None;
    loop {
        match client.next_action(now) {
            Action::Send(req) => {
                now += Duration::from_micros(1);
                pending = server.handle(&req, now);
            }
            Action::Wait(_) => {
                let rsp = pending.take().expect("the in-memory server always answers");
                client.handle_response(&rsp, now).expect("flash");
            }
            Action::Done => break,
        }
    }
    server.backend().mem.len()
}

fn bench(c: &mut Criterion) {
    let image: Arc<[u8]> = (0..1usize << 20)
        .map(|i| (i * 31) as u8)
        .collect::<Vec<_>>()
        .into();
    let mut g = c.benchmark_group("flash_1mib");
    g.throughput(Throughput::Bytes(image.len() as u64));
    g.sample_size(20);
    for block in [4095u32, 64 * 1024] {
        g.bench_with_input(BenchmarkId::from_parameter(block), &block, |b, &block| {
            b.iter(|| assert_eq!(flash(&image, block), image.len()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
