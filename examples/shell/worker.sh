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

# A request; sets $status and $body. curl's status 000 means no answer at all.
request() {
  local reply
  reply=$(curl -sS -m 60 "${auth[@]}" -H 'Content-Type: application/json' \
    -w '\n%{http_code}' "$@" 2>/dev/null) || true
  status=${reply##*$'\n'}
  body=${reply%$'\n'*}
  [ "$status" = "$body" ] && body=""
}

# 401, 403 and 404 are setup mistakes (the token, or the queue's name): retrying cannot help.
stop_if_misconfigured() {
  local why
  case $status in
    401) why="the server does not know this token: set KATAR_TOKEN to a valid one" ;;
    403) why="this token may not use the queue $queue" ;;
    404) why="the server has no queue $queue: create it, or fix the name" ;;
    *) return 0 ;;
  esac
  echo "stopping: $why ($status $body)" >&2
  exit 1
}

# No answer, a 5xx, 408 or 429: wait longer after each failure in a row (1, 2, 4 ... 30 s).
failures=0
back_off() {
  local delay=$(( 1 << (failures < 5 ? failures : 5) ))
  (( delay > 30 )) && delay=30
  failures=$((failures + 1))
  echo "no answer from the server ($status); trying again in ${delay}s" >&2
  nap "$delay"
}

# 1. Read the queue's configuration: how often to poll, and anything else it holds.
while :; do
  request "$url/v1/queue/$queue"
  [ "$status" = 200 ] && break
  stop_if_misconfigured
  [ "$stopping" = 1 ] && exit 0
  back_off
done
config=$body
failures=0
interval=$(jq -r '.configuration.interval / 1000' <<<"$config")
echo "shell worker ready on $queue, polling every ${interval}s" >&2

# 2. Poll. The acks of the task just finished ride on the request for the next one.
acks='[]'
take=1
while :; do
  if [ "$stopping" = 1 ]; then
    [ "$acks" = '[]' ] && exit 0
    take=0           # last call: report, take nothing
  fi
  request -X POST -d "{\"tasks\": $acks, \"max\": $take}" "$url/v1/queue/$queue"
  case $status in
    200|204)
      failures=0
      acks='[]'
      ;;
    401|403|404)
      stop_if_misconfigured
      ;;
    000|408|429|5*)
      # Keep the acks and resend them with "max": 0: the lost request may have claimed a
      # task already, and asking again would claim another.
      take=0
      back_off
      continue
      ;;
    *)
      # 400, 409, 422: a bug in the acks; the error says which. Drop them and go on.
      echo "the server rejected the acks ($status): $body" >&2
      acks='[]'
      take=1
      continue
      ;;
  esac
  if [ "$status" = 204 ]; then
    # Nothing to do: wait for the next poll (but not after a call that asked for nothing).
    [ "$take" = 1 ] && nap "$interval"
    take=1
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
