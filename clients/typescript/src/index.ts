// katar: a producer and a worker for Katar, the HTTP task-queue server.

export { Connection, KatarError, backoff, isTransient, type ConnectionOptions } from "./http.js";
export { Producer, type BatchTask, type EnqueueOptions, type ListOptions, type ProducerOptions, type TaskPage, type TraceContext } from "./producer.js";
export { Fail, Retry, Worker, type Handler, type Task, type TaskContext, type WorkerOptions } from "./worker.js";
export type { Ack, Delivery, NewTask, QueueInfo, QueueOptions, TaskRecord } from "./openapi-types.js";
/** Every schema and route of the server's OpenAPI document, as TypeScript types. */
export type * as api from "./openapi-types.js";
