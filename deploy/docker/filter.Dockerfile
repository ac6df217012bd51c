# syntax=docker/dockerfile:1
# The Wasm filter as an OCI image: a single layer holding /plugin.wasm, the layout Istio's
# WasmPlugin (`url: oci://...`) accepts. Build with the same toolchain as CI.
#
#   docker build -f deploy/docker/filter.Dockerfile -t registry.example/authz/jwt-authz-filter:0.1.0 .
#   docker push registry.example/authz/jwt-authz-filter:0.1.0
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN rustup target add wasm32-wasip1 \
 && cargo build --release --locked --target wasm32-wasip1 -p wasm-filter

FROM scratch
COPY --from=build /src/target/wasm32-wasip1/release/wasm_filter.wasm /plugin.wasm
