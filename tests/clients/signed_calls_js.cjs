// Makes Firehose calls with the AWS SDK for JavaScript v3 as the scenarios in argv[3] (a JSON
// list) describe, and prints one JSON line per scenario with what happened: {"name", "ok",
// "code", "status", "message"}. The expectations live in the Rust test that runs it.
// A scenario: {"name", "op", "stream", "key_id", "secret", "skew_seconds"}; the SDK's own
// clock-skew correction is off (one attempt), so a skewed clock shows the service's answer.
//
// usage: NODE_PATH=<node_modules> node signed_calls_js.cjs ENDPOINT SCENARIOS_JSON
const {
  FirehoseClient,
  PutRecordCommand,
  PutRecordBatchCommand,
  ListDeliveryStreamsCommand,
  DescribeDeliveryStreamCommand,
} = require("@aws-sdk/client-firehose");

const [endpoint, scenariosJson] = process.argv.slice(2);

async function run(scenario) {
  const client = new FirehoseClient({
    endpoint,
    region: "us-east-1",
    maxAttempts: 1,
    systemClockOffset: (scenario.skew_seconds || 0) * 1000,
    credentials: { accessKeyId: scenario.key_id, secretAccessKey: scenario.secret },
  });
  const data = (text) => new TextEncoder().encode(text);
  const commands = {
    PutRecord: () =>
      new PutRecordCommand({ DeliveryStreamName: scenario.stream, Record: { Data: data('{"via":"js"}') } }),
    PutRecordBatch: () =>
      new PutRecordBatchCommand({
        DeliveryStreamName: scenario.stream,
        Records: [{ Data: data('{"via":"js","n":1}') }, { Data: data('{"via":"js","n":2}') }],
      }),
    ListDeliveryStreams: () => new ListDeliveryStreamsCommand({}),
    DescribeDeliveryStream: () => new DescribeDeliveryStreamCommand({ DeliveryStreamName: scenario.stream }),
  };
  try {
    const answer = await client.send(commands[scenario.op]());
    delete answer.$metadata;
    return { ok: true, status: 200, body: answer };
  } catch (error) {
    return {
      ok: false,
      code: error.name,
      status: error.$metadata ? error.$metadata.httpStatusCode : null,
      message: error.message,
    };
  }
}

(async () => {
  for (const scenario of JSON.parse(scenariosJson)) {
    console.log(JSON.stringify({ name: scenario.name, ...(await run(scenario)) }));
  }
})();
