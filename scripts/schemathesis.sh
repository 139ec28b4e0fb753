#!/usr/bin/env bash
# schemathesis (from PyPI, in .venv) against a real `vfarm serve` and the OpenAPI document it
# serves: no 5xx, responses conform to the schema (status codes, content types, headers,
# bodies). Exits non-zero on any finding, and when the service dies or panics meanwhile.
#
# The service runs on a fresh data dir with the minbase image and a token, like the Python
# client's tests. Bounded: N examples per operation (default 30), two workers, the whole
# run under a timeout. Operations that do real heavy work with valid input (image builds,
# the OS-Farm order) are fuzzed with invalid input only; the SSE stream is left out (it
# never ends).
#
#   VFARM_BIN            the binary (default: <target>/debug/vfarm, <target> = $CARGO_TARGET_DIR or target)
#   VFARM_MINBASE_TAR    the minbase rootfs tarball (default: <target>/tmp/minbase-bookworm.tar;
#                        built with mmdebstrap when missing)
#   SCHEMATHESIS_EXAMPLES  examples per operation (default 30)
#   SCHEMATHESIS_SEED      the random seed (default 1: runs are repeatable)
#   SCHEMATHESIS_CHECKS    the checks (default below)
#   SCHEMATHESIS_TIMEOUT   seconds for each schemathesis pass (default 600)
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

die() { echo "schemathesis.sh: $*" >&2; exit 1; }

bin=${VFARM_BIN:-${CARGO_TARGET_DIR:-target}/debug/vfarm}
case $bin in /*) ;; *) bin=$repo/$bin ;; esac
[ -x "$bin" ] || die "no vfarm binary at $bin: build it (cargo build -p vfarm) or set VFARM_BIN"
st=$repo/.venv/bin/schemathesis
[ -x "$st" ] || die "$st is missing: run scripts/setup.sh --deps"
command -v runc >/dev/null || die "runc is not installed: run scripts/setup.sh"

examples=${SCHEMATHESIS_EXAMPLES:-30}
seed=${SCHEMATHESIS_SEED:-1}
checks=${SCHEMATHESIS_CHECKS:-not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance,response_headers_conformance}
pass_timeout=${SCHEMATHESIS_TIMEOUT:-600}

tar=${VFARM_MINBASE_TAR:-${CARGO_TARGET_DIR:-$repo/target}/tmp/minbase-bookworm.tar}
if [ ! -f "$tar" ]; then
  command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (needed to build $tar): run scripts/setup.sh"
  echo "schemathesis.sh: building $tar with mmdebstrap"
  mkdir -p "$(dirname "$tar")"
  part=$(dirname "$tar")/.mk-st-$$
  mkdir -p "$part"
  mmdebstrap --variant=minbase bookworm "$part/minbase-bookworm.tar" >/dev/null 2>"$part/log" \
    || { tail -n 20 "$part/log" >&2; die "mmdebstrap failed"; }
  mv "$part/minbase-bookworm.tar" "$tar"
  rm -rf "$part"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/vfarm-schemathesis.XXXXXX")
# Instances run as an unprivileged host id that must pass through the data dir's parents.
chmod 755 "$work"
export VFARM_DATA_DIR=$work/data CI=true
server=
cleanup() {
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    kill "$server"
    for _ in $(seq 50); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server" 2>/dev/null
    wait "$server" 2>/dev/null
  fi
  # Destroy whatever instances the fuzzing created, then remove the data dir unless
  # something is still mounted below it (never delete through a mount point).
  for id in $("$bin" --output json instance ls 2>/dev/null | sed -n 's/^ *"id": "\([^"]*\)".*/\1/p'); do
    "$bin" instance destroy "$id" >/dev/null 2>&1 || echo "schemathesis.sh: could not destroy instance $id" >&2
  done
  if ! grep -q " $work/" /proc/self/mountinfo; then rm -rf "$work"; fi
}
trap cleanup EXIT

"$bin" image import "$tar" --name minbase >/dev/null || die "image import failed"
token=$("$bin" token create --user schemathesis --name schemathesis 2>/dev/null) || die "token create failed"

"$bin" serve --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.log" </dev/null &
server=$!
url=
for _ in $(seq 300); do
  url=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$work/serve.out" 2>/dev/null | head -n 1)
  [ -n "$url" ] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
