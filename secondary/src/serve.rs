//! The I/O glue: the [`EcuServer`] state machine served over DoIP on TCP and
//! over kernel ISO-TP on a CAN interface. One server (one ECU) may be served
//! on both at once; requests are handled one at a time.
//!
//! **One tester at a time.** The server's session, SecurityAccess state and
//! download belong to the tester that opened them: the [`Arbiter`] binds them
//! to that tester's link (its DoIP connection, or the CAN address pair) and
//! source address. While the ECU is out of the default session, unlocked or
//! busy, every request of another tester is answered `7F SID 22`
//! (conditionsNotCorrect) without reaching the server, so a second tester can
//! neither use the first one's unlock nor write, download or reset in the
//! middle of its programming session. The claim ends when the server is back
//! in the default session (request, S3 timeout, reset) or when the owning
//! DoIP connection closes (its session is ended as with `10 01`).

use crate::config::Config;
use crate::ecu::Ecu;
use crate::error::{Error, Result};
use secureev_uds::codec::Session;
use secureev_uds::doip::{
    self, DiagnosticNackCode, DoipFramer, GenericNackCode, Message, RoutingActivationCode,
};
use secureev_uds::security::HmacSha256Algorithm;
use secureev_uds::server::{EcuBackend, EcuServer, ServerConfig};
use std::collections::HashMap;
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

/// A tester as the server sees it: the link a request came on and the
/// tester's source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tester {
    link: Link,
    source: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// One DoIP TCP connection (numbered by the arbiter).
    Doip(u64),
    /// The ISO-TP address pair on CAN (one physical tester).
    Can,
}

impl Tester {
    /// The tester on CAN.
    pub const CAN: Tester = Tester {
        link: Link::Can,
        source: 0,
    };
}

/// Who owns the server's session and SecurityAccess state, and which DoIP
/// source addresses are routed on which connection (see the module
/// documentation). Shared by every transport of one ECU.
#[derive(Debug, Default)]
pub struct Arbiter {
    inner: std::sync::Mutex<ArbiterState>,
    /// Woken whenever a DoIP connection closes.
    closed: tokio::sync::Notify,
}

/// How long a routing activation of a source address that is active on
/// another connection waits for that connection to go away (ISO 13400-2
/// A_DoIP_Alive_Check: 500 ms). A tester that reconnects at once after
/// closing is not refused because the old socket's end was not yet seen.
pub const ALIVE_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
struct ArbiterState {
    owner: Option<Tester>,
    /// DoIP source address → the connection it is activated on.
    routes: HashMap<u16, u64>,
    next_connection: u64,
}

/// The arbiter of one ECU, shared by its transports.
pub type SharedArbiter = Arc<Arbiter>;

/// Whether the server holds state that belongs to one tester.
fn claimed<B: EcuBackend>(s: &EcuServer<B>) -> bool {
    s.session() != Session::Default || s.is_unlocked() || s.is_busy()
}

impl Arbiter {
    fn state(&self) -> std::sync::MutexGuard<'_, ArbiterState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a request of `tester` may reach `server` (called with the
    /// server locked, so that the check and the request are one step).
    fn admit<B: EcuBackend>(&self, server: &EcuServer<B>, tester: Tester) -> bool {
        let mut st = self.state();
        if !claimed(server) {
            st.owner = None;
            return true;
        }
        match st.owner {
            None => {
                st.owner = Some(tester);
                true
            }
            Some(o) => o == tester,
        }
    }

    /// After a request of `tester`: it owns what it opened.
    fn note<B: EcuBackend>(&self, server: &EcuServer<B>, tester: Tester) {
        let mut st = self.state();
        if !claimed(server) {
            st.owner = None;
        } else if st.owner.is_none() {
            st.owner = Some(tester);
        }
    }

    /// Whether `tester` owns the server now.
    fn owns(&self, tester: Tester) -> bool {
        self.state().owner == Some(tester)
    }

    fn new_connection(&self) -> u64 {
        let mut st = self.state();
        st.next_connection += 1;
        st.next_connection
    }

    /// ISO 13400-2 routing activation of `source` on `connection`, which has
    /// `current` activated already (if any). A source active on another
    /// connection is refused unless that connection closes within
    /// [`ALIVE_CHECK_TIMEOUT`].
    async fn activate(
        &self,
        connection: u64,
        current: Option<u16>,
        source: u16,
    ) -> RoutingActivationCode {
        let deadline = tokio::time::Instant::now() + ALIVE_CHECK_TIMEOUT;
        loop {
            let closed = self.closed.notified();
            let code = self.try_activate(connection, current, source);
            if code != RoutingActivationCode::SourceAddressAlreadyActive
                || tokio::time::timeout_at(deadline, closed).await.is_err()
            {
                return code;
            }
        }
    }

    fn try_activate(
        &self,
        connection: u64,
        current: Option<u16>,
        source: u16,
    ) -> RoutingActivationCode {
        let mut st = self.state();
        // ISO 13400-2 (socket handling): another source address on an
        // already activated socket is refused with 0x02.
        if current.is_some_and(|c| c != source) {
            return RoutingActivationCode::DifferentSourceAddress;
        }
        // ISO 13400-2: a source address already registered and active on a
        // different TCP_DATA socket is refused with 0x03. (The entity does not
        // probe the other socket with an alive check request; it waits
        // ALIVE_CHECK_TIMEOUT for it to close.)
        match st.routes.get(&source) {
            Some(&c) if c != connection => RoutingActivationCode::SourceAddressAlreadyActive,
            _ => {
                st.routes.insert(source, connection);
                RoutingActivationCode::Success
            }
        }
    }

