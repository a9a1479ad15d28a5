// A Katar worker in Java 17 with nothing but the standard library (java.net.http).
//
//   KATAR_URL=http://127.0.0.1:3000 java examples/java/Worker.java QUEUE
//
// The work: a task's data is {"n": <number>}; its result is {"by": "java", "square": n*n}.
// Replace handle() with your own. Java's standard library has no JSON, so a small reader
// and writer for it close this file; in a real project, use the JSON library you have.

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

public class Worker {
    static final String URL = System.getenv().getOrDefault("KATAR_URL", "http://127.0.0.1:3000");
    // HTTP/1.1: the default would ask every request to upgrade to HTTP/2, which Katar does
    // not speak.
    static final HttpClient HTTP = HttpClient.newBuilder()
            .version(HttpClient.Version.HTTP_1_1)
            .connectTimeout(Duration.ofSeconds(5))
            .build();
    // Counted down by SIGTERM or SIGINT: finish the current task, report it, then leave.
    static final CountDownLatch STOPPING = new CountDownLatch(1);
    static final CountDownLatch STOPPED = new CountDownLatch(1);

    static Object handle(Object data) {
        double n = ((Number) ((Map<?, ?>) data).get("n")).doubleValue();
        Map<String, Object> result = new LinkedHashMap<>();
        result.put("by", "java");
        result.put("square", n * n);
        return result;
    }

    /** Status 0 means no answer at all. */
    record Reply(int status, String body) {}

    static Reply send(String method, String path, String body) {
        HttpRequest.Builder request = HttpRequest.newBuilder(URI.create(URL + path))
                .timeout(Duration.ofSeconds(60))
                .header("Content-Type", "application/json");
        String token = System.getenv("KATAR_TOKEN");
        if (token != null && !token.isEmpty()) request.header("Authorization", "Bearer " + token);
        request.method(method, body == null
                ? HttpRequest.BodyPublishers.noBody()
                : HttpRequest.BodyPublishers.ofString(body));
        try {
            HttpResponse<String> response = HTTP.send(request.build(), HttpResponse.BodyHandlers.ofString());
            return new Reply(response.statusCode(), response.body());
        } catch (java.io.IOException e) {
            return new Reply(0, e.toString());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return new Reply(0, e.toString());
        }
    }

    static boolean stopping() {
        return STOPPING.getCount() == 0;
    }

    /** Sleep, cut short by a signal. */
    static void nap(long millis) throws InterruptedException {
        STOPPING.await(millis, TimeUnit.MILLISECONDS);
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: java Worker.java QUEUE");
            System.exit(2);
        }
        String queue = args[0];
        // The JVM runs shutdown hooks on SIGTERM and SIGINT; this one waits for the loop to
        // send its last acks, then ends the process with status 0: a clean stop.
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            STOPPING.countDown();
            try {
                if (STOPPED.await(30, TimeUnit.SECONDS)) Runtime.getRuntime().halt(0);
            } catch (InterruptedException ignored) {
                Thread.currentThread().interrupt();
            }
        }));
        try {
            work(queue);
        } finally {
            STOPPED.countDown();
        }
    }

    static void work(String queue) throws InterruptedException {
        // 1. Read the queue's configuration: how often to poll, and anything else it holds.
        Reply reply;
        while ((reply = send("GET", "/v1/queue/" + queue, null)).status() != 200) {
            if (reply.status() >= 400 && reply.status() < 500) {
                System.err.println("the server rejected the request (" + reply.status() + "): " + reply.body());
                System.exit(1);
            }
            if (stopping()) return;
            System.err.println("cannot read the configuration of " + queue + "; trying again");
            nap(1000);
        }
        Map<?, ?> configuration = (Map<?, ?>) ((Map<?, ?>) Json.parse(reply.body())).get("configuration");
        long interval = ((Number) configuration.get("interval")).longValue();
        System.err.println("java worker ready on " + queue + ", polling every " + interval + " ms");

        // 2. Poll. The acks of the task just finished ride on the request for the next one.
        List<Object> acks = new ArrayList<>();
        int failures = 0;
        while (true) {
            if (stopping() && acks.isEmpty()) return;
            int take = stopping() ? 0 : 1; // last call: report, take nothing
            Map<String, Object> body = new LinkedHashMap<>();
            body.put("tasks", acks);
            body.put("max", take);
            reply = send("POST", "/v1/queue/" + queue, Json.write(body));
            int status = reply.status();
            if (status >= 400 && status < 500) {
                System.err.println("the server rejected the request (" + status + "): " + reply.body());
                System.exit(1);
            }
            if (status == 0 || status >= 500) {
                // No answer or a 5xx: keep the acks, back off (capped), try again.
                failures++;
                long delay = Math.min(5000, 250L << Math.min(failures, 10));
                System.err.println("no answer from the server (" + status + "); trying again in " + delay + " ms");
                nap(delay);
                continue;
            }
            failures = 0;
            acks = new ArrayList<>();
            if (take == 0) return;
            if (status == 204) {
                nap(interval); // nothing to do: wait for the next poll
                continue;
            }
            for (Object item : (List<?>) ((Map<?, ?>) Json.parse(reply.body())).get("tasks")) {
                Map<?, ?> task = (Map<?, ?>) item;
                Map<String, Object> ack = new LinkedHashMap<>();
                ack.put("_id", task.get("_id"));
                ack.put("attempt", task.get("attempt"));
                try {
                    ack.put("result", handle(task.get("data")));
                    ack.put("status", "done");
                } catch (RuntimeException e) {
                    ack.put("status", "failed");
                    ack.put("error", e.toString());
                }
                acks.add(ack);
            }
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
