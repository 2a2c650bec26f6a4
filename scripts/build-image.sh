#!/usr/bin/env bash
# Builds the redis-migrate container image from this checkout:
#   localhost/redis-migrate:<version> and :latest, and an OCI archive dist/redis-migrate-<version>.oci.tar
#   (push it to ECR with skopeo or `docker load` + `docker push`; see RUNBOOK.md, "Where the tool runs").
#
#   scripts/build-image.sh                 # docker, podman or buildah, whichever works here (buildah installed if none)
#   BASE=python:3.11-slim-bookworm scripts/build-image.sh       # another base image (its Python must be the host's 3.x)
#   BUILDER=buildah scripts/build-image.sh                      # force a builder
#
# The build steps reach no package index: the project and its dependencies go in as a wheelhouse made here
# with `pip wheel` (dist/wheelhouse). When the base cannot be pulled (no registry), a Debian bookworm base is
# made with mmdebstrap (python3, python3-venv, ca-certificates) and imported as localhost/redis-migrate-base:bookworm.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v .venv/bin/python || command -v python3)}
BASE_EXPLICIT=${BASE:+1}
BASE=${BASE:-docker.io/library/python:3.11-slim-bookworm}
LOCAL_BASE=localhost/redis-migrate-base:bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
IMAGE=localhost/redis-migrate
VERSION=$("$PYTHON" -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")
ARCHIVE=dist/redis-migrate-$VERSION.oci.tar
# What the image was built from (tracked files, as they are on disk): tests/test_image.py reuses an image whose
# label matches, and rebuilds otherwise.
SOURCE_DIGEST=$(git ls-files -z migrate pyproject.toml Dockerfile | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16) || SOURCE_DIGEST=unknown
start=$(date +%s)

log() { echo "build-image: $*" >&2; }

# --- the builder: a docker with a daemon, a podman, or buildah (installed from Debian where none is) --------
works() {
    case "$1" in
        docker) command -v docker >/dev/null && docker info >/dev/null 2>&1 ;;
        *) command -v "$1" >/dev/null && "$1" version >/dev/null 2>&1 ;;
    esac
}
BUILDER=${BUILDER:-}
if [ -z "$BUILDER" ]; then
    for tool in docker podman buildah; do
        if works "$tool"; then BUILDER=$tool; break; fi
    done
fi
if [ -z "$BUILDER" ]; then
    if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
        log "no docker (with a daemon), podman or buildah here; install one, e.g. as root: apt-get install buildah"
        exit 2
    fi
    log "no docker daemon, podman or buildah: installing Debian's buildah"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends buildah >/dev/null
    BUILDER=buildah
fi
log "builder: $BUILDER"

# --- the wheelhouse: the project and every dependency as wheels for the base's Python ---------------------
# async-timeout is redis-py's dependency below Python 3.11.3 only: Debian bookworm's Python is 3.11.2, and a host
# with a newer Python would leave it out unless asked.
rm -rf dist/wheelhouse
mkdir -p dist/wheelhouse
log "pip wheel: the project and its dependencies into dist/wheelhouse"
"$PYTHON" -m pip wheel -q --disable-pip-version-check -w dist/wheelhouse . "async-timeout>=4.0.3"
rm -rf build/lib build/bdist.* ./*.egg-info

# --- the base: pulled, or made from Debian's packages when no registry answers ------------------------------
have_image() {
    case "$BUILDER" in
        docker) docker image inspect "$1" >/dev/null 2>&1 ;;
        *) "$BUILDER" inspect "$1" >/dev/null 2>&1 ;;
    esac
}
pull() { timeout 120 "$BUILDER" pull -q "$1" >/dev/null 2>&1; }

make_local_base() {
    if ! command -v mmdebstrap >/dev/null; then
        log "installing Debian's mmdebstrap"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
    fi
    local rootfs
    rootfs=$(mktemp -d)/rootfs.tar
    log "making $LOCAL_BASE with mmdebstrap (Debian bookworm, minbase, python3, python3-venv, ca-certificates)"
    # No docs, man pages or locales; mmdebstrap leaves no apt lists or caches behind.
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm "$rootfs" \
        "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
        "deb ${MIRROR%/debian}/debian-security bookworm-security main"
    case "$BUILDER" in
        docker|podman) "$BUILDER" import "$rootfs" "$LOCAL_BASE" >/dev/null ;;
        buildah)
            local ctr
            ctr=$(buildah from scratch)
            buildah add "$ctr" "$rootfs" / >/dev/null
            buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
            buildah commit -q "$ctr" "$LOCAL_BASE" >/dev/null
            buildah rm "$ctr" >/dev/null ;;
    esac
    rm -rf "$(dirname "$rootfs")"
}

if have_image "$BASE" || pull "$BASE"; then
    log "base: $BASE"
elif [ -n "${BASE_EXPLICIT:-}" ]; then
    log "cannot pull the base $BASE"; exit 3
else
    log "cannot pull $BASE (no registry reachable): using a Debian base made here"
    BASE=$LOCAL_BASE
    have_image "$BASE" || make_local_base
fi

# --- the build ---------------------------------------------------------------------------------------------
image_id() {
    case "$BUILDER" in
        docker) docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true ;;
        *) "$BUILDER" inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true ;;
    esac
}
previous=$(image_id "$IMAGE:$VERSION")
args=(--build-arg "BASE=$BASE" --build-arg "VERSION=$VERSION" --label "redis-migrate.source-digest=$SOURCE_DIGEST" -t "$IMAGE:$VERSION" -t "$IMAGE:latest" -f Dockerfile .)
case "$BUILDER" in
    docker) docker build "${args[@]}" ;;
    podman) podman build --isolation chroot --pull=never "${args[@]}" ;;
    buildah) buildah bud --isolation chroot --pull-never --layers=false "${args[@]}" ;;
esac

# the image this build replaced, now untagged: removed (refused, and kept, while anything still uses it)
current=$(image_id "$IMAGE:$VERSION")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then "$BUILDER" rmi "$previous" >/dev/null 2>&1 || true; fi

# --- the OCI archive, and a smoke test: the version, as the image's user --------------------------------------
mkdir -p dist
rm -f "$ARCHIVE"
case "$BUILDER" in
    docker) docker save -o "$ARCHIVE" "$IMAGE:$VERSION" ;;  # docker's archive: docker load, or skopeo copy docker-archive:
    *) "$BUILDER" push -q "$IMAGE:$VERSION" "oci-archive:$ARCHIVE:$IMAGE:$VERSION" ;;
esac
case "$BUILDER" in
    buildah)
        ctr=$(buildah from --pull-never "$IMAGE:$VERSION")
        shown=$(buildah run --isolation chroot "$ctr" -- redis-migrate --version)
        buildah rm "$ctr" >/dev/null ;;
    *) shown=$("$BUILDER" run --rm "$IMAGE:$VERSION" --version) ;;
esac
case "$BUILDER" in
    docker) size=$(docker image inspect -f '{{.Size}}' "$IMAGE:$VERSION") ;;
    *) size=$("$BUILDER" images --format '{{.Size}}' "$IMAGE:$VERSION" | awk 'NR == 1') ;;
esac
log "$shown"
log "built $IMAGE:$VERSION and :latest from $BASE in $(( $(date +%s) - start ))s; archive $ARCHIVE ($(du -m "$ARCHIVE" | cut -f1) MB)"
log "image size: $size"
echo "$IMAGE:$VERSION"
