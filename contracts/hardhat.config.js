// Only for `hardhat node` (hardware/chain.py): a simulated L1 on the Osaka hardfork, where
// the P256VERIFY precompile (EIP-7951) exists. Contracts are built by compile.js, not Hardhat,
// so Hardhat's own artifacts and cache go to a scratch directory the caller chooses.
import { tmpdir } from "node:os";
import { join } from "node:path";

const scratch = process.env.SHADOWMESH_HARDHAT_DIR ?? join(tmpdir(), "shadowmesh-hardhat");

export default {
  paths: { artifacts: join(scratch, "artifacts"), cache: join(scratch, "cache") },
  networks: {
    node: { type: "edr-simulated", chainType: "l1", hardfork: "osaka" },
  },
};
