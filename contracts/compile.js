// Builds contracts/build/ExitNodeRegistry.json with solc-js (version pinned in package.json).
//   node compile.js           compile and write the artifact
//   node compile.js --check   compile and exit 1 if the committed artifact differs
// Settings are fixed here so every machine produces the same bytecode. evmVersion "prague":
// the P256VERIFY precompile is reached with a plain STATICCALL, which needs nothing newer, and
// prague keeps the bytecode runnable on chains that do not know osaka's new opcodes.
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const HERE = dirname(fileURLToPath(import.meta.url));
const NAME = "ExitNodeRegistry";
const SOURCE_FILE = `${NAME}.sol`;
const ARTIFACT = join(HERE, "build", `${NAME}.json`);
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "prague",
  metadata: { bytecodeHash: "none" },
  outputSelection: { [SOURCE_FILE]: { [NAME]: ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

function build() {
  const source = readFileSync(join(HERE, SOURCE_FILE), "utf8");
  const input = { language: "Solidity", sources: { [SOURCE_FILE]: { content: source } }, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const problems = (output.errors || []).filter((e) => e.severity === "error" || e.type === "Warning");
  if (problems.length > 0) {
    for (const e of problems) process.stderr.write(`${e.formattedMessage}\n`);
    process.exit(1);
  }
  const c = output.contracts[SOURCE_FILE][NAME];
  return {
    contractName: NAME,
    sourceFile: SOURCE_FILE,
    sourceSha256: createHash("sha256").update(source, "utf8").digest("hex"),
    compiler: { name: "solc-js", version: solc.version(), settings: SETTINGS },
    abi: c.abi,
    bytecode: `0x${c.evm.bytecode.object}`,
    deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
  };
}

const text = `${JSON.stringify(build(), null, 2)}\n`;
if (process.argv.includes("--check")) {
  let committed = "";
  try {
    committed = readFileSync(ARTIFACT, "utf8");
  } catch {
    committed = "";
  }
  if (committed !== text) {
    process.stderr.write(`${ARTIFACT} does not match ${SOURCE_FILE}; run: node compile.js\n`);
    process.exit(1);
  }
  process.stdout.write("artifact matches source\n");
} else {
  mkdirSync(dirname(ARTIFACT), { recursive: true });
  writeFileSync(ARTIFACT, text);
  process.stdout.write(`wrote ${ARTIFACT}\n`);
}
