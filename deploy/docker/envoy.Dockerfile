# syntax=docker/dockerfile:1
# Envoy 1.40 with the filter baked in, for docker-compose (deploy/compose/envoy.yaml).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN rustup target add wasm32-wasip1 \
 && cargo build --release --locked --target wasm32-wasip1 -p wasm-filter

FROM envoyproxy/envoy:v1.40.0
COPY --from=build /src/target/wasm32-wasip1/release/wasm_filter.wasm /etc/envoy/wasm_filter.wasm
COPY deploy/compose/envoy.yaml /etc/envoy/envoy.yaml
