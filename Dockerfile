# syntax=docker/dockerfile:1
#
#   docker build -t haka-proxy .
#   docker run --rm -p 8443:8443 haka-proxy --listen :8443 --upstream backend:443
#
# The image runs as an unprivileged user, which is all sidecar mode needs.
# Gateway mode (TPROXY) needs capabilities: see README.md, "Running in a
# container".

FROM golang:1.26 AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# A static binary (no cgo: the runtime image has no libc), without local
# paths in it (-trimpath), stripped of the symbol table (-s -w; stack
# traces and the build information read by "haka-proxy version" stay).
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/haka-proxy ./cmd/haka-proxy

# distroless/static: no shell, no package manager, CA certificates and
# tzdata only; the :nonroot variant runs as uid/gid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/haka-proxy /usr/local/bin/haka-proxy
COPY configs/sidecar.yaml /etc/haka-proxy/sidecar.yaml
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/haka-proxy"]