[ -n "$url" ] || { tail -n 20 "$work/serve.log" >&2; die "vfarm serve did not start"; }
echo "schemathesis.sh: vfarm serve at $url (data dir $VFARM_DATA_DIR)"

# Random references only ever find nothing (404): half the time, use real ones instead — an
# instance `fuzz` with a snapshot `s1` (owned by the token's user, made through the API) and
# the image `minbase`. Destroying them is left to random references, so they stay for the
# whole run; actions (stop, pause, revert …) on them are fair game.
api() { curl -sS --fail-with-body --max-time 300 -H "Authorization: Bearer $token" \
          -H 'Content-Type: application/json' "$@"; }
api -XPOST -d '{"image":"minbase","name":"fuzz","command":["sleep","infinity"]}' \
  "$url/api/v1/instances?wait=true" >/dev/null || die "could not create the instance to fuzz"
api -XPOST -d '{"name":"s1"}' "$url/api/v1/instances/fuzz/snapshots" >/dev/null \
  || die "could not snapshot the instance to fuzz"
cat >"$work/schemathesis.toml" <<'TOML'
[dictionaries.instances]
values = ["fuzz"]
[dictionaries.snapshots]
values = ["s1"]
[dictionaries.images]
values = ["minbase"]

[[operations]]
include-name-regex = '^(GET|POST) /api/v1/instances/\{ref\}'
parameters = { "path.ref" = { dictionary = "instances", probability = 0.5 }, "path.name" = { dictionary = "snapshots", probability = 0.5 } }

[[operations]]
include-name-regex = '^GET /api/v1/images/\{ref\}'
parameters = { "path.ref" = { dictionary = "images", probability = 0.5 } }

[[operations]]
include-name = "POST /api/v1/instances"
parameters = { "body.image" = { dictionary = "images", probability = 0.5 } }
TOML

common=(
  --checks "$checks"
  --max-examples "$examples"
  --seed "$seed"
  --workers 2
  --request-timeout 120
  --generation-database none
  --no-color
)
# schemathesis keeps a cache of past failures (.schemathesis/) in its working directory:
# run in the scratch dir so every run starts fresh and the repository stays clean.
cd "$work"
rc=0
# Each pass has a token of its own: a pass that revokes the token it runs with (a token id
# listed by GET /api/v1/tokens, then DELETE) would leave the next one unauthenticated.
pass_token() { "$bin" token create --user schemathesis --name "schemathesis-$1" 2>/dev/null \
                 || die "token create failed"; }
echo "== schemathesis: every operation but image builds, the event stream and token revocation"
timeout "$pass_timeout" "$st" --config-file "$work/schemathesis.toml" run "$url/api/v1/openapi.json" "${common[@]}" \
  -H "Authorization: Bearer $token" \
  --exclude-path /api/v1/events --exclude-path-regex '^/osfarm/' \
  --exclude-name 'POST /api/v1/images' --exclude-name 'DELETE /api/v1/tokens/{id}' \
  || rc=$?
# Alone, so the ids it tries are random ones, never its own token's (which would end the pass).
echo "== schemathesis: token revocation"
timeout "$pass_timeout" "$st" --config-file "$work/schemathesis.toml" run "$url/api/v1/openapi.json" "${common[@]}" \
  -H "Authorization: Bearer $(pass_token revoke)" \
  --include-name 'DELETE /api/v1/tokens/{id}' \
  || rc=$?
# Valid input to these starts real builds (minutes of mmdebstrap on 2 cores): invalid only.
echo "== schemathesis: image builds and the OS-Farm order, invalid input only"
timeout "$pass_timeout" "$st" --config-file "$work/schemathesis.toml" run "$url/api/v1/openapi.json" "${common[@]}" --mode negative \
  -H "Authorization: Bearer $(pass_token builds)" \
  --include-name 'POST /api/v1/images' --include-path-regex '^/osfarm/' \
  || rc=$?

if ! kill -0 "$server" 2>/dev/null; then
  echo "schemathesis.sh: vfarm serve died during the run:" >&2
  tail -n 40 "$work/serve.log" >&2
  rc=1
fi
if grep -q "panicked" "$work/serve.log"; then
  echo "schemathesis.sh: vfarm serve panicked:" >&2
  grep -A5 "panicked" "$work/serve.log" | head -n 40 >&2
  rc=1
fi
[ $rc -eq 0 ] && echo "schemathesis.sh: no findings" || echo "schemathesis.sh: findings (exit $rc)" >&2
exit $rc
