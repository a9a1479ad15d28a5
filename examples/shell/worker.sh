#!/usr/bin/env bash
# A Katar worker in bash, with nothing but curl and jq.
#
#   KATAR_URL=http://127.0.0.1:3000 examples/shell/worker.sh QUEUE
#
# The work: a task's data is {"n": <number>}; its result is {"by": "shell", "square": n*n}.
# Replace handle() with your own.
set -uo pipefail

url=${KATAR_URL:-http://127.0.0.1:3000}
queue=${1:?usage: worker.sh QUEUE}
auth=()
[ -n "${KATAR_TOKEN:-}" ] && auth=(-H "Authorization: Bearer $KATAR_TOKEN")

# SIGTERM or SIGINT: finish the current task, report it, then leave.
stopping=0
trap 'stopping=1' TERM INT

# Sleep in the background and wait for it, so that a signal interrupts the sleep.
nap() { sleep "$1" & wait $! 2>/dev/null; }

# The task's work. $1 is the task's data (JSON); prints the result (JSON).
handle() {
  jq -c '{by: "shell", square: (.n * .n)}' <<<"$1"
}

# POST a poll; sets $status and $body. curl's status 000 means no answer at all.
poll() {
  local reply
  reply=$(curl -sS -m 60 "${auth[@]}" -H 'Content-Type: application/json' \
    -X POST -d "$1" -w '\n%{http_code}' "$url/v1/queue/$queue" 2>/dev/null) || true
  status=${reply##*$'\n'}
  body=${reply%$'\n'*}
  [ "$status" = "$body" ] && body=""
}

# 1. Read the queue's configuration: how often to poll, and anything else it holds.
until config=$(curl -fsS "${auth[@]}" "$url/v1/queue/$queue"); do
  [ "$stopping" = 1 ] && exit 0
  echo "cannot read the configuration of $queue; trying again" >&2
  nap 1
done
interval=$(jq -r '.configuration.interval / 1000' <<<"$config")
echo "shell worker ready on $queue, polling every ${interval}s" >&2

# 2. Poll. The acks of the task just finished ride on the request for the next one.
acks='[]'
failures=0
while :; do
  if [ "$stopping" = 1 ]; then
    [ "$acks" = '[]' ] && exit 0
    take=0           # last call: report, take nothing
  else
    take=1
  fi
  poll "{\"tasks\": $acks, \"max\": $take}"
  case $status in
    200|204)
      failures=0
      acks='[]'
      [ "$take" = 0 ] && exit 0
      ;;
    4*)
      echo "the server rejected the request ($status): $body" >&2
      exit 1
      ;;
    *)
      # No answer or a 5xx: keep the acks, back off (capped), try again.
      failures=$((failures + 1))
      delay=$(( failures < 5 ? failures : 5 ))
      echo "no answer from the server ($status); trying again in ${delay}s" >&2
      nap "$delay"
      continue
      ;;
  esac
  if [ "$status" = 204 ]; then
    nap "$interval"  # nothing to do: wait for the next poll
    continue
  fi
  task=$(jq -c '.tasks[0]' <<<"$body")
  id=$(jq -r '._id' <<<"$task")
  attempt=$(jq -r '.attempt // 1' <<<"$task")
  if result=$(handle "$(jq -c '.data' <<<"$task")"); then
    acks=$(jq -nc --arg id "$id" --argjson attempt "$attempt" --argjson result "$result" \
      '[{_id: $id, status: "done", attempt: $attempt, result: $result}]')
  else
    acks=$(jq -nc --arg id "$id" --argjson attempt "$attempt" \
      '[{_id: $id, status: "failed", attempt: $attempt, error: "the shell handler failed"}]')
  fi
done
