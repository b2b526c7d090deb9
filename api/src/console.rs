//! Serial console and VNC as websockets (`plain.kubevirt.io`, binary frames), bridged to the unix
//! sockets QEMU serves for the VMI — here when this server runs the VMI's node, else relayed to
//! the websocket that node's agent serves (`nodes::server`). One serial client at a time: a new
//! console takes over from the old one, as virt-handler does.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use actix_web::{web, HttpRequest, HttpResponse};
use converge_engine::controllers::status::{phase, RUNNING};
use converge_engine::kinds;
use converge_engine::meta;
use converge_engine::node::NodeAgent;
use converge_engine::{ApiError, ApiResult};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::nodes::link::{self, NodeLink, NodeSocket, NodeTarget, RemoteNode};
use crate::state::AppState;
use crate::subresources::VmiOp;

pub const PLAIN_PROTOCOL: &str = "plain.kubevirt.io";

/// The console connection currently holding each VMI's serial port.
fn holders() -> &'static Mutex<HashMap<String, oneshot::Sender<()>>> {
    static HOLDERS: OnceLock<Mutex<HashMap<String, oneshot::Sender<()>>>> = OnceLock::new();
    HOLDERS.get_or_init(|| Mutex::new(HashMap::new()))
}

pub async fn open(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    ns: &str,
    name: &str,
    op: VmiOp,
) -> ApiResult<HttpResponse> {
    let vmi = state
        .store
        .get(&kinds::VIRTUAL_MACHINE_INSTANCE, ns, name)
        .await?
        .ok_or_else(|| ApiError::not_found("kubevirt.io", "virtualmachineinstances", name))?;
    connectable(&vmi)?;
    let uid = meta::uid(&vmi).to_string();
    match link::locate(state, &vmi).await? {
        NodeTarget::Local(node) => {
            attach(req, payload, &node, &uid, op == VmiOp::Console, &format!("{ns}/{name}")).await
        }
        NodeTarget::Remote(remote) => relay_to_node(req, payload, &state.node_link, &remote, &vmi, op).await,
    }
}

/// A console or VNC connection is made to a running guest only (virt-api's words otherwise).
pub fn connectable(vmi: &Value) -> ApiResult<()> {
    if phase(vmi) == RUNNING {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "Unable to connect to VirtualMachineInstance because phase is {} instead of Running",
        if phase(vmi).is_empty() { "Pending" } else { phase(vmi) }
    )))
}

/// Opens the guest's console or VNC on its node's agent and relays the client's websocket to it.
pub async fn relay_to_node(
    req: &HttpRequest,
    payload: web::Payload,
    node_link: &NodeLink,
    remote: &RemoteNode,
    vmi: &Value,
    op: VmiOp,
) -> ApiResult<HttpResponse> {
    let upstream = node_link.websocket(remote, &crate::subresources::node_op_path(vmi, op)).await?;
    let (response, session, stream) = handshake(req, payload)?;
    actix_web::rt::spawn(relay(session, stream, upstream));
    Ok(response)
}

fn handshake(
    req: &HttpRequest,
    payload: web::Payload,
) -> ApiResult<(HttpResponse, actix_ws::Session, actix_ws::MessageStream)> {
    actix_ws::handle_with_protocols(req, payload, &[PLAIN_PROTOCOL])
        .map_err(|e| ApiError::bad_request(format!("websocket handshake: {e}")))
}

