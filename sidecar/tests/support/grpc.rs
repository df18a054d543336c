//! A real gRPC service (tonic, h2c) and client for the tests: bidirectional
//! streaming chat whose replies carry the app's name; the message `fail`
//! ends the call with NOT_FOUND (a status that can only travel in trailers
//! once messages were sent).

use std::convert::Infallible;
use std::net::SocketAddr;

use http::uri::PathAndQuery;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::server::StreamingService;
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

/// The one message type.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
}

/// The method's path.
pub const CHAT: &str = "/isthmus.test.Chat/Chat";

#[derive(Clone)]
struct Chat {
    app: String,
}

impl StreamingService<Msg> for Chat {
    type Response = Msg;
    type ResponseStream = ReceiverStream<Result<Msg, Status>>;
    type Future = std::future::Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<Msg>>) -> Self::Future {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let app = self.app.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = incoming.message().await {
                let reply = if m.text == "fail" {
                    Err(Status::not_found("no such thing"))
                } else {
                    Ok(Msg {
                        text: format!("{app}: {}", m.text),
                    })
                };
                let last = reply.is_err();
                if tx.send(reply).await.is_err() || last {
                    return;
                }
            }
        });
        std::future::ready(Ok(Response::new(ReceiverStream::new(rx))))
    }
}

/// A gRPC app (h2c only); stopped on drop.
pub struct GrpcApp {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl GrpcApp {
    pub async fn start(addr: SocketAddr, app: &str) -> GrpcApp {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let chat = Chat { app: app.into() };
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let chat = chat.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let chat = chat.clone();
                        async move {
                            assert_eq!(req.uri().path(), CHAT);
                            let mut grpc =
                                tonic::server::Grpc::new(ProstCodec::<Msg, Msg>::default());
                            Ok::<_, Infallible>(grpc.streaming(chat, req).await)
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        GrpcApp { addr, task }
    }
}

impl Drop for GrpcApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A chat call through `via` (h2c) to `authority`: sends each of `texts`
/// only after the answer to the previous one arrived, so the call streams
/// both ways at once. Returns the replies and how the call ended.
pub async fn chat(via: SocketAddr, authority: &str, texts: &[&str]) -> (Vec<String>, Status) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{via}"))
        .unwrap()
        .origin(format!("http://{authority}").parse().unwrap())
        .connect()
        .await
        .expect("h2c connection to the sidecar");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let (tx, rx) = mpsc::channel::<Msg>(1);
    let mut pending = texts.iter();
    if let Some(first) = pending.next() {
        tx.send(Msg {
            text: (*first).into(),
        })
        .await
        .unwrap();
    }
    let response = grpc
        .streaming(
            Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(CHAT),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await;
    let mut stream = match response {
        Ok(r) => r.into_inner(),
        Err(status) => return (Vec::new(), status),
    };
    let mut replies = Vec::new();
    let mut tx = Some(tx);
    loop {
        match stream.message().await {
            Ok(Some(m)) => {
                replies.push(m.text);
                match pending.next() {
                    Some(t) => {
                        let sender = tx.as_ref().expect("still sending");
                        sender.send(Msg { text: (*t).into() }).await.unwrap();
                    }
                    // Half-close: the server ends the call when it sees the end.
                    None => tx = None,
                }
            }
            Ok(None) => return (replies, Status::ok("")),
            Err(s) => return (replies, s),
        }
    }
}
