// A Katar worker in Java 17 with nothing but the standard library (java.net.http).
//
//   KATAR_URL=http://127.0.0.1:3000 java examples/java/Worker.java QUEUE
//
// Everything docs/workers.md describes: up to KATAR_CONCURRENCY tasks at once (4 by
// default) taken in batches ("max"), long polls ("wait") while idle, the acks of finished
// tasks riding on the next poll, heartbeats for tasks that outlast a third of their lease,
// operators' cancels, backoff without losing an ack, and a clean stop on SIGTERM or SIGINT.
//
// The work: a task's data is {"n": <number>, "ms": <optional milliseconds of work>}; its
// result is {"by": "java", "square": n*n}. Replace handle() with your own. Java's standard
// library has no JSON, so a small reader and writer for it close this file; in a real
// project, use the JSON library you have.

import java.net.InetAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Semaphore;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;

public class Worker {
    static final String URL = System.getenv().getOrDefault("KATAR_URL", "http://127.0.0.1:3000");
    static final int CONCURRENCY = Integer.parseInt(System.getenv().getOrDefault("KATAR_CONCURRENCY", "4"));
    static final int WAIT = 20; // s: how long an idle poll waits on the server for a task
    // HTTP/1.1: the default would ask every request to upgrade to HTTP/2, which Katar does
    // not speak.
    static final HttpClient HTTP = HttpClient.newBuilder()
            .version(HttpClient.Version.HTTP_1_1)
            .connectTimeout(Duration.ofSeconds(5))
            .build();

    // SIGTERM or SIGINT run the shutdown hook, which counts STOPPING down (take no more
    // tasks, finish the running ones, send their acks), cuts a long poll in flight short
    // (it could only bring tasks we no longer want), and waits for the loop to end.
    static final CountDownLatch STOPPING = new CountDownLatch(1);
    static final CountDownLatch STOPPED = new CountDownLatch(1);
    static volatile boolean finished; // the loop ended by itself: the hook has nothing to wait for
    static volatile int exitStatus;
    static volatile boolean longPolling;
    static Thread loop;
    // Released by a finished task or a signal: the loop looks again.
    static final Semaphore WAKE = new Semaphore(0);

    static Object handle(Object data) throws InterruptedException {
        Map<?, ?> fields = (Map<?, ?>) data;
        if (fields.get("ms") instanceof Number ms) Thread.sleep(ms.longValue());
        double n = ((Number) fields.get("n")).doubleValue();
        Map<String, Object> result = new LinkedHashMap<>();
        result.put("by", "java");
        result.put("square", n * n);
        return result;
    }

    /** Status 0 means no answer at all (or a long poll cut short by a signal). */
    record Reply(int status, String body, long lease) {}

    static Reply send(String method, String path, String body, int timeoutSeconds) {
        HttpRequest.Builder request = HttpRequest.newBuilder(URI.create(URL + path))
                .timeout(Duration.ofSeconds(timeoutSeconds))
                .header("Content-Type", "application/json");
        String token = System.getenv("KATAR_TOKEN");
        if (token != null && !token.isEmpty()) request.header("Authorization", "Bearer " + token);
        request.method(method, body == null
                ? HttpRequest.BodyPublishers.noBody()
                : HttpRequest.BodyPublishers.ofString(body));
        try {
            HttpResponse<String> response = HTTP.send(request.build(), HttpResponse.BodyHandlers.ofString());
            long lease = response.headers().firstValueAsLong("Katar-Lease-Timeout").orElse(60000);
            return new Reply(response.statusCode(), response.body(), lease);
        } catch (java.io.IOException e) {
            return new Reply(0, e.toString(), 0);
        } catch (InterruptedException e) {
            // Interrupted by the hook: Java 16 and later cancel the exchange. Clear the flag,
            // so that the requests that follow (the last acks) are sent.
            Thread.interrupted();
            return new Reply(0, "interrupted", 0);
        }
    }

    static boolean stopping() {
        return STOPPING.getCount() == 0;
    }

    /** Sleep, cut short by a signal or a finished task. */
    static void nap(long millis) {
        try {
            WAKE.tryAcquire(Math.max(0, millis), TimeUnit.MILLISECONDS);
        } catch (InterruptedException e) {
            // The hook's interrupt, meant for a long poll that had just ended: look again.
        }
        WAKE.drainPermits();
    }

