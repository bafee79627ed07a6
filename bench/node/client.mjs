// The Node column: OpenAI's official SDK (npm "openai") pointed at the
// local bench server. node client.mjs stream|seq|multi|startup ENDPOINT [N]
import { OpenAI } from "openai";

const [mode, endpoint, nArg] = process.argv.slice(2);
const n = Number(nArg || 0);
const client = new OpenAI({ baseURL: endpoint + "/v1", apiKey: "bench", maxRetries: 0 });
const messages = [{ role: "user", content: "hi" }];
const R = { client: "node-openai", mode };

async function stream() {
  let events = 0, bytes = 0, want = -1, wantev = -1;
  const s = await client.chat.completions.create({
    model: "bench", messages, max_tokens: 16, stream: true,
    stream_options: { include_usage: true },
  });
  for await (const chunk of s) {
    const c = chunk.choices[0]?.delta?.content;
    if (typeof c === "string" && c !== "") {
      events++;
      bytes += Buffer.byteLength(c, "utf8");
    }
    if (chunk.usage) {
      want = chunk.timings.bench_content_bytes;
      wantev = chunk.timings.bench_events;
    }
  }
  return { events, bytes, want, wantev };
}

function result() {
  R.maxrss_kb = process.resourceUsage().maxRSS;
  const keys = Object.keys(R).sort();
  console.log("RESULT " + keys.map((k) => `${k}=${R[k]}`).join(" "));
  process.exitCode = R.ok === 1 ? 0 : 1;
}

const c0 = process.cpuUsage(), t0 = process.hrtime.bigint();
const took = () => {
  const c = process.cpuUsage(c0);
  R.cpu_us = c.user + c.system;
  R.wall_us = Number(process.hrtime.bigint() - t0) / 1e3;
};

if (mode === "stream") {
  const r = await stream();
  took();
  Object.assign(R, { events: r.events, bytes: r.bytes, want_bytes: r.want, want_events: r.wantev });
  R.ok = r.bytes === r.want && r.events === r.wantev ? 1 : 0;
} else if (mode === "startup") {
  const res = await client.chat.completions.create({ model: "bench", messages, max_tokens: 16 });
  const c = process.cpuUsage();
  R.cpu_us = c.user + c.system;               // from the start of the process
  R.ok = Buffer.byteLength(res.choices[0].message.content, "utf8") ===
         res.timings.bench_content_bytes ? 1 : 0;
} else if (mode === "seq") {
  let bytes = 0, want = 0, failed = 0;
  const seen = new Set();
  for (let i = 0; i < n; i++) {
    const res = await client.chat.completions.create({ model: "bench", messages, max_tokens: 16 });
    bytes += Buffer.byteLength(res.choices[0].message.content, "utf8");
    want += res.timings.bench_content_bytes;
    seen.add(res.timings.bench_conn);
  }
  took();
  Object.assign(R, { requests: n, failed, bytes, want_bytes: want, conns: seen.size });
  R.ok = bytes === want ? 1 : 0;
} else if (mode === "multi") {
  const rs = await Promise.all(Array.from({ length: n }, () => stream()));
  took();
  let events = 0, bytes = 0, want = 0, failed = 0;
  for (const r of rs) {
    events += r.events; bytes += r.bytes; want += r.want;
    if (r.bytes !== r.want) failed++;
  }
  Object.assign(R, { streams: n, failed, events, bytes, want_bytes: want });
  R.ok = failed === 0 && bytes === want ? 1 : 0;
} else {
  throw new Error("unknown mode " + mode);
}
result();
