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
use secureev_uds::server::{EcuServer, ServerConfig};
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

/// Handle one request; returns the responses to send (the first answer, then
/// the final one after 0x78 keep-alives while the backend is busy).
async fn handle(server: &SharedServer, request: &[u8]) -> Vec<Vec<u8>> {
    let mut s = server.lock().await;
    let mut out: Vec<Vec<u8>> = s.handle(request, Instant::now()).into_iter().collect();
    while s.is_busy() {
        tokio::time::sleep(POLL_INTERVAL).await;
        if let Some(r) = s.poll(Instant::now()) {
            out.push(r);
        }
    }
    out
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
            _ = tick.tick() => { server.lock().await.poll(Instant::now()); }
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
                    for rsp in handle(&server, &data).await {
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
            _ = tick.tick() => { server.lock().await.poll(Instant::now()); }
            r = sock.recv_vec() => {
                let pdu = match r {
                    Ok(p) => p,
                    Err(e) if e.is_transfer_error() => {
                        tracing::warn!(iface, "ISO-TP receive: {e}");
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                for rsp in handle(&server, &pdu).await {
                    if let Err(e) = sock.send(&rsp).await {
                        tracing::warn!(iface, "ISO-TP send: {e}");
                    }
                }
            }
        }
    }
}
