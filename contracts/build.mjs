// Compiles the Solidity interfaces and devnet contracts with the pinned npm solc (standard JSON).
//
//   node contracts/build.mjs        (from the repository root; also `make contracts`)
//
// Writes, with stable formatting so that a rebuild gives no diff:
//   executor/abi/<Name>.json            the ABI of interfaces/I<Name>.sol: what the executor uses
//   contracts/devnet/build/<Name>.json   {"abi": [...], "bytecode": "0x..."} of devnet/<Name>.sol
//   executor/abi/<Name>.json            also the ABI of each interfaces/I<Name>.sol in OWNER_ABIS:
//                                        what `oyster-executor owner` sends the owner's calls with
// Any compiler error or warning fails the build.

import { mkdirSync, readdirSync, readFileSync, writeFileSync, existsSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const CONTRACTS = dirname(fileURLToPath(import.meta.url));
const ABI_DIR = join(CONTRACTS, "..", "executor", "abi"); // package data: the wheel carries it
const SOURCE_DIRS = ["interfaces", "devnet"];
const CONTRACT_NAMES = ["Jobs", "TeeManager", "UserCode"];
/** Devnet contracts without an interface of the executor's (samples for dApp developers). */
const DEVNET_ONLY = ["OysterConsumer"];
const OWNER_ABIS = ["OysterTeeManager", "DevnetTeeManager", "StakingToken"];

function readSources() {
  const sources = {};
  for (const dir of SOURCE_DIRS) {
    for (const file of readdirSync(join(CONTRACTS, dir)).filter((f) => f.endsWith(".sol")).sort()) {
      const unit = `${dir}/${file}`;
      sources[unit] = { content: readFileSync(join(CONTRACTS, unit), "utf8") };
    }
  }
  return sources;
}

function compile(sources) {
  const input = {
    language: "Solidity",
    sources,
    settings: {
      optimizer: { enabled: true, runs: 200 },
      outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
    },
  };
  // Every source is passed in; an import of anything else is a mistake, not something to fetch.
  const missingImport = (path) => ({ error: `import not found: ${path} (only contracts/ is compiled)` });
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: missingImport }));
  const problems = (output.errors ?? []).filter((e) => e.severity !== "info");
  for (const problem of problems) {
    process.stderr.write(`${problem.formattedMessage}\n`);
  }
  if (problems.length > 0) {
    const errors = problems.filter((e) => e.severity === "error").length;
    const warnings = problems.length - errors;
    throw new Error(`solc ${solc.version()}: ${errors} error(s), ${warnings} warning(s)`);
  }
  return output.contracts;
}

function contractOutput(contracts, unit, name) {
  const out = contracts[unit]?.[name];
  if (!out) throw new Error(`solc produced no output for ${unit}:${name}`);
  return out;
}

/** Writes `value` as 2-space JSON with a trailing newline; returns whether the file changed. */
function writeJson(path, value) {
  const text = `${JSON.stringify(value, null, 2)}\n`;
  if (existsSync(path) && readFileSync(path, "utf8") === text) return false;
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text);
  return true;
}

function main() {
  const contracts = compile(readSources());
  const written = [];
  for (const name of CONTRACT_NAMES) {
    const iface = contractOutput(contracts, `interfaces/I${name}.sol`, `I${name}`);
    const devnet = contractOutput(contracts, `devnet/${name}.sol`, name);
    const targets = [
      [join(ABI_DIR, `${name}.json`), iface.abi],
      [
        join(CONTRACTS, "devnet", "build", `${name}.json`),
        { abi: devnet.abi, bytecode: `0x${devnet.evm.bytecode.object}` },
      ],
    ];
    for (const [path, value] of targets) {
      if (writeJson(path, value)) written.push(path);
    }
  }
  for (const name of DEVNET_ONLY) {
    const devnet = contractOutput(contracts, `devnet/${name}.sol`, name);
    const path = join(CONTRACTS, "devnet", "build", `${name}.json`);
    if (writeJson(path, { abi: devnet.abi, bytecode: `0x${devnet.evm.bytecode.object}` })) {
      written.push(path);
    }
  }
  for (const name of OWNER_ABIS) {
    const iface = contractOutput(contracts, `interfaces/I${name}.sol`, `I${name}`);
    if (writeJson(join(ABI_DIR, `${name}.json`), iface.abi)) {
      written.push(join(ABI_DIR, `${name}.json`));
    }
  }
  const summary = written.length ? `updated ${written.length} file(s)` : "no changes";
  const names = [...CONTRACT_NAMES, ...DEVNET_ONLY, ...OWNER_ABIS];
  process.stdout.write(`solc ${solc.version()}: compiled ${names.join(", ")}; ${summary}\n`);
  for (const path of written) process.stdout.write(`  ${relative(process.cwd(), path)}\n`);
}

try {
  main();
} catch (error) {
  process.stderr.write(`contracts/build.mjs: ${error.message}\n`);
  process.exit(1);
}
