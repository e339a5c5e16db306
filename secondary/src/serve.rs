//! The I/O glue: the [`EcuServer`] state machine served over DoIP on TCP and
//! over kernel ISO-TP on a CAN interface. One server (one ECU) may be served
//! on both at once; requests are handled one at a time.

use crate::config::Config;
use crate::ecu::Ecu;
use crate::error::{Error, Result};
use secureev_uds::doip::{
    self, DiagnosticNackCode, DoipFramer, GenericNackCode, Message, RoutingActivationCode,
};
use secureev_uds::security::HmacSha256Algorithm;
use secureev_uds::server::{EcuBackend, EcuServer, ServerConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// The ECU's UDS server, shared by its transports.
pub type SharedServer = Arc<Mutex<EcuServer<Ecu>>>;

/// How often the server is polled (S3, pending 0x78).
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Open the ECU of `config` (state, keys, secret) and wrap it in a UDS server.
pub fn build_server(config: &Config) -> Result<SharedServer> {
    let ecu = Ecu::open(config)?;
    let secret_path = config.in_state(&config.security_secret_file);
    let secret = crate::keys::read_secret(&secret_path)?;
    let algorithm = HmacSha256Algorithm::new(&secret).map_err(|e| Error::Key {
        path: secret_path,
        reason: e.to_string(),
    })?;
    let server_config = ServerConfig {
        max_block_length: config.max_pdu,
        max_response_len: config.max_pdu as usize,
        ..ServerConfig::default()
    };
    Ok(Arc::new(Mutex::new(EcuServer::new(
        ecu,
        server_config,
        Box::new(algorithm),
        Box::new(rand_core::OsRng),
    ))))
}

/// One request being handled. [`Handling::next`] yields each response as
/// soon as it exists — the first answer (a 0x78 when the work takes long),
/// each 0x78 repeat while the backend is busy, then the final response — so
/// the transport sends it at once. Holding a 0x78 back would let the tester's
/// P2 timer expire and make it repeat the request.
///
/// The backend may also take long inside the request itself (verify-metadata
/// checks every signature before it answers). The request therefore runs on
/// a blocking thread; if it has not answered within half of the announced
/// P2server, the transport sends `7F <SID> 78` on the server's behalf, repeats
/// it every P2*/2, and sends the answer when it comes (ISO 14229-1: a server
/// that cannot answer within P2 sends ResponsePending).
struct Handling<'a, B: EcuBackend + Send + 'static> {
    server: &'a Arc<Mutex<EcuServer<B>>>,
    sid: u8,
    first: Option<Vec<u8>>,
    running: Option<tokio::task::JoinHandle<Option<Vec<u8>>>>,
    repeat_every: Duration,
}

impl<'a, B: EcuBackend + Send + 'static> Handling<'a, B> {
    async fn start(server: &'a Arc<Mutex<EcuServer<B>>>, request: &[u8]) -> Handling<'a, B> {
        let sid = request.first().copied().unwrap_or(0);
        let (p2, repeat_every) = {
            let s = server.lock().await;
            let t = &s.config().timing;
            (t.p2 / 2, t.p2_star / 2)
        };
        let (srv, req) = (server.clone(), request.to_vec());
        let mut task =
            tokio::task::spawn_blocking(move || srv.blocking_lock().handle(&req, Instant::now()));
        let mut h = Handling {
            server,
            sid,
            first: None,
            running: None,
            repeat_every,
        };
        match tokio::time::timeout(p2, &mut task).await {
            Ok(r) => h.first = r.unwrap_or(None),
            Err(_) => {
                h.first = Some(vec![0x7F, sid, 0x78]);
                h.running = Some(task);
            }
        }
        h
    }

    /// The next response to send, or `None` when the request is done.
    async fn next(&mut self) -> Option<Vec<u8>> {
        if let Some(r) = self.first.take() {
            return Some(r);
        }
        if let Some(task) = self.running.as_mut() {
            match tokio::time::timeout(self.repeat_every, &mut *task).await {
                Err(_) => return Some(vec![0x7F, self.sid, 0x78]),
                Ok(r) => {
                    self.running = None;
                    // A pending answer of the server itself repeats our 0x78:
                    // the tester is already waiting P2*, so skip it.
                    match r.ok().flatten() {
                        Some(rsp) if rsp == [0x7F, self.sid, 0x78] => {}
                        Some(rsp) => return Some(rsp),
                        None => {}
                    }
                }
            }
        }
        loop {
            {
                let mut s = self.server.lock().await;
                if !s.is_busy() {
                    return None;
                }
                if let Some(r) = s.poll(Instant::now()) {
                    return Some(r);
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// The periodic poll (S3 timeout) of an idle server. A busy one is polled by
/// the transport that is handling its request, which sends what comes out.
async fn idle_poll(server: &SharedServer) {
    let mut s = server.lock().await;
    if !s.is_busy() {
        let _ = s.poll(Instant::now());
    }
}

/// Serve DoIP (ISO 13400-2) on `listener` as the entity with
/// `logical_address`, until `shutdown`.
pub async fn serve_doip(
    listener: TcpListener,
    server: SharedServer,
    logical_address: u16,
    shutdown: CancellationToken,
) -> Result<()> {
    let ticker = tokio::spawn(poll_loop(server.clone(), shutdown.clone()));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => {
                let (stream, peer) = r.map_err(|e| Error::Net { what: "accept".into(), error: e })?;
                tracing::info!(%peer, "DoIP connection");
                // Each UDS exchange is a small acknowledgement then a small
                // response: with Nagle's algorithm the response would wait
                // for the tester's delayed ACK (about 40 ms per request).
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::warn!(%peer, "TCP_NODELAY: {e}");
                }
                let (server, shutdown) = (server.clone(), shutdown.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        r = doip_connection(stream, server, logical_address) => {
                            if let Err(e) = r { tracing::warn!(%peer, "DoIP connection: {e}"); }
                        }
                    }
                });
            }
        }
    }
    ticker.abort();
    Ok(())
}

/// Let time pass for the server while no request arrives (S3 timeout).
async fn poll_loop(server: SharedServer, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(POLL_INTERVAL * 4);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => idle_poll(&server).await,
        }
    }
}

