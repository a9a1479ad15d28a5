#!/usr/bin/env bash
# A Katar worker in bash, with nothing but curl and jq.
#
#   KATAR_URL=http://127.0.0.1:3000 examples/shell/worker.sh QUEUE
#
# Everything docs/workers.md describes: up to KATAR_CONCURRENCY tasks at once (4 by
# default, each in a background job) taken in batches ("max"), long polls ("wait") while
# idle, the acks of finished tasks riding on the next poll, heartbeats for tasks that
# outlast a third of their lease, operators' cancels, backoff without losing an ack, and a
# clean stop on SIGTERM or SIGINT.
#
# The work: a task's data is {"n": <number>, "ms": <optional milliseconds of work>}; its
# result is {"by": "shell", "square": n*n}. Replace handle() with your own.
set -uo pipefail

url=${KATAR_URL:-http://127.0.0.1:3000}
queue=${1:?usage: worker.sh QUEUE}
concurrency=${KATAR_CONCURRENCY:-4}
wait_s=20                                   # how long an idle poll waits on the server
name="$(hostname)/shell-$$"                 # the same on every poll (see "Ownership")
auth=()
[ -n "${KATAR_TOKEN:-}" ] && auth=(-H "Authorization: Bearer $KATAR_TOKEN")
work=$(mktemp -d)                           # the requests' answers and the tasks' acks
trap 'rm -rf "$work"' EXIT

# SIGTERM or SIGINT: take no more tasks, finish the running ones, send their acks, leave.
# A long poll in flight is cut short: it could only bring tasks we no longer want.
stopping=0
trap 'stopping=1' TERM INT

# Sleep in the background and wait for it, so that a signal interrupts the sleep.
nap() { sleep "$1" & wait $! 2>/dev/null; }
now_ms() { date +%s%3N; }

# The task's work. $1 is the task's data (JSON); prints the result (JSON).
handle() {
  local ms
  ms=$(jq -r '.ms // 0' <<<"$1")
  [ "$ms" != 0 ] && sleep "$(jq -n "$ms / 1000")"
  jq -c '{by: "shell", square: (.n * .n)}' <<<"$1"
}

# A request, with curl in the background so that a signal is heard at once; sets $status
# and $body. Status 000 means no answer at all. $1: the time-out (s); then curl's arguments.
# A long poll (one with a "wait") is cut short by a signal; any other request is let end.
request() {
  local limit=$1 long=$2 pid
  shift 2
  rm -f "$work/status" "$work/body"
  curl -sS -m "$limit" "${auth[@]}" -H 'Content-Type: application/json' \
    -o "$work/body" -w '%{http_code}' "$@" >"$work/status" 2>/dev/null &
  pid=$!
  while ! wait "$pid" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || break           # curl ended (with an error)
    if [ "$stopping" = 1 ] && [ "$long" = 1 ]; then
      kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; break
    fi
  done
  status=$(cat "$work/status" 2>/dev/null)
  status=${status:-000}
  body=$(cat "$work/body" 2>/dev/null)
}

# 401, 403 and 404 for the queue are setup mistakes (the token, or the queue's name).
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

# No answer, a 5xx, 408 or 429: wait longer after each failure in a row: 0.5, 1, 2, 4, then
# 5 s at most, each times a random factor (so that many workers do not retry in step).
failures=0
back_off() {
  failures=$((failures + 1))
  local ms=$(( 250 << (failures < 5 ? failures : 5) ))
  (( ms > 5000 )) && ms=5000
  ms=$(( ms / 2 + RANDOM % (ms / 2) ))
  echo "no answer from the server ($status) at $url; trying again in ${ms} ms" >&2
  nap "$(jq -n "$ms / 1000")"
}

# 1. Read the queue's configuration, and its lease (the Katar-Lease-Timeout header).
while :; do
  request 30 0 -D "$work/headers" "$url/v1/queue/$queue"
  [ "$status" = 200 ] && break
  stop_if_misconfigured
  [ "$stopping" = 1 ] && exit 0
  back_off
done
failures=0
interval=$(jq -r '.configuration.interval / 1000' <<<"$body")
lease=$(tr -d '\r' <"$work/headers" | awk -F': ' 'tolower($1) == "katar-lease-timeout" {print $2}')
lease=${lease:-60000}
echo "shell worker ready on $queue: $concurrency tasks at once, lease ${lease} ms" >&2

# 2. The tasks that run: their id -> "pid attempt lease_ms last_beat_ms"; each background
#    job writes its ack to $work/acks/<id> when its task ends.
declare -A running=()
mkdir "$work/acks"
acks='[]'         # finished tasks' acks, not yet answered by the server

start() {  # $1: the task (JSON)
  local id attempt own
  id=$(jq -r '._id' <<<"$1")
  attempt=$(jq -r '.attempt' <<<"$1")
  own=$(jq -r ".timeout // $lease" <<<"$1")      # a task's own lease, when it has one
  (
    trap - TERM INT                               # the worker stops; the task finishes
    if result=$(handle "$(jq -c '.data' <<<"$1")"); then
      ack=$(jq -nc --arg id "$id" --argjson a "$attempt" --argjson r "$result" \
        '{_id: $id, status: "done", attempt: $a, result: $r}')
    else
      ack=$(jq -nc --arg id "$id" --argjson a "$attempt" \
        '{_id: $id, status: "failed", attempt: $a, error: "the shell handler failed"}')
    fi
    echo "$ack" >"$work/acks/.$id" && mv "$work/acks/.$id" "$work/acks/$id"
  ) &
  running[$id]="$! $attempt $own $(now_ms)"
}

# The tasks that ended: their acks join $acks.
collect() {
  local id
  for id in "${!running[@]}"; do
    if [ -f "$work/acks/$id" ]; then
      acks=$(jq -c --slurpfile a "$work/acks/$id" '. + $a' <<<"$acks")
      rm -f "$work/acks/$id"
      unset "running[$id]"
    fi
  done
}

# 3. The loop. After no answer the last poll may have claimed tasks for us (they come back
# when their lease runs out): until an answer comes, send its acks again with "max": 0, so
# that nothing is claimed twice. A lost poll that carried no ack is simply sent again.
resending=0
while :; do
  collect
  if [ "$stopping" = 1 ] && [ ${#running[@]} = 0 ] && [ "$acks" = '[]' ]; then
    exit 0
  fi
  # Heartbeats: every third of a task's lease.
  now=$(now_ms)
  beats='[]'
  beat_ids=()
  for id in "${!running[@]}"; do
    read -r pid attempt own beat_at <<<"${running[$id]}"
    if (( now - beat_at >= own / 3 )); then
      beats=$(jq -c --arg id "$id" --argjson a "$attempt" \
        '. + [{_id: $id, status: "in progress", attempt: $a}]' <<<"$beats")
      beat_ids+=("$id")
    fi
  done
  free=$(( stopping || resending ? 0 : concurrency - ${#running[@]} ))
  if [ "$acks" = '[]' ] && [ "$beats" = '[]' ] && [ "$free" = 0 ]; then
    nap 0.2           # busy: look again for a task that ended or a heartbeat that is due
    continue
  fi
  # Long-poll only while nothing runs: a long poll in flight holds back the acks of tasks
  # that finish meanwhile, and the running tasks' heartbeats, until it is answered.
  wait=0
  [ ${#running[@]} = 0 ] && [ "$stopping" = 0 ] && [ "$resending" = 0 ] && wait=$wait_s
  sent_acks=$acks
  sent=$(jq -c --argjson b "$beats" '. + $b' <<<"$acks")
  poll=$(jq -nc --argjson t "$sent" --argjson m "$free" --argjson w "$wait" --arg n "$name" \
    '{tasks: $t, max: $m, wait: $w, worker: $n}')
  request $((wait + 30)) $((wait > 0)) -X POST -d "$poll" "$url/v1/queue/$queue"
  case $status in
    200|204) ;;
    000|408|429|5*)
      # Keep the acks, to send again with "max": 0; with none to send, poll as usual.
      [ "$sent_acks" != '[]' ] && resending=1
      if [ "$stopping" = 1 ]; then
        [ "$wait" -gt 0 ] && continue             # our own long poll, cut short
        if (( failures >= 5 )); then
          # Their tasks are not lost: their leases run out and they are delivered again.
          echo "stopping without sending the acks: no answer from $url" >&2
          exit 1
        fi
      fi
      back_off
      continue
      ;;
    *)
      # One faulty ack: the answer's "ack" is its index in the "tasks" sent, and nothing of
      # the request was applied. Drop that ack (a heartbeat comes again) and send the others.
      # That is a 404 for a task as well: only a 404 without "ack" means no queue.
      index=$(jq -r '.ack // empty' <<<"$body" 2>/dev/null)
      [ -z "$index" ] && stop_if_misconfigured
      echo "the server rejected ${index:+ack }${index:-the acks} ($status): $body" >&2
      if [ -z "$index" ]; then
        acks='[]'
      else
        dropped=$(jq -c ".[$index]" <<<"$sent")
        acks=$(jq -c --argjson d "$dropped" 'map(select(. != $d))' <<<"$acks")
      fi
      continue
      ;;
  esac
  failures=0
  resending=0
  # Answered: forget the acks it carried (the jobs that ended meanwhile are collected next).
  acks=$(jq -c --argjson s "$sent_acks" '. - $s' <<<"$acks")
  for id in "${beat_ids[@]}"; do
    read -r pid attempt own beat_at <<<"${running[$id]:-}"
    [ -n "${pid:-}" ] && running[$id]="$pid $attempt $own $now"
  done
  [ "$status" = 204 ] && body='{"tasks": []}'
  for id in $(jq -r '.cancel // [] | .[]' <<<"$body"); do
    # An operator cancelled it: stop its job and send nothing more for it.
    if [ -n "${running[$id]:-}" ]; then
      read -r pid _ <<<"${running[$id]}"
      kill "$pid" 2>/dev/null
      unset "running[$id]"
    fi
    echo "task $id was cancelled by an operator" >&2
  done
  taken=$(jq -c '.tasks[]' <<<"$body")
  while IFS= read -r task; do
    [ -n "$task" ] && start "$task"
  done <<<"$taken"
  if [ -z "$taken" ] && [ ${#running[@]} -gt 0 ]; then
    nap "$(jq -n "[$interval, 0.2] | min")"    # busy, nothing new: look again soon
  fi
done
