//! Serial console and VNC as websockets (`plain.kubevirt.io`, binary frames), bridged to the unix
//! sockets QEMU serves for the VMI. One serial client at a time: a new console takes over from
//! the old one, as virt-handler does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use actix_web::{web, HttpRequest, HttpResponse};
use converge_engine::controllers::status::{node_name, phase, RUNNING};
use converge_engine::kinds;
use converge_engine::meta;
use converge_engine::node::NodeAgent;
use converge_engine::{ApiError, ApiResult};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::state::AppState;
use crate::subresources::VmiOp;

pub const PLAIN_PROTOCOL: &str = "plain.kubevirt.io";

/// The in-process node agent, if it is the one running `vmi`.
pub fn node_for<'a>(state: &'a AppState, vmi: &Value) -> ApiResult<&'a Arc<NodeAgent>> {
    let wanted = node_name(vmi).unwrap_or("");
    match &state.node {
        Some(node) if node.node_name == wanted => Ok(node),
        _ => Err(ApiError::unavailable(format!("the node agent of node {wanted:?} is not reachable from this server"))),
    }
}

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
    if phase(&vmi) != RUNNING {
        return Err(ApiError::bad_request(format!(
            "Unable to connect to VirtualMachineInstance because phase is {} instead of Running",
            if phase(&vmi).is_empty() { "Pending" } else { phase(&vmi) }
        )));
    }
    let node = node_for(state, &vmi)?;
    let uid = meta::uid(&vmi).to_string();
    let serial = op == VmiOp::Console;
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
            "cannot reach the {} of {ns}/{name}: {e}",
            if serial { "console" } else { "VNC server" }
        ))
    })?;
    let (response, session, stream) = actix_ws::handle_with_protocols(req, payload, &[PLAIN_PROTOCOL])
        .map_err(|e| ApiError::bad_request(format!("websocket handshake: {e}")))?;
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
