//! The batch API's two transports (the phases are in `batch.rs`), both behind the batch
//! secret (`batch_token`, compared in constant time; it grants nothing else):
//!
//! - `POST /authorize/batch` on the admin port: a JSON [`BatchRequest`] in, `200` with
//!   `{"subject", "tier", "decisions": [{"id", "allowed", "reason"}], "computed"}` out; a batch
//!   over `resources.max_items` is `400 {"error": "too_many_resources", "max_items", "resources"}`,
//!   an unreadable one `400 {"error": "bad_request", "detail"}`, and a caller that cannot be
//!   established is answered from the one deny table (as any check: 401, 403, 429, 503). The
//!   batch runs on the checks' runtime, not the admin port's.
//! - `authz.batch.v1.BatchAuthorization/Check` beside `Check` on the gRPC port: the same, as
//!   protobuf ([`pb`]); a refused batch is a gRPC status (`INVALID_ARGUMENT`,
//!   `UNAUTHENTICATED`, `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED`, `UNAVAILABLE`).

use crate::batch::{BatchAnswer, BatchError, BatchRequest};
use crate::bearer;
use crate::check::CheckService;
use authz_core::resources::Resource;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;

/// The address the per-address limits see for every batch: the callers are services, not the
/// clients whose tokens they pass on.
pub const BATCH_ADDRESS: &str = "batch-api";

/// What the JSON endpoint needs: the service, and the checks' runtime (a batch runs there,
/// not on the admin port's own runtime).
#[derive(Clone)]
struct BatchHttp {
    service: Arc<CheckService>,
    main: tokio::runtime::Handle,
}

/// The admin port's `POST /authorize/batch`, to merge into its app.
pub fn router(service: Arc<CheckService>, main: tokio::runtime::Handle) -> axum::Router {
    axum::Router::new()
        .route("/authorize/batch", axum::routing::post(http))
        .with_state(BatchHttp { service, main })
}

