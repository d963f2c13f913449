// The unmodified @lmstudio/sdk against lmsd (tests/integration/test_sdk_js.py runs it):
// list, load, respond with streaming, embed, unload. Prints one JSON line of facts.
import { LMStudioClient } from "@lmstudio/sdk";

const [baseUrl, llmKey, embedderKey] = process.argv.slice(2);
const client = new LMStudioClient({ baseUrl, logger: { info() {}, debug() {}, warn: console.error, error: console.error } });
const facts = {};

const downloaded = await client.system.listDownloadedModels();
facts.downloaded = downloaded.map((m) => m.modelKey);

// Without an admin key, SDK loads are just-in-time loads (docs/sdk.md): loading the LLM
// after the embedder unloads it (auto-evict), as LM Studio does with JIT models.
if (embedderKey) {
  const embedder = await client.embedding.model(embedderKey);
  const { embedding } = await embedder.embed("Some text to embed");
  facts.embeddingLength = embedding.length;
}

const model = await client.llm.load(llmKey, { identifier: "js-llm", ttl: 300 });
facts.loadedIdentifier = model.identifier;
facts.loaded = (await client.llm.listLoaded()).map((m) => m.identifier);

const prediction = model.respond([{ role: "user", content: "Say hello." }], {
  maxTokens: 8,
  temperature: 0,
});
facts.fragments = 0;
for await (const fragment of prediction) {
  if (typeof fragment.content === "string") facts.fragments += 1;
}
const result = await prediction.result();
facts.content = result.content;
facts.stopReason = result.stats.stopReason;
facts.predictedTokens = result.stats.predictedTokensCount;

await model.unload();
facts.afterUnload = (await client.llm.listLoaded()).map((m) => m.identifier);
console.log(JSON.stringify(facts));
process.exit(0);
