// The hosted API's JavaScript SDK (@runware/sdk-js) pointed at the gateway with only its URL and key
// changed. tests/test_sdk_js.py writes the inputs as JSON (argv[2]) and reads this script's report
// (one JSON object on stdout); every step records what the SDK returned or threw.
import { readFileSync } from "node:fs";
import { RunwareServer } from "@runware/sdk-js";

const input = JSON.parse(readFileSync(process.argv[2], "utf8"));
const report = {};

async function attempt(name, step) {
  try {
    report[name] = { ok: await step() };
  } catch (error) {
    // The SDK rejects with the server's error item (under `error`) or an Error.
    report[name] = { error: error?.error ?? { message: String(error?.message ?? error) } };
  }
}

const runware = new RunwareServer({ apiKey: input.key, url: input.url, heartbeatInterval: 10000 });
await runware.ensureConnection();
const session = runware._connectionSessionUUID;
let pongs = 0;
const handlePong = runware.handlePongMessage.bind(runware);
runware.handlePongMessage = (message) => {
  const isPong = handlePong(message);
  if (isPong) pongs += 1;
  return isPong;
};

const common = { model: input.model, positivePrompt: input.prompt, steps: 3, width: input.width, height: input.height };
await attempt("upload", async () => runware.imageUpload({ image: input.image_b64 }));
const uploaded = report.upload.ok?.imageUUID;
await attempt("inpaint_uploaded_two", async () =>
  runware.requestImages({ ...common, seedImage: uploaded, maskImage: input.mask_b64, seed: 7, numberResults: 2 }));
await attempt("inpaint_data_uri", async () =>
  runware.imageInference({ ...common, seedImage: input.image_b64, maskImage: input.mask_data_uri, seed: 8 }));
const previous = report.inpaint_data_uri.ok?.[0]?.imageUUID;
await attempt("next_edit", async () =>
  runware.imageInference({ ...common, positivePrompt: "a green pear", seedImage: previous, maskImage: input.mask_b64, seed: 9 }));
await attempt("masking", async () => {
  const items = await runware.imageMasking({ inputImage: input.image_b64, model: "person", outputType: "URL" });
  return Array.isArray(items) ? items[0] : items;
});
await attempt("background", async () => {
  const items = await runware.removeImageBackground({ inputImage: input.image_b64, outputFormat: "PNG" });
  return Array.isArray(items) ? items[0] : items;
});
await attempt("out_of_range", async () =>
  runware.requestImages({ ...common, seedImage: input.image_b64, maskImage: input.mask_b64, steps: 500, retry: 1 }));

// Idle with only heartbeats on the wire, then a task on the same authenticated connection.
await new Promise((resolve) => setTimeout(resolve, input.idle_seconds * 1000));
await attempt("after_idle", async () => runware.imageUpload({ image: input.image_b64 }));
report.idle = { pongs, same_session: runware._connectionSessionUUID === session && Boolean(session) };
await runware.disconnect();

const wrong = new RunwareServer({ apiKey: "not-a-key", url: input.url, shouldReconnect: false });
await attempt("wrong_key", async () => wrong.ensureConnection());
await wrong.disconnect();

process.stdout.write(JSON.stringify(report));
process.exit(0);
