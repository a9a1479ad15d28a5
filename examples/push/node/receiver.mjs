// A push receiver on Node's plain http module: verifies each push with the unmodified
// standardwebhooks package, answers 200 with a JSON result (the task's result in Katar).
//   npm ci; KATAR_SECRET=whsec_... PORT=8080 node receiver.mjs
// It prints one line a push: {"verified": true, "id": "<task id>", "attempt": n}.
import http from "node:http";
import { Webhook } from "standardwebhooks";

const webhook = new Webhook(process.env.KATAR_SECRET);

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    let task;
    try {
      task = webhook.verify(body, req.headers);
    } catch {
      console.log(JSON.stringify({ verified: false }));
      res.writeHead(401).end();
      return;
    }
    console.log(JSON.stringify({ verified: true, id: task._id, attempt: task.attempt }));
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ handledBy: "node", data: task.data }));
  });
});
server.listen(Number(process.env.PORT ?? 8080), "127.0.0.1", () => {
  console.log(JSON.stringify({ listening: server.address().port }));
});