/// `POST /authorize/batch`.
async fn http(State(state): State<BatchHttp>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(batch) = &state.service.config.batch else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !bearer::matches(&headers, &batch.token) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "batch token required"})),
        )
            .into_response();
    }
    let request: BatchRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "bad_request", "detail": e.to_string()})),
            )
                .into_response()
        }
    };
    let service = state.service.clone();
    let decided = state
        .main
        .spawn(async move { service.authorize_batch(&request, BATCH_ADDRESS).await })
        .await;
    match decided {
        Ok(Ok(answer)) => Json(answer.to_json()).into_response(),
        Ok(Err(error)) => http_refusal(&error, &state.service.config.realm),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

fn http_refusal(error: &BatchError, realm: &str) -> Response {
    match error {
        BatchError::NotConfigured => StatusCode::NOT_FOUND.into_response(),
        BatchError::TooManyResources { max, got } => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "too_many_resources", "max_items": max, "resources": got})),
        )
            .into_response(),
        BatchError::BadRequest(detail) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "bad_request", "detail": detail})),
        )
            .into_response(),
        BatchError::Denied(reason) => {
            let deny = authz_core::deny_response(reason, realm);
            let mut response = (
                StatusCode::from_u16(deny.status).unwrap_or(StatusCode::FORBIDDEN),
                deny.body,
            )
                .into_response();
            for (name, value) in deny.headers {
                if let Ok(value) = value.parse() {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
    }
}

/// The gRPC messages (`authz.batch.v1`), written by hand with `prost`'s derive.
pub mod pb {
    use std::collections::BTreeMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BatchCheckRequest {
        /// The caller's access token, or
        #[prost(string, tag = "1")]
        pub token: String,
        /// a signed verification context (exactly one of the two).
        #[prost(string, tag = "2")]
        pub context: String,
        #[prost(string, tag = "3")]
        pub action: String,
        #[prost(message, repeated, tag = "4")]
        pub resources: Vec<Resource>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(string, tag = "1")]
        pub r#type: String,
        #[prost(string, tag = "2")]
        pub id: String,
        #[prost(string, optional, tag = "3")]
        pub tenant: Option<String>,
        #[prost(string, optional, tag = "4")]
        pub owner: Option<String>,
        #[prost(btree_map = "string, string", tag = "5")]
        pub attributes: BTreeMap<String, String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BatchCheckResponse {
        #[prost(message, repeated, tag = "1")]
        pub decisions: Vec<Decision>,
        #[prost(string, optional, tag = "2")]
        pub subject: Option<String>,
        #[prost(string, tag = "3")]
        pub tier: String,
        #[prost(uint32, tag = "4")]
        pub computed: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Decision {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(bool, tag = "2")]
        pub allowed: bool,
        #[prost(string, tag = "3")]
        pub reason: String,
    }
}

impl From<pb::BatchCheckRequest> for BatchRequest {
    fn from(request: pb::BatchCheckRequest) -> BatchRequest {
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        BatchRequest {
            token: nonempty(request.token),
            context: nonempty(request.context),
            action: request.action,
            resources: request
                .resources
                .into_iter()
                .map(|r| Resource {
                    resource_type: r.r#type,
                    id: r.id,
                    tenant: r.tenant,
                    owner: r.owner,
                    attributes: r.attributes,
                })
                .collect(),
        }
    }
}

impl From<BatchAnswer> for pb::BatchCheckResponse {
    fn from(answer: BatchAnswer) -> pb::BatchCheckResponse {
        pb::BatchCheckResponse {
            decisions: answer
                .decisions
                .into_iter()
                .map(|(id, reason)| pb::Decision {
                    id,
                    allowed: reason.allowed(),
                    reason: reason.as_str().to_owned(),
                })
                .collect(),
            subject: answer.subject,
            tier: answer.tier.as_str().to_owned(),
            computed: u32::try_from(answer.computed).unwrap_or(u32::MAX),
        }
    }
}

/// A refused batch as a gRPC status.
fn grpc_refusal(error: &BatchError) -> tonic::Status {
    match error {
        BatchError::NotConfigured => tonic::Status::unimplemented("no resources configured"),
        BatchError::TooManyResources { max, got } => tonic::Status::invalid_argument(format!(
            "too_many_resources: {got} resources, at most {max}"
        )),
        BatchError::BadRequest(detail) => tonic::Status::invalid_argument(*detail),
        BatchError::Denied(reason) => match reason.status() {
            400 => tonic::Status::invalid_argument("denied"),
            401 => tonic::Status::unauthenticated("denied"),
            403 => tonic::Status::permission_denied("denied"),
            429 => tonic::Status::resource_exhausted("denied"),
            _ => tonic::Status::unavailable("denied"),
        },
    }
}

/// The gRPC service's full name.
pub const SERVICE_NAME: &str = "authz.batch.v1.BatchAuthorization";
/// Its one method's path.
pub const CHECK_PATH: &str = "/authz.batch.v1.BatchAuthorization/Check";

/// `authz.batch.v1.BatchAuthorization`, served beside `Check`.
#[derive(Clone)]
pub struct BatchServer {
    service: Arc<CheckService>,
}

impl BatchServer {
    pub fn new(service: Arc<CheckService>) -> BatchServer {
        BatchServer { service }
    }
}

impl tonic::server::NamedService for BatchServer {
    const NAME: &'static str = SERVICE_NAME;
}

/// The one method, as tonic's unary handler.
struct CheckMethod(Arc<CheckService>);

impl tonic::server::UnaryService<pb::BatchCheckRequest> for CheckMethod {
    type Response = pb::BatchCheckResponse;
    type Future = tonic::codegen::BoxFuture<tonic::Response<Self::Response>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<pb::BatchCheckRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move {
            let Some(batch) = &service.config.batch else {
                return Err(grpc_refusal(&BatchError::NotConfigured));
            };
            let authorization = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if !bearer::value_matches(authorization, &batch.token) {
                return Err(tonic::Status::unauthenticated("batch token required"));
            }
            let request = BatchRequest::from(request.into_inner());
            match service.authorize_batch(&request, BATCH_ADDRESS).await {
                Ok(answer) => Ok(tonic::Response::new(answer.into())),
                Err(error) => Err(grpc_refusal(&error)),
            }
        })
    }
}

impl<B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for BatchServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK_PATH {
            return Box::pin(async move {
                Ok(tonic::Status::unimplemented("no such method").into_http())
            });
        }
        let method = CheckMethod(self.service.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(method, request).await)
        })
    }
}
