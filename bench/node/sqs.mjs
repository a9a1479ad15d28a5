// The JavaScript SDK v3's SQS loop, as bench/sqs.py runs boto3's: one client, one message
// at a time awaited, send / receive / delete `--batch` messages a round (SendMessage,
// ReceiveMessage, DeleteMessage; or their batches of 10), `--messages` messages a run, after
// a warm-up of 100. Prints one JSON line: the messages a second of each of `--repeats` runs.
// The endpoint is `--url` (Katar or moto's server); the SDK checks every MD5 it is sent.
import { parseArgs } from "node:util";
import { Agent } from "node:http";
import {
  SQSClient,
  CreateQueueCommand,
  SendMessageCommand,
  SendMessageBatchCommand,
  ReceiveMessageCommand,
  DeleteMessageCommand,
  DeleteMessageBatchCommand,
} from "@aws-sdk/client-sqs";

const args = parseArgs({
  options: {
    url: { type: "string" },
    batch: { type: "string", default: "1" },
    messages: { type: "string", default: "1000" },
    repeats: { type: "string", default: "3" },
  },
}).values;
const batch = Number(args.batch);
const messages = Number(args.messages);

const client = new SQSClient({
  endpoint: args.url,
  region: "us-east-1",
  credentials: { accessKeyId: "AKIDEXAMPLE000000", secretAccessKey: "any" },
  // One keep-alive connection, as boto3's loop has.
  requestHandler: { httpAgent: new Agent({ keepAlive: true, maxSockets: 1 }) },
});
const { QueueUrl } = await client.send(new CreateQueueCommand({ QueueName: `bench-node-${batch}` }));
const ids = Array.from({ length: batch }, (_, i) => String(i));

async function run(count) {
  for (let done = 0; done + batch <= count; done += batch) {
    if (batch === 1) {
      await client.send(new SendMessageCommand({ QueueUrl, MessageBody: '{"n": 1}' }));
    } else {
      await client.send(
        new SendMessageBatchCommand({
          QueueUrl,
          Entries: ids.map((Id) => ({ Id, MessageBody: '{"n": 1}' })),
        }),
      );
    }
    const got = await client.send(
      new ReceiveMessageCommand({ QueueUrl, MaxNumberOfMessages: batch }),
    );
    if (!got.Messages || got.Messages.length !== batch) {
      throw new Error(`received ${got.Messages?.length ?? 0} of ${batch}`);
    }
    if (batch === 1) {
      await client.send(
        new DeleteMessageCommand({ QueueUrl, ReceiptHandle: got.Messages[0].ReceiptHandle }),
      );
    } else {
      const deleted = await client.send(
        new DeleteMessageBatchCommand({
          QueueUrl,
          Entries: got.Messages.map((m, i) => ({ Id: String(i), ReceiptHandle: m.ReceiptHandle })),
        }),
      );
      if (deleted.Failed?.length) {
        throw new Error(`failed deletes: ${JSON.stringify(deleted.Failed)}`);
      }
    }
  }
}

await run(Math.min(messages, 100));
const rates = [];
for (let i = 0; i < Number(args.repeats); i++) {
  const started = process.hrtime.bigint();
  await run(messages);
  rates.push(messages / (Number(process.hrtime.bigint() - started) / 1e9));
}
client.destroy();
console.log(JSON.stringify({ rates }));