    /// `connection` closed: its source address is free again.
    fn close(&self, connection: u64) {
        self.state().routes.retain(|_, c| *c != connection);
        self.closed.notify_waiters();
    }
}

/// End what `tester` left open when its link went away: wait (bounded) for a
/// request it left running, then return to the default session as `10 01`
/// would, so that its unlock and download die with its connection.
async fn end_session<B: EcuBackend + Send + 'static>(
    server: &Arc<Mutex<EcuServer<B>>>,
    arbiter: &Arbiter,
    tester: Tester,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        {
            let mut s = server.lock().await;
            if !arbiter.owns(tester) {
                return;
            }
            if !s.is_busy() || Instant::now() >= deadline {
                let _ = s.handle(&[0x10, 0x01], Instant::now());
                arbiter.note(&s, tester);
                tracing::info!(?tester, "tester gone: its session ended");
                return;
            }
            let _ = s.poll(Instant::now());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
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
    async fn start(
        server: &'a Arc<Mutex<EcuServer<B>>>,
        arbiter: &SharedArbiter,
        tester: Tester,
        request: &[u8],
    ) -> Handling<'a, B> {
        let sid = request.first().copied().unwrap_or(0);
        let (p2, repeat_every) = {
            let s = server.lock().await;
            let t = &s.config().timing;
            (t.p2 / 2, t.p2_star / 2)
        };
        let (srv, req, arb) = (server.clone(), request.to_vec(), arbiter.clone());
        let mut task = tokio::task::spawn_blocking(move || {
            let mut s = srv.blocking_lock();
            if !arb.admit(&s, tester) {
                // Another tester owns the session (see the module docs).
                return Some(vec![0x7F, sid, 0x22]);
            }
            let r = s.handle(&req, Instant::now());
            arb.note(&s, tester);
            r
        });
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
    serve_doip_with(
        listener,
        server,
        SharedArbiter::default(),
        logical_address,
        shutdown,
    )
    .await
}

/// [`serve_doip`] with the `arbiter` shared with the ECU's other transports.
pub async fn serve_doip_with(
    listener: TcpListener,
    server: SharedServer,
    arbiter: SharedArbiter,
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
                let (server, arbiter, shutdown) = (server.clone(), arbiter.clone(), shutdown.clone());
                let connection = arbiter.new_connection();
                tokio::spawn(async move {
                    let mut tester = None;
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        r = doip_connection(stream, &server, &arbiter, connection, &mut tester, logical_address) => {
                            if let Err(e) = r { tracing::warn!(%peer, "DoIP connection: {e}"); }
                        }
                    }
                    arbiter.close(connection);
                    if let Some(source) = tester {
                        let t = Tester { link: Link::Doip(connection), source };
                        end_session(&server, &arbiter, t).await;
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
    server: &SharedServer,
    arbiter: &SharedArbiter,
    connection: u64,
    tester: &mut Option<u16>,
    logical_address: u16,
) -> std::io::Result<()> {
    let mut framer = DoipFramer::default();
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
                    let code = arbiter.activate(connection, *tester, source).await;
                    stream
                        .write_all(&reply(Message::RoutingActivationResponse {
                            tester: source,
                            entity: logical_address,
                            code,
                            oem: None,
                        }))
                        .await?;
                    if code != RoutingActivationCode::Success {
                        // ISO 13400-2: after a denial for 0x02 or 0x03 the
                        // entity closes the TCP_DATA socket.
                        tracing::warn!(source, ?code, "routing activation refused");
                        return Ok(());
                    }
                    *tester = Some(source);
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
                    let nack = if *tester != Some(source) {
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
                    let who = Tester {
                        link: Link::Doip(connection),
                        source,
                    };
                    let mut h = Handling::start(server, arbiter, who, &data).await;
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
    serve_can_with(iface, isotp, server, SharedArbiter::default(), shutdown).await
}

/// [`serve_can`] with the `arbiter` shared with the ECU's other transports.
pub async fn serve_can_with(
    iface: &str,
    isotp: secureev_can::IsoTpConfig,
    server: SharedServer,
    arbiter: SharedArbiter,
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
                let mut h = Handling::start(&server, &arbiter, Tester::CAN, &pdu).await;
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
        let arb = SharedArbiter::default();
        let mut h = Handling::start(&server, &arb, Tester::CAN, &[0x10, 0x03]).await;
        assert_eq!(h.next().await.unwrap()[0], 0x50);
        assert_eq!(h.next().await, None);
        // verify-metadata (0xD000) in the extended session: the backend is busy.
        let mut h = Handling::start(&server, &arb, Tester::CAN, &[0x31, 0x01, 0xD0, 0x00]).await;
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
        let arb = SharedArbiter::default();
        let t0 = std::time::Instant::now();
        let mut h = Handling::start(&server, &arb, Tester::CAN, &[0x22, 0xF1, 0xA0]).await;
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
        let mut h = Handling::start(&server, &arb, Tester::CAN, &[0x22, 0x12, 0x34]).await;
        assert_eq!(h.next().await.unwrap(), [0x7F, 0x22, 0x31]);
        assert_eq!(h.next().await, None);
    }
}
