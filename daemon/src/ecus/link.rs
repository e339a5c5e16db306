//! Links that move whole UDS PDUs to one ECU and back: DoIP over TCP and
//! kernel ISO-TP over CAN, and the connectors that open them.

use secureev_uds::doip::{self, DoipFramer, Message, RoutingActivationCode};
use std::future::Future;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The Primary's DoIP tester logical address (`docs/secondary-protocol.md` §1).
pub const DEFAULT_TESTER_ADDRESS: u16 = 0x0E00;

/// How long to wait for a TCP connection and the routing activation.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A way to move whole UDS PDUs to one ECU and back.
pub trait UdsLink: Send {
    /// Send one request PDU.
    fn send(&mut self, pdu: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// The next response PDU, `None` when none arrived within `timeout`.
    fn recv(
        &mut self,
        timeout: Duration,
    ) -> impl Future<Output = io::Result<Option<Vec<u8>>>> + Send;
    /// Largest PDU the link carries.
    fn max_pdu(&self) -> usize;
}

/// Opens [`UdsLink`]s to one ECU.
pub trait Connector: Send + Sync + 'static {
    /// The link type.
    type Link: UdsLink + 'static;
    /// Open a link.
    fn connect(&self) -> impl Future<Output = io::Result<Self::Link>> + Send;
    /// Where the ECU is, for messages.
    fn describe(&self) -> String;
}

/// UDS over DoIP (ISO 13400-2) on one TCP connection, after routing
/// activation.
#[derive(Debug)]
pub struct DoipLink {
    stream: TcpStream,
    framer: DoipFramer,
    tester: u16,
    ecu: u16,
    buf: Vec<u8>,
}

impl DoipLink {
    /// Connect to `address` and activate routing from `tester` to `ecu`.
    pub async fn connect(address: &str, tester: u16, ecu: u16) -> io::Result<Self> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out"))??;
        stream.set_nodelay(true)?;
        let mut link = DoipLink {
            stream,
            framer: DoipFramer::default(),
            tester,
            ecu,
            buf: vec![0; 16 * 1024],
        };
        link.write(Message::RoutingActivationRequest {
            source: tester,
            activation_type: 0,
            oem: None,
        })
        .await?;
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        loop {
            match link.read_until(deadline).await? {
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no routing activation response",
                    ))
                }
                Some(Message::RoutingActivationResponse { code, entity, .. }) => {
                    if code != RoutingActivationCode::Success {
                        return Err(io::Error::other(format!(
                            "routing activation refused: {code:?}"
                        )));
                    }
                    if entity != ecu {
                        tracing::debug!(entity, ecu, "DoIP entity serves another address");
                    }
                    return Ok(link);
                }
                Some(other) => tracing::debug!(?other, "DoIP message before routing activation"),
            }
        }
    }

    async fn write(&mut self, m: Message) -> io::Result<()> {
        self.stream.write_all(&m.encode(doip::VERSION_2012)).await
    }

    /// The next DoIP message, `None` at the deadline.
    async fn read_until(&mut self, deadline: tokio::time::Instant) -> io::Result<Option<Message>> {
        loop {
            match self.framer.next_message() {
                Ok(Some((_, m))) => return Ok(Some(m)),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let read = self.stream.read(&mut self.buf);
            let n = match tokio::time::timeout_at(deadline, read).await {
                Err(_) => return Ok(None),
                Ok(r) => r?,
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "DoIP entity closed the connection",
                ));
            }
            self.framer.push(&self.buf[..n]);
        }
    }
}

impl UdsLink for DoipLink {
    async fn send(&mut self, pdu: &[u8]) -> io::Result<()> {
        self.write(Message::DiagnosticMessage {
            source: self.tester,
            target: self.ecu,
            data: pdu.to_vec(),
        })
        .await
    }

    async fn recv(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.read_until(deadline).await? {
                None => return Ok(None),
                Some(Message::DiagnosticMessage { source, data, .. }) if source == self.ecu => {
                    return Ok(Some(data))
                }
                Some(Message::DiagnosticAck { .. }) => {}
                Some(Message::DiagnosticNack { code, .. }) => {
                    return Err(io::Error::other(format!(
                        "diagnostic message refused: {code:?}"
                    )))
                }
                Some(Message::GenericNack(code)) => {
                    return Err(io::Error::other(format!("DoIP header refused: {code:?}")))
                }
                Some(Message::AliveCheckRequest) => {
                    let source = self.tester;
                    self.write(Message::AliveCheckResponse { source }).await?;
                }
                Some(other) => tracing::debug!(?other, "DoIP message ignored"),
            }
        }
    }

    fn max_pdu(&self) -> usize {
        // TCP carries any UDS message; the ECU's capabilities set the limit.
        usize::MAX
    }
}

/// Opens [`DoipLink`]s.
#[derive(Debug, Clone)]
pub struct DoipConnector {
    /// `host:port` of the DoIP entity.
    pub address: String,
    /// Our tester logical address.
    pub tester: u16,
    /// The ECU's logical address.
    pub ecu: u16,
}

impl Connector for DoipConnector {
    type Link = DoipLink;
    async fn connect(&self) -> io::Result<DoipLink> {
        DoipLink::connect(&self.address, self.tester, self.ecu).await
    }
    fn describe(&self) -> String {
        format!("DoIP {} (0x{:04X})", self.address, self.ecu)
    }
}

/// UDS over kernel ISO-TP.
#[derive(Debug)]
pub struct CanLink {
    socket: secureev_can::IsoTpSocket,
}

impl UdsLink for CanLink {
    async fn send(&mut self, pdu: &[u8]) -> io::Result<()> {
        self.socket.send(pdu).await.map_err(io::Error::other)
    }

    async fn recv(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        match tokio::time::timeout(timeout, self.socket.recv_vec()).await {
            Err(_) => Ok(None),
            Ok(Ok(pdu)) => Ok(Some(pdu)),
            // A broken transfer is a lost response: the client retries.
            Ok(Err(e)) if e.is_transfer_error() => {
                tracing::warn!(iface = self.socket.iface(), "ISO-TP receive: {e}");
                Ok(None)
            }
            Ok(Err(e)) => Err(io::Error::other(e)),
        }
    }

    fn max_pdu(&self) -> usize {
        self.socket.max_pdu()
    }
}

/// Opens [`CanLink`]s (the socket is opened at the first use, so a kernel
/// without `AF_CAN` fails that ECU's update, not the daemon's start).
#[derive(Debug, Clone)]
pub struct CanConnector {
    /// SocketCAN interface.
    pub interface: String,
    /// ISO-TP settings (tx/rx ids, FD).
    pub isotp: secureev_can::IsoTpConfig,
}

impl Connector for CanConnector {
    type Link = CanLink;
    async fn connect(&self) -> io::Result<CanLink> {
        let socket = secureev_can::IsoTpSocket::open(&self.interface, self.isotp.clone())
            .map_err(io::Error::other)?;
        Ok(CanLink { socket })
    }
    fn describe(&self) -> String {
        format!(
            "ISO-TP {} 0x{:X}/0x{:X}",
            self.interface, self.isotp.tx_id, self.isotp.rx_id
        )
    }
}
