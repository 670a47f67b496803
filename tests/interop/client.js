// A Node.js client of ortserve, built only from the files in protos/ (@grpc/proto-loader):
// ServerMetadata, ModelMetadata and ModelInfer against a running daemon. Prints one JSON line.
//   node tests/interop/client.js 127.0.0.1:PORT MODEL
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [address, model] = process.argv.slice(2);
const protos = path.join(__dirname, "..", "..", "protos");
const definition = protoLoader.loadSync(path.join(protos, "grpc_service.proto"), {
  includeDirs: [protos],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
});
const inference = grpc.loadPackageDefinition(definition).inference;
const client = new inference.GRPCInferenceService(address, grpc.credentials.createInsecure());
const deadline = () => new Date(Date.now() + 20000);

function call(method, request) {
  return new Promise((resolve, reject) =>
    client[method](request, { deadline: deadline() }, (err, reply) => (err ? reject(err) : resolve(reply))),
  );
}

async function main() {
  const server = await call("ServerMetadata", {});
  const meta = await call("ModelMetadata", { name: model });
  const input = meta.inputs[0];
  const values = Float32Array.from([1.5, 2.5, 3.5, 4.5]);
  const reply = await call("ModelInfer", {
    model_name: model,
    id: "from-node",
    inputs: [{ name: input.name, datatype: "FP32", shape: [1, 4] }],
    raw_input_contents: [Buffer.from(values.buffer)],
  });
  const raw = reply.raw_output_contents[0];
  const out = Array.from(new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length)));
  let error = null;
  try {
    await call("ModelInfer", { model_name: "no-such-model" });
  } catch (err) {
    error = { code: err.code, details: err.details };
  }
  console.log(JSON.stringify({ server: server.name, extensions: server.extensions,
    platform: meta.platform, input: input.name, id: reply.id, version: reply.model_version,
    output: out, error }));
  client.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
