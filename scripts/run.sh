#!/usr/bin/env bash
# `make run`: starts the dev IdP, the echo upstream and Envoy with the filter, prints curl
# commands with fresh tokens, and stops everything on Ctrl-C. Logs go to .run/.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY=${ENVOY:-.venv/bin/envoy}
# FILTER=native runs the native filter (the Envoy dynamic module) instead of the Wasm one.
FILTER=${FILTER:-wasm}
case "$FILTER" in
  wasm) ENVOY_CONFIG=envoy/dev.yaml; STATS_PREFIX=wasmcustom ;;
  native) ENVOY_CONFIG=envoy/dev.native.yaml; STATS_PREFIX=dynamicmodulescustom ;;
  *) echo "FILTER must be wasm or native, not $FILTER" >&2; exit 1 ;;
esac
export ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$PWD/target/release
mkdir -p .run
pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "stopping..."
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT
trap "exit 0" INT TERM

for port in 9000 9001 9191 9192 9901 10000; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port $port is already in use; stop whatever holds it (or a previous make run) first" >&2
    exit 1
  fi
done

target/debug/dev-idp --port 9000 --issuer https://dev-idp.local --audience demo-api --status-list >.run/dev-idp.log 2>&1 &
pids+=($!)
# The echo upstream trusts only signed verification contexts: it names a request's route from
# the filter's own configuration (the JSON inside envoy/dev.yaml) and verifies with the server's
# published keys.
sed -n '/configuration:/,/- name: envoy.filters.http.ext_authz/p' envoy/dev.yaml \
  | sed -n '/^ *{$/,/^ *}$/p' >.run/filter.json
target/debug/echo-upstream --port 9001 --context-jwks http://127.0.0.1:9192/context/jwks.json \
  --context-policy .run/filter.json --context-audience echo \
  --batch-url http://127.0.0.1:9192/authorize/batch --batch-token dev-batch-token-local-5c2e8a1d \
  >.run/echo-upstream.log 2>&1 &
pids+=($!)
target/debug/ext-authz-server --config config/ext-authz-server.dev.yaml >.run/ext-authz-server.log 2>&1 &
pids+=($!)
"$ENVOY" -c "$ENVOY_CONFIG" --concurrency 2 --disable-hot-restart --log-level info >.run/envoy.log 2>&1 &
pids+=($!)

