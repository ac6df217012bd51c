//! Batch authorization's cost: a list of 100 resources decided by one batch (JSON on the admin
//! port, and gRPC beside `Check`) against the same 100 decisions as single checks through
//! Envoy's native ext_authz (the `native_ext_authz` scenario of the same run: an opaque token
//! on a privileged route, its introspection cached). The batch's resources fall under a
//! privileged rule too, so both establish the caller by the same tier's rules; they span four
//! tenants, of which the token carries two (half allowed, half denied).
//!
//! Reported per item: the server's CPU (its process's user+system time over the run, divided
//! by the items decided) and latency (a whole batch, against 100 single checks one after the
//! other).

use crate::cpu_seconds;
use crate::load::closed_loop_calls;
use ext_authz_server::batch_api::pb;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use std::time::Duration;

/// Resources per batch.
pub const ITEMS: usize = 100;
/// The batch secret the bench's server is configured with.
pub const BATCH_TOKEN: &str = "bench-batch-token-0123456789";

/// The server configuration the batch needs (appended to the bench server's).
pub fn server_yaml() -> String {
    format!(
        "batch_token: \"{BATCH_TOKEN}\"\nresources:\n  rules:\n    - {{type: order, actions: [read], tier: privileged, require: {{scopes: [admin]}}, tenant_claim: tenant}}\n"
    )
}

/// One transport's run.
#[derive(Debug, Clone, Default)]
pub struct BatchRun {
    pub batches: u64,
    pub errors: u64,
    /// Server CPU per item decided, µs.
    pub server_cpu_us_per_item: f64,
    /// A whole batch's latency, µs.
    pub p50_us: u64,
    pub p99_us: u64,
}

/// Both transports.
#[derive(Debug, Clone, Default)]
pub struct BatchCost {
    pub items: usize,
    pub json: BatchRun,
    pub grpc: BatchRun,
}

fn resources() -> Vec<(String, String)> {
    let tenants = ["acme", "globex", "initech", "umbrella"];
    (0..ITEMS)
        .map(|i| (format!("o-{i}"), tenants[i % tenants.len()].to_owned()))
        .collect()
}

/// Runs `connections` callers for `duration` on each transport.
pub async fn run(
    grpc_port: u16,
    admin_port: u16,
    server_pid: u32,
    token: &str,
    connections: usize,
    duration: Duration,
) -> BatchCost {
    let body = json!({
        "token": token,
        "action": "read",
        "resources": resources().iter().map(|(id, tenant)| json!({"type": "order", "id": id, "tenant": tenant})).collect::<Vec<_>>(),
    })
    .to_string();
    let url = format!("http://127.0.0.1:{admin_port}/authorize/batch");
    let json = measure(server_pid, connections, duration, move |_| {
        let (url, body) = (url.clone(), body.clone());
        async move { post(&url, body).await }
    })
    .await;
    let request = pb::BatchCheckRequest {
        token: token.to_owned(),
        context: String::new(),
        action: "read".into(),
        resources: resources()
            .into_iter()
            .map(|(id, tenant)| pb::Resource {
                r#type: "order".into(),
                id,
                tenant: Some(tenant),
                owner: None,
                attributes: Default::default(),
            })
            .collect(),
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc_port}"))
        .ok()
        .map(|e| e.connect_lazy());
    let grpc = match channel {
        Some(channel) => {
            measure(server_pid, connections, duration, move |_| {
                let (channel, request) = (channel.clone(), request.clone());
                async move { grpc_call(channel, request).await }
            })
            .await
        }
        None => BatchRun::default(),
    };
    BatchCost {
        items: ITEMS,
        json,
        grpc,
    }
}

/// Closed loop of `call` on `connections` tasks; the server's CPU per item.
async fn measure<F, Fut>(
    server_pid: u32,
    connections: usize,
    duration: Duration,
    call: F,
) -> BatchRun
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    // Warm: the token introspected, connections open.
    for _ in 0..3 {
        call(0).await;
    }
    let cpu0 = cpu_seconds(server_pid);
    let total = closed_loop_calls(connections, duration, move |i| {
        let answered = call(i);
        async move {
            if answered.await {
                Ok(200)
            } else {
                Err(())
            }
        }
    })
    .await;
    let cpu_us = (cpu_seconds(server_pid) - cpu0) * 1e6;
    BatchRun {
        batches: total.requests,
        errors: total.errors,
        server_cpu_us_per_item: cpu_us / (total.requests.max(1) as f64 * ITEMS as f64),
        p50_us: total.percentile_us(0.5),
        p99_us: total.percentile_us(0.99),
    }
}

async fn post(url: &str, body: String) -> bool {
    thread_local! {
        static CLIENT: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
    }
    let client = CLIENT.with(Clone::clone);
    let Ok(request) = hyper::Request::post(url)
        .header("authorization", format!("Bearer {BATCH_TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
    else {
        return false;
    };
    match client.request(request).await {
        Ok(response) => {
            let ok = response.status() == 200;
            ok && response.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

async fn grpc_call(channel: tonic::transport::Channel, request: pb::BatchCheckRequest) -> bool {
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return false;
    }
    let mut request = tonic::Request::new(request);
    if let Ok(value) = format!("Bearer {BATCH_TOKEN}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    let Ok(path) = ext_authz_server::batch_api::CHECK_PATH.parse() else {
        return false;
    };
    grpc.unary::<_, pb::BatchCheckResponse, _>(request, path, tonic_prost::ProstCodec::default())
        .await
        .is_ok_and(|r| r.get_ref().decisions.len() == ITEMS)
}