async fn doip_connection(
    mut stream: TcpStream,
    server: SharedServer,
    logical_address: u16,
) -> std::io::Result<()> {
    let mut framer = DoipFramer::default();
    let mut tester: Option<u16> = None;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        framer.push(&buf[..n]);
        loop {
            let (header, msg) = match framer.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    let code = e.doip_nack().unwrap_or(GenericNackCode::UnknownPayloadType);
                    stream
                        .write_all(&Message::GenericNack(code).encode(doip::VERSION_2012))
                        .await?;
                    if code.closes_socket() {
                        return Ok(());
                    }
                    continue;
                }
            };
            let version = if header.version == doip::VERSION_ANY {
                doip::VERSION_2012
            } else {
                header.version
            };
            let reply = |m: Message| m.encode(version);
            match msg {
                Message::RoutingActivationRequest { source, .. } => {
                    tester = Some(source);
                    stream
                        .write_all(&reply(Message::RoutingActivationResponse {
                            tester: source,
                            entity: logical_address,
                            code: RoutingActivationCode::Success,
                            oem: None,
                        }))
                        .await?;
                }
                Message::AliveCheckRequest => {
                    stream
                        .write_all(&reply(Message::AliveCheckResponse {
                            source: logical_address,
                        }))
                        .await?;
                }
                Message::DiagnosticMessage {
                    source,
                    target,
                    data,
                } => {
                    let nack = if tester != Some(source) {
                        Some(DiagnosticNackCode::InvalidSourceAddress)
                    } else if target != logical_address {
                        Some(DiagnosticNackCode::UnknownTargetAddress)
                    } else {
                        None
                    };
                    let previous = data[..data.len().min(8)].to_vec();
                    if let Some(code) = nack {
                        stream
                            .write_all(&reply(Message::DiagnosticNack {
                                source: logical_address,
                                target: source,
                                code,
                                previous,
                            }))
                            .await?;
                        continue;
                    }
                    stream
                        .write_all(&reply(Message::DiagnosticAck {
                            source: logical_address,
                            target: source,
                            code: 0,
                            previous,
                        }))
                        .await?;
                    let mut h = Handling::start(&server, &data).await;
                    while let Some(rsp) = h.next().await {
                        stream
                            .write_all(&reply(Message::DiagnosticMessage {
                                source: logical_address,
                                target: source,
                                data: rsp,
                            }))
                            .await?;
                    }
                }
                other => tracing::debug!(?other, "DoIP message ignored"),
            }
        }
    }
}