wait_for() { # url
  for _ in $(seq 1 200); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for $1 (see .run/*.log)" >&2; exit 1
}
wait_for http://127.0.0.1:9000/.well-known/jwks.json
wait_for http://127.0.0.1:9192/readyz
wait_for http://127.0.0.1:9901/ready

mint() { curl -fsS "http://127.0.0.1:9000/mint?$1"; }
READ=$(mint "sub=alice&scope=read")
WRITE=$(mint "sub=bob&scope=read%20write&alg=ES256")
EXPIRED=$(mint "sub=alice&scope=read&ttl=-120")
NOSCOPE=$(mint "sub=carol&scope=profile")
ADMIN=$(mint "sub=root&scope=read%20admin&opaque=true")

cat <<TXT

Envoy + jwt_authz filter ($FILTER build) + ext-authz-server are up on http://127.0.0.1:10000 (logs in .run/,
one JSON decision line per ext_authz check in .run/ext-authz-server.log; Ctrl-C stops all).
Paste these into another shell (tokens live 5 minutes; mint more with the last commands):

export READ='$READ'
export WRITE='$WRITE'
export EXPIRED='$EXPIRED'
export NOSCOPE='$NOSCOPE'
export ADMIN='$ADMIN'

  # public route, no token needed
  curl -i http://127.0.0.1:10000/healthz

  # 200 (RS256, scope read): the upstream echoes the verified context headers
  curl -i -H "authorization: Bearer \$READ" http://127.0.0.1:10000/api/items

  # 200 write (ES256, scopes read write)
  curl -i -X POST -H "authorization: Bearer \$WRITE" http://127.0.0.1:10000/api/items

  # 401: expired token (same body and header as for any other bad or missing token)
  curl -i -H "authorization: Bearer \$EXPIRED" http://127.0.0.1:10000/api/items

  # 403: valid token without the 'read' scope
  curl -i -H "authorization: Bearer \$NOSCOPE" http://127.0.0.1:10000/api/items

  # privileged route through Envoy's ext_authz → ext-authz-server → introspection (opaque token)
  curl -i -X POST -H "authorization: Bearer \$ADMIN" http://127.0.0.1:10000/admin/users

  # the same privileged check, made by the filter itself and cached in the proxy
  # (watch $STATS_PREFIX.authz_proxy.cache_lookups_total.tier.privileged.result.hit grow on the Envoy admin /stats)
  curl -i -X POST -H "authorization: Bearer \$ADMIN" http://127.0.0.1:10000/payments/transfer

  # revoke it at the IdP (RFC 7009): denied once the privileged freshness window (5 s) passes
  curl -u authz-server:authz-server-secret -d "token=\$ADMIN" http://127.0.0.1:9000/revoke
  sleep 5; curl -i -X POST -H "authorization: Bearer \$ADMIN" http://127.0.0.1:10000/admin/users

  # a read checked after the answer (background_check_ms: 2000): answered from the JWT at once,
  # and the server asks the IdP behind it; revoked at the IdP, every worker refuses it within
  # about 2 s ("allowed, then revoked" in .run/envoy.log and the server's log)
  NEWS=\$(curl -s 'http://127.0.0.1:9000/mint?sub=erin&scope=read')
  curl -s -o /dev/null -w '%{http_code}\n' -H "authorization: Bearer \$NEWS" http://127.0.0.1:10000/news/today
  curl -u authz-server:authz-server-secret -d "token=\$NEWS" http://127.0.0.1:9000/revoke
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code} ' -H "authorization: Bearer \$NEWS" http://127.0.0.1:10000/news/today; sleep 0.5; done; echo
  curl -s http://127.0.0.1:9901/stats | grep background_checks

  # revocation published by the IdP as a Token Status List (every minted JWT names an entry
  # of http://127.0.0.1:9000/statuslists/1): set this token's entry, and within one refresh
  # (5 s) plus the push it is refused on the read and write the filter decides and on the
  # privileged route the server decides ("status list: entries newly set" in the server log)
  LISTED=\$(curl -s 'http://127.0.0.1:9000/mint?sub=frank&scope=read%20write%20admin')
  curl -s http://127.0.0.1:9000/statuslists/1 | cut -d. -f2 | tr '_-' '/+' | base64 -d 2>/dev/null; echo
  curl -X POST -H 'content-type: application/json' -d "{\"token\":\"\$LISTED\",\"status\":\"revoked\"}" http://127.0.0.1:9000/admin/status
  sleep 6
  curl -s -o /dev/null -w '%{http_code} ' -H "authorization: Bearer \$LISTED" http://127.0.0.1:10000/api/items
  curl -s -o /dev/null -w '%{http_code} ' -X POST -H "authorization: Bearer \$LISTED" http://127.0.0.1:10000/api/items
  curl -s -o /dev/null -w '%{http_code}\n' -X POST -H "authorization: Bearer \$LISTED" http://127.0.0.1:10000/payments/transfer
  # a list that does not verify is refused and logged (status_list_refused), the last good one kept
  curl -X POST -H 'content-type: application/json' -d '{"status_list":"bad_signature"}' http://127.0.0.1:9000/admin/fault
  curl -X POST -H 'content-type: application/json' -d '{"status_list":"ok"}' http://127.0.0.1:9000/admin/fault

  # batch authorization for a list endpoint: the echo upstream's GET /api/orders asks the
  # server's batch API once for its six orders (with the signed context the proxy attached) and
  # returns only those in the caller's tenants; "computed" counts the rule evaluations (one per
  # tenant, not one per order)
  LISTER=\$(curl -s -H 'content-type: application/json' -d '{"sub":"gina","scope":"read","claims":{"tenant":["acme","globex"]}}' http://127.0.0.1:9000/mint)
  curl -s -H "authorization: Bearer \$LISTER" http://127.0.0.1:10000/api/orders; echo
  # the batch API itself (a service's call: its own secret, a token or context, an action, up
  # to resources.max_items resources; a decision and reason per resource, in order)
  curl -s -H 'authorization: Bearer dev-batch-token-local-5c2e8a1d' -H 'content-type: application/json' \
    -d "{\"token\":\"\$LISTER\",\"action\":\"read\",\"resources\":[{\"type\":\"order\",\"id\":\"a\",\"tenant\":\"acme\"},{\"type\":\"order\",\"id\":\"b\",\"tenant\":\"initech\"},{\"type\":\"invoice\",\"id\":\"c\"}]}" \
    http://127.0.0.1:9192/authorize/batch; echo

  # take introspection down: privileged fails closed (503); opaque tokens on /account/ get the
  # tier's grace window (JWTs are verified with the server's own copy of the keys)
  curl -X POST -H 'content-type: application/json' -d '{"introspection":"down"}' http://127.0.0.1:9000/admin/fault

  # server admin: metrics, revoke a subject, bump the policy version, epochs since 0
  curl -s http://127.0.0.1:9192/metrics | grep authz_decisions_total
  # revoking a subject at the server reaches the routes the filter decides locally too: bob's
  # WRITE token is refused (401) within milliseconds (pushed to every Envoy worker)
  curl -H 'authorization: Bearer dev-admin-token-local-7f3a9c1e' -d '{"sub":"bob"}' -H 'content-type: application/json' http://127.0.0.1:9192/admin/revoke-subject
  curl -i -X POST -H "authorization: Bearer \$WRITE" http://127.0.0.1:10000/api/items
  curl -X POST -H 'authorization: Bearer dev-admin-token-local-7f3a9c1e' http://127.0.0.1:9192/admin/policy-version
  # a revoke at the server reaches the proxy's cache at once (pushed; one 250 ms poll if not)
  curl -H 'authorization: Bearer dev-admin-token-local-7f3a9c1e' -H 'content-type: application/json' -d "{\"token\":\"\$ADMIN\"}" http://127.0.0.1:9192/admin/revoke
  curl -H 'authorization: Bearer dev-admin-token-local-7f3a9c1e' 'http://127.0.0.1:9192/admin/epochs?since=0&format=2'
  # incident switches (docs/runbook.md): no privileged decision reused for 10 minutes, in the
  # server and in every Envoy at once; then what is in force, and who asked
  curl -H 'authorization: Bearer dev-admin-token-local-7f3a9c1e' -H 'content-type: application/json' -d '{"switch":"cache_max","tier":"privileged","max_ms":0,"for_seconds":600,"by":"me"}' http://127.0.0.1:9192/admin/switches
  curl -H 'authorization: Bearer dev-admin-token-local-7f3a9c1e' http://127.0.0.1:9192/admin/switches
  curl -s http://127.0.0.1:9901/stats | grep -E "$STATS_PREFIX.authz_proxy.switches_on"

  # the signed verification context: the echo upstream (a service behind the proxy) trusts
  # only this header, verified with the keys the server publishes; read its claims
  curl -s http://127.0.0.1:9192/context/jwks.json
  CTX=\$(curl -s -H "authorization: Bearer \$READ" http://127.0.0.1:10000/api/items | sed 's/.*"x-auth-context":"\([^"]*\)".*/\1/')
  echo "\$CTX" | cut -d. -f2 | tr '_-' '/+' | base64 -d 2>/dev/null; echo
  # straight to the service: 200 for the request it was made for; 401 replayed as a write, on
  # another route, tampered with (one character of its claims changed), or without one; 401 once expired (60 s)
  curl -s -o /dev/null -w '%{http_code}\n' -H "x-auth-context: \$CTX" http://127.0.0.1:9001/api/items
  curl -s -o /dev/null -w '%{http_code}\n' -X POST -H "x-auth-context: \$CTX" http://127.0.0.1:9001/api/items
  curl -s -o /dev/null -w '%{http_code}\n' -H "x-auth-context: \$CTX" http://127.0.0.1:9001/admin/users
  curl -s -o /dev/null -w '%{http_code}\n' -H "x-auth-context: \${CTX/.eyJ/.eyK}" http://127.0.0.1:9001/api/items
  curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:9001/api/items
  sleep 61; curl -s -o /dev/null -w '%{http_code}\n' -H "x-auth-context: \$CTX" http://127.0.0.1:9001/api/items
  # (the echo logs why in .run/echo-upstream.log; a client's own x-auth-context is stripped)

  # a spoofed context header never reaches the upstream (look at x-auth-subject)
  curl -s -H "authorization: Bearer \$READ" -H 'x-auth-subject: root' http://127.0.0.1:10000/api/items
  # ... nor its underscore spelling (400 from Envoy), and other spellings of a privileged path
  # are the privileged route (403 for a read-only token, never the upstream)
  curl -i -H "authorization: Bearer \$READ" -H 'x_auth_subject: root' http://127.0.0.1:10000/api/items
  curl -i -H "authorization: Bearer \$READ" 'http://127.0.0.1:10000/ADMIN;x/users'
  # a read-only token asking the upstream to act as a DELETE, or a path an upstream would
  # decode into another one: 400 (see "requests" in README)
  curl -i -H "authorization: Bearer \$READ" -H 'X-HTTP-Method-Override: DELETE' http://127.0.0.1:10000/api/items
  curl -i -H "authorization: Bearer \$READ" 'http://127.0.0.1:10000/api/x/%%32%65%%32%65/admin'

  # mint your own token, rotate keys, take the JWKS endpoint down / up
  curl 'http://127.0.0.1:9000/mint?sub=dave&scope=read%20write&ttl=600&alg=ES256'
  curl -X POST 'http://127.0.0.1:9000/admin/rotate?alg=RS256'
  curl -X POST -H 'content-type: application/json' -d '{"jwks":"down"}' http://127.0.0.1:9000/admin/fault

  # the filter's metrics
  curl -s http://127.0.0.1:9901/stats | grep $STATS_PREFIX.authz

TXT
wait -n "${pids[@]}" || true
echo "a process exited; see .run/*.log" >&2