/// Bridges a websocket to the serial port (`serial`) or VNC server of the guest `uid` this
/// agent runs: the server's own node, or — in `converge node` — a request the server relayed.
pub async fn attach(
    req: &HttpRequest,
    payload: web::Payload,
    node: &NodeAgent,
    uid: &str,
    serial: bool,
    shown: &str,
) -> ApiResult<HttpResponse> {
    let uid = uid.to_string();
    let (take_over, taken) = oneshot::channel::<()>();
    if serial {
        // Close the previous console first: QEMU serves one client on the serial socket.
        if let Some(previous) = holders().lock().ok().and_then(|mut h| h.remove(&uid)) {
            let _ = previous.send(());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let path = if serial { node.serial_socket(&uid) } else { node.vnc_socket(&uid) };
    let socket = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
        ApiError::unavailable(format!(
            "cannot reach the {} of {shown}: {e}",
            if serial { "console" } else { "VNC server" }
        ))
    })?;
    let (response, session, stream) = handshake(req, payload)?;
    // Only the serial port is exclusive; a VNC bridge is never taken over.
    let taken = if serial {
        if let Ok(mut h) = holders().lock() {
            h.insert(uid.clone(), take_over);
        }
        Some(taken)
    } else {
        None
    };
    actix_web::rt::spawn(async move {
        bridge(session, stream, socket, taken).await;
        // Gone: forget this connection unless a newer one already took its place.
        if serial {
            if let Ok(mut h) = holders().lock() {
                if h.get(&uid).is_some_and(|tx| tx.is_closed()) {
                    h.remove(&uid);
                }
            }
        }
    });
    Ok(response)
}

async fn bridge(
    mut session: actix_ws::Session,
    mut stream: actix_ws::MessageStream,
    socket: tokio::net::UnixStream,
    taken: Option<oneshot::Receiver<()>>,
) {
    let taken = async move {
        match taken {
            // A dropped sender means the holder entry was replaced: taken over as well.
            Some(rx) => {
                let _ = rx.await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(taken);
    let (mut from_guest, mut to_guest) = socket.into_split();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            _ = &mut taken => {
                let _ = session.close(Some(actix_ws::CloseReason {
                    code: actix_ws::CloseCode::Normal,
                    description: Some("another console connection took over".into()),
                })).await;
                return;
            }
            read = from_guest.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if session.binary(buf[..n].to_vec()).await.is_err() {
                        return;
                    }
                }
            },
            msg = stream.recv() => match msg {
                Some(Ok(actix_ws::Message::Binary(bytes))) => {
                    if to_guest.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Some(Ok(actix_ws::Message::Text(text))) => {
                    if to_guest.write_all(text.as_bytes()).await.is_err() {
                        break;
                    }
                }
                Some(Ok(actix_ws::Message::Ping(p))) => {
                    let _ = session.pong(&p).await;
                }
                Some(Ok(actix_ws::Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = session.close(None).await;
}

/// Relays a client's websocket to the one the VMI's node agent serves: frames as they come,
/// either side's close ends both.
async fn relay(mut session: actix_ws::Session, mut stream: actix_ws::MessageStream, upstream: NodeSocket) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Upstream;
    let (mut to_node, mut from_node) = upstream.split();
    loop {
        tokio::select! {
            msg = from_node.next() => match msg {
                Some(Ok(Upstream::Binary(bytes))) => {
                    if session.binary(bytes).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Upstream::Text(text))) => {
                    if session.text(text.as_str().to_string()).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Upstream::Close(frame))) => {
                    let reason = frame.map(|f| actix_ws::CloseReason {
                        code: u16::from(f.code).into(),
                        description: Some(f.reason.as_str().to_string()),
                    });
                    let _ = session.close(reason).await;
                    let _ = to_node.close().await;
                    return;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => break,
            },
            msg = stream.recv() => match msg {
                Some(Ok(actix_ws::Message::Binary(bytes))) => {
                    if to_node.send(Upstream::Binary(bytes)).await.is_err() {
                        break;
                    }
                }
                Some(Ok(actix_ws::Message::Text(text))) => {
                    if to_node.send(Upstream::Text(text.to_string().into())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(actix_ws::Message::Ping(p))) => {
                    let _ = session.pong(&p).await;
                }
                Some(Ok(actix_ws::Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = to_node.close().await;
    let _ = session.close(None).await;
}