/// Serve UDS over kernel ISO-TP on `iface` until `shutdown`. Fails with
/// [`Error::Can`] (`NoCanSupport`) on a kernel without `AF_CAN`.
pub async fn serve_can(
    iface: &str,
    isotp: secureev_can::IsoTpConfig,
    server: SharedServer,
    shutdown: CancellationToken,
) -> Result<()> {
    let sock = secureev_can::IsoTpSocket::open(iface, isotp)?;
    tracing::info!(iface, "serving UDS on ISO-TP");
    let mut tick = tokio::time::interval(POLL_INTERVAL * 4);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => idle_poll(&server).await,
            r = sock.recv_vec() => {
                let pdu = match r {
                    Ok(p) => p,
                    Err(e) if e.is_transfer_error() => {
                        tracing::warn!(iface, "ISO-TP receive: {e}");
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let mut h = Handling::start(&server, &pdu).await;
                while let Some(rsp) = h.next().await {
                    if let Err(e) = sock.send(&rsp).await {
                        tracing::warn!(iface, "ISO-TP send: {e}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secureev_uds::codec::RoutineControlType;
    use secureev_uds::nrc::Nrc;
    use secureev_uds::server::{Context, DownloadRequest, ImageSink, Progress};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A backend whose routines stay busy until `done` is set.
    struct Slow {
        done: Arc<AtomicBool>,
    }
    impl ImageSink for Slow {
        fn begin(&mut self, _: &DownloadRequest) -> std::result::Result<(), Nrc> {
            Err(Nrc::ConditionsNotCorrect)
        }
        fn write(&mut self, _: u64, _: &[u8]) -> std::result::Result<(), Nrc> {
            Err(Nrc::ConditionsNotCorrect)
        }
        fn finish(&mut self) -> std::result::Result<Progress<Vec<u8>>, Nrc> {
            Err(Nrc::ConditionsNotCorrect)
        }
    }
    impl EcuBackend for Slow {
        fn read_did(&mut self, did: u16, _: &Context) -> std::result::Result<Vec<u8>, Nrc> {
            if did == 0xF1A0 {
                // Work done inside the request itself, far beyond P2.
                std::thread::sleep(Duration::from_millis(400));
                return Ok(b"slow".to_vec());
            }
            Err(Nrc::RequestOutOfRange)
        }
        fn write_did(&mut self, _: u16, _: &[u8], _: &Context) -> std::result::Result<(), Nrc> {
            Err(Nrc::RequestOutOfRange)
        }
        fn routine(
            &mut self,
            _: RoutineControlType,
            _: u16,
            _: &[u8],
            _: &Context,
        ) -> std::result::Result<Progress<Vec<u8>>, Nrc> {
            Ok(if self.done.load(Ordering::SeqCst) {
                Progress::Ready(vec![0])
            } else {
                Progress::Busy
            })
        }
    }

    /// Regression: the 0x78 used to be sent only together with the final
    /// response, after the work; a tester's P2 timer expired meanwhile and
    /// it repeated the request. The 0x78 must come out while the work runs.
    #[tokio::test]
    async fn response_pending_goes_out_before_the_work_ends() {
        let done = Arc::new(AtomicBool::new(false));
        let mut config = ServerConfig::default();
        config.timing.p2_star = Duration::from_millis(200);
        let server = Arc::new(Mutex::new(EcuServer::new(
            Slow { done: done.clone() },
            config,
            Box::new(HmacSha256Algorithm::new(&[7; 32]).unwrap()),
            Box::new(rand_core::OsRng),
        )));
        let mut h = Handling::start(&server, &[0x10, 0x03]).await;
        assert_eq!(h.next().await.unwrap()[0], 0x50);
        assert_eq!(h.next().await, None);
        // verify-metadata (0xD000) in the extended session: the backend is busy.
        let mut h = Handling::start(&server, &[0x31, 0x01, 0xD0, 0x00]).await;
        let first = tokio::time::timeout(Duration::from_secs(10), h.next())
            .await
            .expect("the 0x78 while the work runs, not after it")
            .unwrap();
        assert_eq!(first, [0x7F, 0x31, 0x78]);
        // Still busy: the 0x78 is repeated every P2*/2, nothing final yet.
        let repeat = tokio::time::timeout(Duration::from_secs(10), h.next())
            .await
            .expect("a repeated 0x78 within P2*")
            .unwrap();
        assert_eq!(repeat, [0x7F, 0x31, 0x78]);
        done.store(true, Ordering::SeqCst);
        assert_eq!(h.next().await.unwrap()[..4], [0x71, 0x01, 0xD0, 0x00]);
        assert_eq!(h.next().await, None);
    }

    /// Work inside the request (no `Progress::Busy`) that outlasts P2: the
    /// transport answers 0x78 on the server's behalf first, then the answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_request_gets_a_response_pending_within_p2() {
        let mut config = ServerConfig::default();
        config.timing.p2_star = Duration::from_millis(200);
        let server = Arc::new(Mutex::new(EcuServer::new(
            Slow {
                done: Arc::new(AtomicBool::new(true)),
            },
            config,
            Box::new(HmacSha256Algorithm::new(&[7; 32]).unwrap()),
            Box::new(rand_core::OsRng),
        )));
        let t0 = std::time::Instant::now();
        let mut h = Handling::start(&server, &[0x22, 0xF1, 0xA0]).await;
        let first = h.next().await.unwrap();
        let first_after = t0.elapsed();
        assert_eq!(first, [0x7F, 0x22, 0x78]);
        assert!(first_after < Duration::from_millis(400), "{first_after:?}");
        let mut rest = Vec::new();
        while let Some(r) = h.next().await {
            rest.push(r);
        }
        let last = rest.pop().expect("the final answer");
        assert_eq!(last, b"\x62\xF1\xA0slow");
        assert!(rest.iter().all(|r| r == &[0x7F, 0x22, 0x78]), "{rest:02X?}");
        // Fast requests are answered directly, without a 0x78.
        let mut h = Handling::start(&server, &[0x22, 0x12, 0x34]).await;
        assert_eq!(h.next().await.unwrap(), [0x7F, 0x22, 0x31]);
        assert_eq!(h.next().await, None);
    }
}
