//! The HTTP accept loop of `slipway server`: every connection served by
//! hyper with a header-read timeout (a client trickling its request line
//! holds no connection open past it), every request body with an idle
//! timeout (tower-http), and a bounded graceful stop. Each connection's
//! socket is a `registry::zero_copy::ZeroCopyIo`, and its requests carry
//! its `Outbox`, so blob GETs on the filesystem store go out by
//! `sendfile(2)`.
//!
//! Written over hyper-util rather than `axum::serve` because that sets no
//! timer on hyper's builder, and without one hyper cannot time a request's
//! headers.

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// How long requests may take to arrive.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From a connection's first byte of a request to the end of its
    /// headers.
    pub headers: Duration,
    /// Longest pause between two pieces of a request body (an upload that
    /// stalls this long fails; one that keeps flowing may take any time).
    pub body_idle: Duration,
}

/// How long a stop waits for requests in flight (log follows, uploads).
const DRAIN: Duration = Duration::from_secs(10);

/// Serve `app` on `listener` until `stop` resolves, then let requests in
/// flight finish for up to [`DRAIN`].
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    timeouts: Timeouts,
    stop: impl Future<Output = ()>,
) {
    let app = app.layer(RequestBodyTimeoutLayer::new(timeouts.body_idle));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.headers);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Small responses (manifests, HEADs, log pages) must not wait on
        // Nagle's algorithm and the client's delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!("TCP_NODELAY: {e}");
        }
        let outbox = registry::zero_copy::Outbox::default();
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(app.clone(), {
            let outbox = outbox.clone();
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(outbox.clone());
                req
            }
        }));
        let io = registry::zero_copy::ZeroCopyIo::new(tcp, outbox);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN:?}; stopping anyway");
    }
}
