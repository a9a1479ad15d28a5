// The AWS SDK for JavaScript v3 and sqs-consumer, unmodified, against Katar: run by
// tests/sqs/test_node.py with KATAR_URL set. Prints one JSON line of what it saw; exits
// non-zero on any failure (the SDK's own MD5 checks of the bodies included).
import {
  SQSClient,
  CreateQueueCommand,
  SendMessageCommand,
  SendMessageBatchCommand,
  ReceiveMessageCommand,
  DeleteMessageCommand,
  GetQueueAttributesCommand,
} from "@aws-sdk/client-sqs";
import { Consumer } from "sqs-consumer";
import { createHash } from "node:crypto";

// MD5OfMessageAttributes as SQS documents it, written here apart from Katar's (the SDK
// checks the bodies' digests only): by name in byte order, each name and type as a 4-byte
// length and bytes, a transport byte (1 string, 2 binary) and the value likewise.
function md5OfAttributes(attributes) {
  const hash = createHash("md5");
  const field = (bytes) => {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(bytes.length);
    hash.update(length);
    hash.update(bytes);
  };
  const names = Object.keys(attributes).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  for (const name of names) {
    const value = attributes[name];
    field(Buffer.from(name));
    field(Buffer.from(value.DataType));
    const binary = value.BinaryValue !== undefined;
    hash.update(Buffer.from([binary ? 2 : 1]));
    field(binary ? Buffer.from(value.BinaryValue) : Buffer.from(value.StringValue));
  }
  return hash.digest("hex");
}

const endpoint = process.env.KATAR_URL;
const client = new SQSClient({
  endpoint,
  region: "us-east-1",
  credentials: { accessKeyId: "AKIDEXAMPLE000000", secretAccessKey: "any" },
  // The SDK checks the MD5 of every body it sends and receives (its default, md5), and
  // fails the call on a wrong one.
});

const seen = {};
const { QueueUrl } = await client.send(new CreateQueueCommand({ QueueName: "node" }));
seen.queueUrl = QueueUrl;
const attributes = {
  lang: { DataType: "String", StringValue: "en" },
  count: { DataType: "Number", StringValue: "3" },
  blob: { DataType: "Binary", BinaryValue: new Uint8Array([0, 1, 2, 255]) },
};
const sent = await client.send(
  new SendMessageCommand({ QueueUrl, MessageBody: "héllo from node", MessageAttributes: attributes }),
);
seen.sent = { MessageId: sent.MessageId, MD5OfMessageAttributes: sent.MD5OfMessageAttributes };
const got = await client.send(
  new ReceiveMessageCommand({
    QueueUrl,
    MessageAttributeNames: ["All"],
    MessageSystemAttributeNames: ["All"],
    WaitTimeSeconds: 1,
  }),
);
const message = got.Messages[0];
seen.received = {
  Body: message.Body,
  MessageId: message.MessageId,
  lang: message.MessageAttributes.lang.StringValue,
  blob: Array.from(message.MessageAttributes.blob.BinaryValue),
  receiveCount: message.Attributes.ApproximateReceiveCount,
};
await client.send(new DeleteMessageCommand({ QueueUrl, ReceiptHandle: message.ReceiptHandle }));

// A task enqueued natively with the same attributes: received with them, the SDK checking
// its digests.
const enqueued = await fetch(`${endpoint}/v1/queue/node/tasks`, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify({
    data: "native",
    attributes: {
      MessageAttributes: {
        lang: { DataType: "String", StringValue: "en" },
        count: { DataType: "Number", StringValue: "3" },
        blob: { DataType: "Binary", BinaryValue: Buffer.from([0, 1, 2, 255]).toString("base64") },
      },
    },
  }),
});
if (enqueued.status !== 201) throw new Error(`native enqueue: ${enqueued.status}`);
const native = (
  await client.send(
    new ReceiveMessageCommand({ QueueUrl, MessageAttributeNames: ["All"], WaitTimeSeconds: 1 }),
  )
).Messages[0];
seen.native = {
  Body: native.Body,
  lang: native.MessageAttributes.lang.StringValue,
  blob: Array.from(native.MessageAttributes.blob.BinaryValue),
  sameDigest: native.MD5OfMessageAttributes === sent.MD5OfMessageAttributes,
  digestChecked: native.MD5OfMessageAttributes === md5OfAttributes(native.MessageAttributes),
};
await client.send(new DeleteMessageCommand({ QueueUrl, ReceiptHandle: native.ReceiptHandle }));

// sqs-consumer: a batch sent, consumed by a Consumer that deletes each message it handled.
await client.send(
  new SendMessageBatchCommand({
    QueueUrl,
    Entries: [0, 1, 2, 3, 4].map((i) => ({
      Id: `m${i}`,
      MessageBody: `job ${i}`,
      MessageAttributes: { n: { DataType: "Number", StringValue: String(i) } },
    })),
  }),
);
const handled = [];
await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`consumed only ${handled.length}`)), 30000);
  const consumer = Consumer.create({
    queueUrl: QueueUrl,
    sqs: client,
    batchSize: 10,
    waitTimeSeconds: 1,
    messageAttributeNames: ["All"],
    handleMessage: async (m) => {
      handled.push(m.Body);
      if (handled.length === 5) {
        clearTimeout(timer);
        setTimeout(() => {
          consumer.stop({ abort: false });
        }, 200);
      }
      return m;
    },
  });
  consumer.on("error", (err) => reject(err));
  consumer.on("processing_error", (err) => reject(err));
  consumer.on("stopped", () => resolve());
  consumer.start();
});
seen.consumed = handled.sort();
// Give the consumer's deletes a moment to land, then count what is left.
await new Promise((r) => setTimeout(r, 500));
const counts = await client.send(
  new GetQueueAttributesCommand({
    QueueUrl,
    AttributeNames: ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
  }),
);
seen.left = counts.Attributes;
console.log(JSON.stringify(seen));
