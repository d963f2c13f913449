// The unmodified @lmstudio/sdk against a daemon whose models are an upstream's
// (tests/integration/test_remote_sdk.py runs it): list, a handle, respond with streaming,
// embed, and the refused unload. Prints one JSON line of facts.
import { LMStudioClient } from "@lmstudio/sdk";

const [baseUrl, llmKey, embedderKey] = process.argv.slice(2);
const client = new LMStudioClient({ baseUrl, logger: { info() {}, debug() {}, warn: console.error, error: console.error } });
const facts = {};

const downloaded = await client.system.listDownloadedModels();
facts.downloaded = downloaded.map((m) => m.modelKey);
facts.loaded = (await client.llm.listLoaded()).map((m) => m.identifier);

const model = await client.llm.model(llmKey);
facts.identifier = model.identifier;
const prediction = model.respond([{ role: "user", content: "hello there friend" }]);
facts.fragments = [];
for await (const fragment of prediction) facts.fragments.push(fragment.content);
const result = await prediction.result();
facts.content = result.content;
facts.predictedTokens = result.stats.predictedTokensCount;

const embedder = await client.embedding.model(embedderKey);
facts.embeddingLength = (await embedder.embed("a cat")).embedding.length;

try {
  await model.unload();
  facts.unload = "unloaded";
} catch (error) {
  facts.unload = String(error.message ?? error);
}
console.log(JSON.stringify(facts));
process.exit(0);
