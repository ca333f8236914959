// Builds contracts/build/ExitNodeRegistry.json with solc-js (version pinned in package.json).
//   node compile.js           compile and write the artifact
//   node compile.js --check   compile and exit 1 if the committed artifact differs
//   node compile.js --build-info DIR
//                             also write a Hardhat-style build-info (standard-JSON input and
//                             output with the AST) under DIR/artifacts/build-info/, which
//                             static analysers (Slither through crytic-compile) read instead
//                             of running a native solc; the committed artifact is unaffected
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

function compile(source, settings) {
  const input = { language: "Solidity", sources: { [SOURCE_FILE]: { content: source } }, settings };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const problems = (output.errors || []).filter((e) => e.severity === "error" || e.type === "Warning");
  if (problems.length > 0) {
    for (const e of problems) process.stderr.write(`${e.formattedMessage}\n`);
    process.exit(1);
  }
  return { input, output };
}

function writeBuildInfo(dir) {
  const source = readFileSync(join(HERE, SOURCE_FILE), "utf8");
  const settings = {
    ...SETTINGS,
    outputSelection: {
      "*": { "*": ["abi", "evm.bytecode", "evm.deployedBytecode", "evm.methodIdentifiers", "userdoc", "devdoc"], "": ["ast"] },
    },
  };
  const { input, output } = compile(source, settings);
  const long = solc.version();
  const info = {
    _format: "hh-sol-build-info-1",
    id: createHash("sha256").update(source, "utf8").digest("hex").slice(0, 32),
    solcVersion: long.split("+")[0],
    solcLongVersion: long,
    input,
    output,
  };
  const out = join(dir, "artifacts", "build-info");
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, `${info.id}.json`), JSON.stringify(info));
  process.stdout.write(`wrote build-info for solc ${long} in ${out}\n`);
}

function build() {
  const source = readFileSync(join(HERE, SOURCE_FILE), "utf8");
  const { output } = compile(source, SETTINGS);
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

const buildInfoAt = process.argv.indexOf("--build-info");
if (buildInfoAt >= 0) {
  const dir = process.argv[buildInfoAt + 1];
  if (!dir) {
    process.stderr.write("--build-info needs a directory\n");
    process.exit(2);
  }
  writeBuildInfo(dir);
  process.exit(0);
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