    /** No answer, a 5xx, 408 or 429: "try again later". */
    static boolean transientStatus(int status) {
        return status == 0 || status >= 500 || status == 408 || status == 429;
    }

    /** 401, 403 and 404 for the queue are setup mistakes (the token, or the queue's name). */
    static String misconfigured(String queue, int status) {
        return switch (status) {
            case 401 -> "the server does not know this token: set KATAR_TOKEN to a valid one";
            case 403 -> "this token may not use the queue " + queue;
            case 404 -> "the server has no queue " + queue + ": create it, or fix the name";
            default -> null;
        };
    }

    static int failures;

    /** Waits longer after each failure in a row: 0.5, 1, 2, 4, then 5 s at most, each times
     * a random factor (so that many workers do not retry in step); an answer resets it. */
    static void backOff(int status) {
        failures++;
        long delay = (long) (Math.min(5000, 250L << Math.min(failures, 10)) * ThreadLocalRandom.current().nextDouble(0.5, 1));
        System.err.println("no answer from the server (" + status + ") at " + URL + "; trying again in " + delay + " ms");
        nap(delay);
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: java Worker.java QUEUE");
            System.exit(2);
        }
        loop = Thread.currentThread();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            if (finished) return; // the loop ended (a setup mistake): its status stands
            STOPPING.countDown();
            WAKE.release();
            if (longPolling) loop.interrupt();
            try {
                if (STOPPED.await(60, TimeUnit.SECONDS)) Runtime.getRuntime().halt(exitStatus);
            } catch (InterruptedException ignored) {
                Thread.currentThread().interrupt();
            }
        }));
        int status = 1;
        try {
            status = work(args[0]);
        } finally {
            // Set before the latch, which the hook (if a signal started it) waits on. Without
            // a signal, System.exit runs the hook, which sees "finished" and returns at once:
            // an exit inside the loop once waited 30 s for a latch only main could release.
            exitStatus = status;
            finished = true;
            STOPPED.countDown();
        }
        System.exit(status);
    }

    static final class Running {
        final Map<?, ?> task;
        final long every; // ms between heartbeats: a third of the lease
        volatile long beatAt = System.currentTimeMillis();
        volatile boolean cancelled;

        Running(Map<?, ?> task, long every) {
            this.task = task;
            this.every = every;
        }
    }

    /** The loop; its exit status. */
    static int work(String queue) {
        String path = "/v1/queue/" + queue;
        // 1. Read the queue's configuration, and its lease (the Katar-Lease-Timeout header).
        Reply reply;
        while ((reply = send("GET", path, null, 30)).status() != 200) {
            String why = misconfigured(queue, reply.status());
            if (why != null || !transientStatus(reply.status())) {
                System.err.println("stopping: " + (why != null ? why : "the server rejected the request")
                        + " (" + reply.status() + " " + reply.body() + ")");
                return 1;
            }
            if (stopping()) return 0;
            backOff(reply.status());
        }
        failures = 0;
        Map<?, ?> configuration = (Map<?, ?>) ((Map<?, ?>) Json.parse(reply.body())).get("configuration");
        long interval = ((Number) configuration.get("interval")).longValue();
        long lease = reply.lease();
        String name = hostname() + "/java-" + ProcessHandle.current().pid(); // the same on every poll
        System.err.println("java worker ready on " + queue + ": " + CONCURRENCY + " tasks at once, lease " + lease + " ms");

        // 2. The tasks that run, and the acks owed to the server (both shared with the pool).
        Map<Object, Running> running = new ConcurrentHashMap<>();
        List<Object> acks = new ArrayList<>();
        ExecutorService pool = Executors.newFixedThreadPool(CONCURRENCY);

        // 3. The loop. After no answer the last poll may have claimed tasks for us (they come
        // back when their lease runs out): until an answer comes, send its acks again with
        // "max": 0, so that nothing is claimed twice. A lost poll with no ack is sent again.
        boolean resending = false;
        try {
            while (true) {
                long now = System.currentTimeMillis();
                List<Object> sentAcks;
                synchronized (acks) {
                    if (stopping() && running.isEmpty() && acks.isEmpty()) return 0;
                    sentAcks = new ArrayList<>(acks);
                }
                List<Running> beats = new ArrayList<>();
                long nextBeat = 1000;
                for (Running r : running.values()) {
                    if (!r.cancelled && now - r.beatAt >= r.every) beats.add(r);
                    nextBeat = Math.min(nextBeat, r.beatAt + r.every - now);
                }
                int busy = running.size();
                int free = stopping() || resending ? 0 : CONCURRENCY - busy;
                if (sentAcks.isEmpty() && beats.isEmpty() && free == 0) {
                    nap(nextBeat); // busy: until a task ends or a beat is due
                    continue;
                }
                // Long-poll only while nothing runs: a long poll in flight holds back the acks
                // of tasks that finish meanwhile, and the running tasks' heartbeats.
                int wait = busy == 0 && !stopping() && !resending ? WAIT : 0;
                List<Object> sent = new ArrayList<>(sentAcks);
                for (Running r : beats) {
                    Map<String, Object> beat = new LinkedHashMap<>();
                    beat.put("_id", r.task.get("_id"));
                    beat.put("status", "in progress");
                    beat.put("attempt", r.task.get("attempt"));
                    sent.add(beat);
                }
                Map<String, Object> body = new LinkedHashMap<>();
                body.put("tasks", sent);
                body.put("max", free);
                body.put("wait", wait);
                body.put("worker", name);
                longPolling = wait > 0;
                if (longPolling && stopping()) continue; // the signal came just now
                reply = send("POST", path, Json.write(body), wait + 30);
                longPolling = false;
                int status = reply.status();
                if (status == 0 && stopping() && "interrupted".equals(reply.body())) {
                    resending = !sentAcks.isEmpty(); // cut short by the signal: resend its acks
                    continue;
                }
                if (transientStatus(status)) {
                    // Keep the acks, to send again with "max": 0; with none, poll as usual.
                    resending = resending || !sentAcks.isEmpty();
                    if (stopping() && failures >= 5) {
                        // Their tasks are not lost: their leases run out and they are delivered again.
                        System.err.println("stopping without sending " + sentAcks.size() + " ack(s): no answer from " + URL);
                        return 1;
                    }
                    backOff(status);
                    continue;
                }
                if (status != 200 && status != 204) {
                    // One faulty ack: the answer's "ack" is its index in the "tasks" sent, and
                    // nothing of the request was applied. Drop that ack (a heartbeat comes again)
                    // and send the others. That is a 404 for a task as well: only a 404 without
                    // "ack" means no queue.
                    Object index = null;
                    try {
                        index = ((Map<?, ?>) Json.parse(reply.body())).get("ack");
                    } catch (RuntimeException ignored) {
                        // not JSON: no index
                    }
                    String why = misconfigured(queue, status);
                    if (index == null && why != null) {
                        System.err.println("stopping: " + why + " (" + status + " " + reply.body() + ")");
                        return 1;
                    }
                    System.err.println("the server rejected " + (index == null ? "the acks" : "ack " + index)
                            + " (" + status + "): " + reply.body());
                    List<Object> dropped = index == null ? sentAcks : List.of(sent.get(((Number) index).intValue()));
                    synchronized (acks) {
                        acks.removeIf(a -> dropped.stream().anyMatch(d -> d == a));
                    }
                    continue;
                }
                failures = 0;
                resending = false;
                synchronized (acks) { // answered; new acks may have come in meanwhile
                    acks.removeIf(a -> sentAcks.stream().anyMatch(s -> s == a));
                }
                for (Running r : beats) r.beatAt = now;
                Map<?, ?> answer = status == 200 ? (Map<?, ?>) Json.parse(reply.body()) : Map.of("tasks", List.of());
                if (answer.get("cancel") instanceof List<?> cancel) {
                    for (Object id : cancel) {
                        // An operator cancelled it: send nothing more for it. (A real handler
                        // would check a flag between its steps.)
                        Running r = running.get(id);
                        if (r != null) r.cancelled = true;
                        System.err.println("task " + id + " was cancelled by an operator");
                    }
                }
                List<?> tasks = (List<?>) answer.get("tasks");
                for (Object item : tasks) {
                    Map<?, ?> task = (Map<?, ?>) item;
                    long own = task.get("timeout") instanceof Number t ? t.longValue() : lease;
                    Running r = new Running(task, own / 3);
                    running.put(task.get("_id"), r);
                    pool.submit(() -> run(r, running, acks));
                }
                boolean owed;
                synchronized (acks) {
                    owed = !acks.isEmpty();
                }
                if (tasks.isEmpty() && busy > 0 && !owed) nap(Math.min(nextBeat, interval)); // busy, nothing new
            }
        } finally {
            pool.shutdownNow();
        }
    }

    static void run(Running r, Map<Object, Running> running, List<Object> acks) {
        Map<String, Object> ack = new LinkedHashMap<>();
        ack.put("_id", r.task.get("_id"));
        ack.put("attempt", r.task.get("attempt"));
        try {
            ack.put("result", handle(r.task.get("data")));
            ack.put("status", "done");
        } catch (Exception e) { // the task failed, not the worker
            ack.put("status", "failed");
            ack.put("error", e.toString());
        }
        synchronized (acks) {
            running.remove(r.task.get("_id"));
            if (!r.cancelled) acks.add(ack); // a cancelled task gets no ack
        }
        WAKE.release();
    }

    static String hostname() {
        try {
            return InetAddress.getLocalHost().getHostName();
        } catch (java.io.IOException e) {
            return "java";
        }
    }

    /** Just enough JSON: objects, arrays, strings, numbers, booleans and null. */
    static final class Json {
        private final String text;
        private int at;

        private Json(String text) {
            this.text = text;
        }

        static Object parse(String text) {
            Json json = new Json(text);
            Object value = json.value();
            json.space();
            if (json.at != text.length()) throw new IllegalArgumentException("trailing characters in JSON");
            return value;
        }

        private void space() {
            while (at < text.length() && Character.isWhitespace(text.charAt(at))) at++;
        }

        private Object value() {
            space();
            char c = text.charAt(at);
            if (c == '{') {
                Map<String, Object> object = new LinkedHashMap<>();
                at++;
                space();
                if (text.charAt(at) == '}') { at++; return object; }
                do {
                    space();
                    String key = string();
                    space();
                    at++; // ':'
                    object.put(key, value());
                    space();
                } while (text.charAt(at++) == ',');
                return object;
            }
            if (c == '[') {
                List<Object> array = new ArrayList<>();
                at++;
                space();
                if (text.charAt(at) == ']') { at++; return array; }
                do {
                    array.add(value());
                    space();
                } while (text.charAt(at++) == ',');
                return array;
            }
            if (c == '"') return string();
            if (text.startsWith("true", at)) { at += 4; return Boolean.TRUE; }
            if (text.startsWith("false", at)) { at += 5; return Boolean.FALSE; }
            if (text.startsWith("null", at)) { at += 4; return null; }
            int start = at;
            while (at < text.length() && "+-0123456789.eE".indexOf(text.charAt(at)) >= 0) at++;
            String number = text.substring(start, at);
            if (number.matches("-?\\d+")) return Long.parseLong(number);
            return Double.parseDouble(number);
        }

        private String string() {
            StringBuilder out = new StringBuilder();
            at++; // opening quote
            while (true) {
                char c = text.charAt(at++);
                if (c == '"') return out.toString();
                if (c != '\\') { out.append(c); continue; }
                char e = text.charAt(at++);
                switch (e) {
                    case 'n' -> out.append('\n');
                    case 't' -> out.append('\t');
                    case 'r' -> out.append('\r');
                    case 'b' -> out.append('\b');
                    case 'f' -> out.append('\f');
                    case 'u' -> { out.append((char) Integer.parseInt(text.substring(at, at + 4), 16)); at += 4; }
                    default -> out.append(e);
                }
            }
        }

        static String write(Object value) {
            if (value == null) return "null";
            if (value instanceof String s) {
                StringBuilder out = new StringBuilder("\"");
                for (char c : s.toCharArray()) {
                    if (c == '"' || c == '\\') out.append('\\').append(c);
                    else if (c < 0x20) out.append(String.format("\\u%04x", (int) c));
                    else out.append(c);
                }
                return out.append('"').toString();
            }
            if (value instanceof Map<?, ?> map) {
                List<String> parts = new ArrayList<>();
                map.forEach((k, v) -> parts.add(write(String.valueOf(k)) + ":" + write(v)));
                return "{" + String.join(",", parts) + "}";
            }
            if (value instanceof List<?> list) {
                List<String> parts = new ArrayList<>();
                list.forEach(v -> parts.add(write(v)));
                return "[" + String.join(",", parts) + "]";
            }
            if (value instanceof Double d && d == Math.rint(d) && !Double.isInfinite(d)) {
                return Long.toString(d.longValue());
            }
            return value.toString(); // numbers and booleans
        }
    }
}
