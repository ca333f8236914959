// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @title ShadowMesh exit-node registry
/// @notice Exit nodes stake, publish an endpoint and prove with a TPM 2.0 quote that they booted
/// a state whose PCR digest the owner approved, running a release whose runtime policy the owner
/// approved. The contract checks the quote itself: the ECDSA P-256 signature through the
/// P256VERIFY precompile (EIP-7951, address 0x100), the TPMS_ATTEST structure, qualifying data
/// in the registry's own domain (bound to this chain, this contract, a recent block hash and the
/// node id), the boot PCR digest against the approved set, and the TPM's firmware version, which
/// never goes back for a node. Stakes are slashed only on proofs verified here.
/// A quote proves nothing about where its key lives, so registration also needs an enrolment
/// voucher: an owner-appointed enroller (who checked the node's EK certificate chain, ran
/// MakeCredential/ActivateCredential for this AK and checked the exit's hybrid identity
/// signature over (operator, AK, nodeId, chain, registry), all off chain: attestation/enrol.py)
/// signs an EIP-712 typed Enrolment(operator, nodeId, akX, akY) for this contract and chain. The
/// voucher names the operator account because everything else register needs is public
/// calldata: without it anyone could copy a pending registration and become the node's operator.
/// @dev Quote format (shared with contracts/quote.py): TPMS_ATTEST big-endian, type
/// TPM_ST_ATTEST_QUOTE; extraData = keccak256(abi.encodePacked("shadowmesh/registry/v1",
/// block.chainid, address(this), blockhash(nonceBlock), nodeId)), a domain of its own: a quote a
/// client collected in a handshake (SHA-256 under "shadowmesh/handshake/v1") or a quote made for
/// another chain or registry never matches. Exactly one PCR selection: the SHA-256 bank with a
/// 3-byte bitmap equal to PCR_SELECTION (PCRs 0-9: firmware, boot loader, kernel command line).
/// PCR 10 (IMA) changes with every file the kernel measures, so runtime state is verified by
/// clients against the release's runtime policy, whose hash the registry records. The selection
/// is fixed because an approved digest means something only over the PCRs it was computed from.
/// Signature (r, s) over sha256(TPMS_ATTEST).
/// Voucher: 65 bytes r || s || v over the EIP-712 digest of Enrolment (see enrolmentDigest);
/// v is 27 or 28 and s in the lower half of the curve order (no malleable twin).
contract ExitNodeRegistry {
    enum Status {
        None,
        Active,
        Stale,
        Unbonding
    }

    struct Node {
        // slot 0
        address operator;
        uint64 lastAttestation;
        uint16 reputation;
        Status status;
        // slots 1, 2: AK public key (x, y), big-endian
        bytes32 akX;
        bytes32 akY;
        // slot 3
        uint128 stake;
        uint64 unbondingEnds;
        uint64 missedSlashedFor; // lastAttestation whose missed window was already slashed
        // slot 4
        uint64 lastNonceBlock;
        uint64 tpmClock; // TPM clock and reset count of the newest quote seen from this AK
        uint32 tpmResetCount;
        uint32 index; // position in nodeIds
        uint64 attestedWindow; // block.timestamp / attestationInterval of the last accepted quote
        // slot 5: the (reset, clock) a proof of a never-approved digest must be later than:
        // the registration quote, raised to each quote that slashed (see reportMisbehavior);
        // the TPM firmware version of the newest accepted quote; the release the node runs
        uint64 floorClock;
        uint32 floorResetCount;
        uint64 firmwareVersion;
        uint64 release;
        // slot 6
        bytes32 pcrDigest;
        string endpoint;
        // slot 8: where the operator says the node runs (see _checkRegion); zero: not said
        bytes8 region;
    }

    /// @dev What getNode returns: the stored record plus the derived health flag.
    struct NodeView {
        bytes32 nodeId;
        address operator;
        string endpoint;
        bytes32 akX;
        bytes32 akY;
        uint256 stake;
        uint256 lastAttestation;
        uint256 reputation;
        Status status;
        uint256 unbondingEnds;
        bytes32 pcrDigest;
        uint256 lastNonceBlock;
        uint256 release;
        uint256 firmwareVersion;
        bool healthy;
        bytes8 region;
    }

    struct Policy {
        bool approved;
        uint64 revokedAt;
    }

    /// @dev An approved release has a non-zero runtime policy hash (SHA-256 of its Keylime
    /// runtime-policy JSON, which clients fetch and check the node's IMA list against).
    struct Release {
        bytes32 runtimePolicy;
        uint64 revokedAt;
    }

    /// @dev A quote as submitted: TPMS_ATTEST, the signature (r, s) over its SHA-256, and the
    /// block whose hash is the quote's nonce.
    struct Quote {
        bytes attest;
        bytes32 r;
        bytes32 s;
        uint256 nonceBlock;
    }

    /// @dev The fields of TPMS_ATTEST the registry uses.
    struct Attest {
        bytes32 extraData;
        bytes32 pcrDigest;
        uint64 clock;
        uint32 resetCount;
        uint64 firmwareVersion;
    }

    address private constant P256VERIFY = address(0x100);
    bytes private constant REGISTRY_DOMAIN = "shadowmesh/registry/v1";
    uint32 private constant TPM_GENERATED = 0xFF544347;
    uint16 private constant TPM_ST_ATTEST_QUOTE = 0x8018;
    uint16 private constant TPM_ALG_SHA256 = 0x000B;
    uint256 private constant PCR_SELECT_BYTES = 3; // sizeofSelect for 24 PCRs
    bytes32 private constant EIP712_DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant ENROLMENT_TYPEHASH =
        keccak256("Enrolment(address operator,bytes32 nodeId,bytes32 akX,bytes32 akY)");
    bytes32 private constant NAME_HASH = keccak256("ShadowMesh ExitNodeRegistry");
    bytes32 private constant VERSION_HASH = keccak256("2");
    uint256 private constant MAX_ATTEST_BYTES = 1024;
    uint256 private constant MAX_ENDPOINT_BYTES = 256;
    uint256 private constant MAX_PAGE = 500;
    uint256 private constant VOUCHER_BYTES = 65;
    // secp256k1 order / 2: signatures with a larger s are the malleable twin of a valid one.
    uint256 private constant SECP256K1_HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    uint16 public constant REPUTATION_START = 500;
    uint16 public constant REPUTATION_MAX = 1000;
    uint16 public constant REPUTATION_FLOOR = 100; // below this a node is ejected
    uint16 public constant REPUTATION_ON_TIME = 10;
    uint16 public constant REPUTATION_STALE_PENALTY = 50;
    uint16 public constant REPUTATION_MISSED_PENALTY = 100;
    uint256 public constant POLICY_SLASH_BPS = 5000; // half the stake, as in the spec
    uint256 public constant MISSED_SLASH_BPS = 1000;
    uint256 public constant REPORTER_REWARD_BPS = 1000; // of the slashed amount
    uint8 public constant MISBEHAVIOR_OUT_OF_POLICY = 1;
    uint8 public constant MISBEHAVIOR_MISSED_WINDOW = 2;
    /// @notice The PCR bitmap every quote must select in the SHA-256 bank: byte i bit j is
    /// PCR 8i + j, so 0xFF 0x03 0x00 is PCRs 0-9 (firmware, boot loader, kernel command line).
    bytes3 public constant PCR_SELECTION = 0xFF0300;
    /// @notice Bounds on the deployment parameters. The unbonding delay is at least two
    /// attestation intervals (and an hour), so a node cannot leave before a missed window or
    /// the revocation grace has run out; its upper bound keeps timestamp + delay far from a
    /// uint64 wrap.
    uint256 public constant MIN_INTERVAL = 5 seconds; // short enough for the demo's 6-s window
    uint256 public constant MAX_INTERVAL = 7 days;
    uint256 public constant MIN_UNBONDING_DELAY = 1 hours;
    uint256 public constant MAX_UNBONDING_DELAY = 365 days;

    address public owner;
    address public pendingOwner; // two-step transfer: the new owner must accept
    uint256 public immutable minimumStake;
    uint256 public immutable attestationInterval;
    uint256 public immutable unbondingDelay;
    uint256 public immutable freshnessBlocks;
    uint256 public burned; // slashed wei not paid to reporters; locked here for good

    mapping(bytes32 => Node) private nodes;
    mapping(bytes32 => Policy) public policy;
    mapping(uint64 => Release) public releases;
    mapping(bytes32 => bytes32) public nodeOfAk; // keccak256(akX, akY) => nodeId
    bytes32[] private nodeIds;
    /// @notice Accounts whose vouchers admit new nodes. Removing one stops its future vouchers
    /// only: nodes it admitted stay (see setEnroller).
    mapping(address => bool) public isEnroller;

    event OwnershipTransferStarted(address indexed previousOwner, address indexed newOwner);
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);
    event DigestApproved(bytes32 indexed digest);
    event DigestRevoked(bytes32 indexed digest);
    event ReleaseApproved(uint64 indexed release, bytes32 runtimePolicy);
    event ReleaseRevoked(uint64 indexed release);
    event EnrollerSet(address indexed enroller, bool appointed);
    /// @dev Which enroller admitted a node: if an enroller is later found careless or
    /// compromised, clients can find and distrust the nodes it vouched for from the logs.
    event NodeEnrolled(bytes32 indexed nodeId, address indexed enroller);
    event NodeRegistered(bytes32 indexed nodeId, address indexed operator, uint256 stake, string endpoint);
    event AttestationUpdated(
        bytes32 indexed nodeId, uint256 timestamp, bytes32 pcrDigest, uint256 nonceBlock, uint64 release
    );
    event ReputationChanged(bytes32 indexed nodeId, uint256 previous, uint256 current);
    event EndpointUpdated(bytes32 indexed nodeId, string endpoint);
    event RegionUpdated(bytes32 indexed nodeId, bytes8 region);
    event NodeStale(bytes32 indexed nodeId, address indexed by);
    event NodeSlashed(bytes32 indexed nodeId, uint8 kind, address indexed reporter, uint256 amount, uint256 reward);
    event WithdrawalRequested(bytes32 indexed nodeId, uint256 availableAt);
    event Withdrawn(bytes32 indexed nodeId, address indexed operator, uint256 amount);

    modifier onlyOwner() {
        require(msg.sender == owner, "not owner");
        _;
    }

    constructor(uint256 minimumStake_, uint256 attestationInterval_, uint256 unbondingDelay_, uint256 freshnessBlocks_) {
        require(
            attestationInterval_ >= MIN_INTERVAL && attestationInterval_ <= MAX_INTERVAL, "interval out of range"
        );
        require(
            unbondingDelay_ >= MIN_UNBONDING_DELAY && unbondingDelay_ >= 2 * attestationInterval_
                && unbondingDelay_ <= MAX_UNBONDING_DELAY,
            "unbonding delay out of range"
        );
        // blockhash only reaches back 256 blocks.
        require(freshnessBlocks_ >= 1 && freshnessBlocks_ <= 256, "freshness must be 1..256 blocks");
        require(minimumStake_ > 0 && minimumStake_ <= type(uint128).max, "minimum stake out of range");
        minimumStake = minimumStake_;
        attestationInterval = attestationInterval_;
        unbondingDelay = unbondingDelay_;
        freshnessBlocks = freshnessBlocks_;
        owner = msg.sender;
        emit OwnershipTransferred(address(0), msg.sender);
    }

    // ----- owner -----

    /// @notice Starts a transfer; nothing changes until newOwner calls acceptOwnership, so a
    /// mistyped address cannot take the registry out of anyone's hands. A later call replaces
    /// the pending owner.
    function transferOwnership(address newOwner) external onlyOwner {
        require(newOwner != address(0), "zero owner");
        pendingOwner = newOwner;
        emit OwnershipTransferStarted(owner, newOwner);
    }

    function acceptOwnership() external {
        require(msg.sender == pendingOwner, "not pending owner");
        emit OwnershipTransferred(owner, msg.sender);
        owner = msg.sender;
        pendingOwner = address(0);
    }

    function approveDigest(bytes32 digest) external onlyOwner {
        require(!policy[digest].approved, "digest already approved");
        policy[digest] = Policy({approved: true, revokedAt: 0});
        emit DigestApproved(digest);
    }

    /// @notice A revoked digest no longer passes attestation at once, but a quote showing it
    /// becomes slashable only one attestation interval later, and a node whose recorded digest
    /// it was cannot be slashed for a missed window during that interval (the revocation
    /// grace), so honest nodes can upgrade.
    function revokeDigest(bytes32 digest) external onlyOwner {
        require(policy[digest].approved, "digest not approved");
        policy[digest] = Policy({approved: false, revokedAt: uint64(block.timestamp)});
        emit DigestRevoked(digest);
    }

    /// @notice Approves a release: runtimePolicy is the SHA-256 of its runtime policy (the
    /// digests of every file of the release and what it loads). Nodes name the release they
    /// run; clients check the node's IMA list against that policy. A revoked release number
    /// is never approved again (publish a new number).
    function approveRelease(uint64 release, bytes32 runtimePolicy) external onlyOwner {
        require(release != 0, "zero release");
        require(runtimePolicy != bytes32(0), "zero runtime policy");
        require(releases[release].runtimePolicy == bytes32(0), "release already approved");
        // A release number names one policy for good: clients that cached it are never
        // handed another policy under the same number.
        require(releases[release].revokedAt == 0, "release was revoked");
        releases[release] = Release({runtimePolicy: runtimePolicy, revokedAt: 0});
        emit ReleaseApproved(release, runtimePolicy);
    }

    /// @notice Revokes a release, with the same grace for its nodes as revokeDigest.
    function revokeRelease(uint64 release) external onlyOwner {
        require(releases[release].runtimePolicy != bytes32(0), "release not approved");
        releases[release] = Release({runtimePolicy: bytes32(0), revokedAt: uint64(block.timestamp)});
        emit ReleaseRevoked(release);
    }

    /// @notice Appoints (or removes) an enroller. Removal does not unregister the nodes it
    /// vouched for: a voucher records a check that was true when it was made (this AK was in
    /// a TPM with a genuine EK), and retiring or rotating a verifier's key does not make it
    /// false. Evicting staked nodes on the owner's word alone would also break the rule that
    /// only proofs checked here take stake away. Nodes of a distrusted enroller are found
    /// through NodeEnrolled and fall out by the usual means (digest revocation, slashing).
    function setEnroller(address enroller, bool appointed) external onlyOwner {
        require(enroller != address(0), "zero enroller");
        require(isEnroller[enroller] != appointed, appointed ? "already an enroller" : "not an enroller");
        isEnroller[enroller] = appointed;
        emit EnrollerSet(enroller, appointed);
    }

    // ----- operators -----

    /// @notice region: where the operator declares the node runs (see _checkRegion), or zero
    /// for "not said". It is the operator's claim, not a proof: clients use it to spread a
    /// circuit's hops over places, never as evidence of where a node is.
    function register(
        bytes32 nodeId,
        string calldata endpoint,
        bytes32 akX,
        bytes32 akY,
        Quote calldata quote,
        uint64 release,
        bytes calldata enrolmentVoucher,
        bytes8 region
    ) external payable {
        require(msg.value >= minimumStake, "stake below minimum");
        require(msg.value <= type(uint128).max, "stake too large");
        require(nodes[nodeId].status == Status.None, "node already registered");
        require(nodeOfAk[keccak256(abi.encodePacked(akX, akY))] == bytes32(0), "AK already registered");
        _checkEndpoint(endpoint);
        _checkRegion(region);
        _checkVoucher(nodeId, akX, akY, enrolmentVoucher); // signed for msg.sender only
        _checkRelease(release);
        Attest memory q = _acceptQuote(nodeId, akX, akY, quote);
        _admit(nodeId, endpoint, akX, akY, q, quote.nonceBlock, release);
        if (region != bytes8(0)) {
            nodes[nodeId].region = region;
            emit RegionUpdated(nodeId, region);
        }
    }

    /// @notice The operator's periodic attestation; also brings a stale node back. The on-time
    /// bonus is paid at most once per attestation window (block.timestamp / attestationInterval)
    /// and not in the window of a late attestation, so calling this every block earns nothing.
    /// The quote must be later in TPM time than every quote seen from this AK: a TPM's
    /// (resetCount, clock) only goes back through TPM2_Clear, which would otherwise let a node
    /// make its later quotes look older than the ones a reporter holds. The TPM's firmware
    /// version may not go back: a downgrade to firmware with known flaws is refused.
    /// release names the (approved) release the node now runs.
    function updateAttestation(
        bytes32 nodeId,
        Quote calldata quote,
        uint64 release
    ) external {
        Node storage n = _operated(nodeId);
        require(n.status == Status.Active || n.status == Status.Stale, "node not active");
        // Each quote answers a newer challenge, so one quote cannot be replayed.
        uint256 nonceBlock = quote.nonceBlock;
        require(nonceBlock > n.lastNonceBlock, "nonce block not newer");
        _checkRelease(release);
        Attest memory q = _acceptQuote(nodeId, n.akX, n.akY, quote);
        require(_tpmLater(q, n.tpmResetCount, n.tpmClock), "quote not newer");
        require(q.firmwareVersion >= n.firmwareVersion, "firmware downgraded");
        if (q.firmwareVersion != n.firmwareVersion) n.firmwareVersion = q.firmwareVersion;
        if (release != n.release) n.release = release;

        uint64 window = uint64(block.timestamp / attestationInterval);
        bool onTime = block.timestamp <= uint256(n.lastAttestation) + attestationInterval;
        bool newWindow = window > n.attestedWindow;
        n.lastAttestation = uint64(block.timestamp);
        n.lastNonceBlock = uint64(nonceBlock);
        n.attestedWindow = window;
        n.pcrDigest = q.pcrDigest;
        n.tpmClock = q.clock;
        n.tpmResetCount = q.resetCount;
        n.status = Status.Active;
        if (onTime && newWindow && n.reputation < REPUTATION_MAX) {
            uint16 next = n.reputation + REPUTATION_ON_TIME;
            _setReputation(nodeId, n, next > REPUTATION_MAX ? REPUTATION_MAX : next);
        }
        emit AttestationUpdated(nodeId, block.timestamp, q.pcrDigest, nonceBlock, release);
    }

    function updateEndpoint(bytes32 nodeId, string calldata endpoint) external {
        Node storage n = _operated(nodeId);
        require(n.status != Status.Unbonding, "node unbonding");
        _checkEndpoint(endpoint);
        n.endpoint = endpoint;
        emit EndpointUpdated(nodeId, endpoint);
    }

    /// @notice Declares (or, with zero, withdraws) the node's region; same format as register.
    function updateRegion(bytes32 nodeId, bytes8 region) external {
        Node storage n = _operated(nodeId);
        require(n.status != Status.Unbonding, "node unbonding");
        _checkRegion(region);
        require(region != n.region, "region unchanged");
        n.region = region;
        emit RegionUpdated(nodeId, region);
    }

    function requestWithdrawal(bytes32 nodeId) external {
        Node storage n = _operated(nodeId);
        require(n.status != Status.Unbonding, "already unbonding");
        _startUnbonding(nodeId, n);
    }

    /// @notice Pays the stake back once the unbonding delay has passed and forgets the node.
    function withdraw(bytes32 nodeId) external {
        Node storage n = _operated(nodeId);
        require(n.status == Status.Unbonding, "not unbonding");
        require(block.timestamp >= n.unbondingEnds, "unbonding delay not over");
        uint256 amount = n.stake;
        address operator = n.operator;
        delete nodeOfAk[keccak256(abi.encodePacked(n.akX, n.akY))];
        _removeId(n.index);
        delete nodes[nodeId];
        emit Withdrawn(nodeId, operator, amount);
        (bool ok,) = payable(operator).call{value: amount}("");
        require(ok, "transfer failed");
    }

    // ----- anyone -----

    function markStale(bytes32 nodeId) external {
        Node storage n = _existing(nodeId);
        require(n.status == Status.Active, "node not active");
        require(block.timestamp > uint256(n.lastAttestation) + attestationInterval, "attestation window open");
        n.status = Status.Stale;
        emit NodeStale(nodeId, msg.sender);
        _setReputation(nodeId, n, _minus(n.reputation, REPUTATION_STALE_PENALTY));
    }

    /// @notice Slashes a node on a proof checked here and pays the reporter.
    /// kind 1 (out of policy): proof = abi.encode(bytes attest, bytes32 r, bytes32 s, uint256 nonceBlock),
    ///   a registry-domain quote (qualifying data of this chain, this registry, this node and
    ///   blockhash(nonceBlock), so within the last 256 blocks: handshake quotes, which clients
    ///   hold by the thousand, and quotes for other chains or registries never qualify), signed
    ///   by the node's AK, with the registry's PCR selection, whose PCR digest is outside
    ///   policy, and later in TPM time (resetCount, clock) than:
    ///   - for a digest never approved: the node's registration quote and any quote that
    ///     slashed it before. No honest node ran such a digest while registered, so attesting
    ///     an approved digest afterwards (say after a reboot) does not make the quote go away.
    ///   - for a revoked digest: every quote the registry has seen from the node (accepted or
    ///     slashing). Limit, by design: an accepted newer attestation forgives earlier quotes
    ///     of a revoked digest, including ones made after the grace period, because a quote
    ///     carries TPM time but no chain time, and only that rule lets an honest node that
    ///     upgraded after a revocation shed the quotes it legitimately made before. So a quote
    ///     of a revoked digest slashes only while it is newer than the node's last accepted
    ///     attestation; reporters must submit it before the node attests again.
    ///   Each slash raises both bounds to the quote used, so a quote slashes once, and proofs
    ///   of one node count in TPM-time order.
    /// kind 2 (missed window): empty proof; the chain's own clock is the evidence. Not during
    ///   the revocation grace of the node's recorded digest or release (see revokeDigest).
    function reportMisbehavior(bytes32 nodeId, uint8 kind, bytes calldata proof) external {
        Node storage n = _existing(nodeId);
        if (kind == MISBEHAVIOR_OUT_OF_POLICY) {
            (bytes memory attest, bytes32 r, bytes32 s, uint256 nonceBlock) =
                abi.decode(proof, (bytes, bytes32, bytes32, uint256));
            Attest memory q = _parse(attest);
            bytes32 nonce = blockhash(nonceBlock);
            require(nonce != bytes32(0), "nonce block not recent");
            require(q.extraData == _qualifyingData(nonce, nodeId), "nonce mismatch");
            require(_p256(sha256(attest), r, s, n.akX, n.akY), "bad quote signature");
            Policy memory p = policy[q.pcrDigest];
            require(_outsidePolicy(p), "digest within policy");
            bool later = _tpmLater(q, n.tpmResetCount, n.tpmClock);
            if (p.revokedAt == 0) {
                require(_tpmLater(q, n.floorResetCount, n.floorClock), "quote not newer");
            } else {
                require(later, "quote not newer");
            }
            n.floorClock = q.clock; // the floor never passes the newest quote seen
            n.floorResetCount = q.resetCount;
            if (later) {
                n.tpmClock = q.clock;
                n.tpmResetCount = q.resetCount;
            }
            _slash(nodeId, n, kind, POLICY_SLASH_BPS, n.reputation / 2);
        } else if (kind == MISBEHAVIOR_MISSED_WINDOW) {
            require(proof.length == 0, "unexpected proof");
            require(n.status == Status.Active || n.status == Status.Stale, "node not active");
            require(block.timestamp > uint256(n.lastAttestation) + attestationInterval, "attestation window open");
            require(n.missedSlashedFor != n.lastAttestation, "window already slashed");
            require(!_inRevocationGrace(n), "revocation grace");
            n.missedSlashedFor = n.lastAttestation;
            if (n.status == Status.Active) {
                n.status = Status.Stale;
                emit NodeStale(nodeId, msg.sender);
            }
            _slash(nodeId, n, kind, MISSED_SLASH_BPS, _minus(n.reputation, REPUTATION_MISSED_PENALTY));
        } else {
            revert("unknown misbehavior kind");
        }
    }

    // ----- views -----

    function nodeCount() external view returns (uint256) {
        return nodeIds.length;
    }

    function getNode(bytes32 nodeId) external view returns (NodeView memory v) {
        Node storage n = _existing(nodeId);
        v = NodeView({
            nodeId: nodeId,
            operator: n.operator,
            endpoint: n.endpoint,
            akX: n.akX,
            akY: n.akY,
            stake: n.stake,
            lastAttestation: n.lastAttestation,
            reputation: n.reputation,
            status: n.status,
            unbondingEnds: n.unbondingEnds,
            pcrDigest: n.pcrDigest,
            lastNonceBlock: n.lastNonceBlock,
            release: n.release,
            firmwareVersion: n.firmwareVersion,
            healthy: _healthy(n, 0),
            region: n.region
        });
    }

    function isHealthy(bytes32 nodeId, uint256 minReputation) external view returns (bool) {
        return _healthy(nodes[nodeId], minReputation);
    }

    /// @notice Scans nodeIds[cursor .. cursor + limit) and returns the healthy ones with at
    /// least minReputation; next is the cursor of the following page, 0 once the end is reached.
    /// Withdrawals move the last id into the freed slot, so a scan racing them may miss one.
    function listHealthy(uint256 cursor, uint256 limit, uint256 minReputation)
        external
        view
        returns (bytes32[] memory ids, uint256 next)
    {
        require(limit >= 1 && limit <= MAX_PAGE, "limit out of range");
        uint256 total = nodeIds.length;
        uint256 end = cursor >= total ? total : (total - cursor < limit ? total : cursor + limit);
        ids = new bytes32[](end > cursor ? end - cursor : 0);
        uint256 found;
        for (uint256 i = cursor; i < end; ++i) {
            bytes32 id = nodeIds[i];
            if (_healthy(nodes[id], minReputation)) {
                ids[found++] = id;
            }
        }
        assembly {
            mstore(ids, found) // shrink to the matches
        }
        next = end < total ? end : 0;
    }

    /// @notice The EIP-712 domain: name "ShadowMesh ExitNodeRegistry", version "2", this chain,
    /// this contract. Computed per call, so a chain split never keeps the old chain id.
    function domainSeparator() public view returns (bytes32) {
        return keccak256(abi.encode(EIP712_DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    /// @notice The EIP-712 digest an enroller signs to vouch for (nodeId, AK) registered by the
    /// account operator: typed data Enrolment(address operator,bytes32 nodeId,bytes32 akX,bytes32 akY).
    function enrolmentDigest(address operator, bytes32 nodeId, bytes32 akX, bytes32 akY)
        public
        view
        returns (bytes32)
    {
        bytes32 structHash = keccak256(abi.encode(ENROLMENT_TYPEHASH, operator, nodeId, akX, akY));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// @notice The qualifying data a registry quote for (blockhash(nonceBlock), nodeId) must carry.
    function expectedQualifyingData(uint256 nonceBlock, bytes32 nodeId) external view returns (bytes32) {
        return _qualifyingData(blockhash(nonceBlock), nodeId);
    }

    // ----- internals -----

    function _acceptQuote(
        bytes32 nodeId,
        bytes32 akX,
        bytes32 akY,
        Quote calldata quote
    ) private view returns (Attest memory q) {
        q = _parse(quote.attest);
        uint256 nonceBlock = quote.nonceBlock;
        require(nonceBlock < block.number && block.number - nonceBlock <= freshnessBlocks, "nonce block not recent");
        bytes32 nonce = blockhash(nonceBlock);
        require(nonce != bytes32(0), "nonce block not recent");
        require(q.extraData == _qualifyingData(nonce, nodeId), "nonce mismatch");
        require(_p256(sha256(quote.attest), quote.r, quote.s, akX, akY), "bad quote signature");
        require(policy[q.pcrDigest].approved, "PCR digest not approved");
    }

    function _checkRelease(uint64 release) private view {
        require(releases[release].runtimePolicy != bytes32(0), "release not approved");
    }

    /// @dev Whether the node's recorded digest or release was revoked less than one
    /// attestation interval ago: its operator may still be upgrading.
    function _inRevocationGrace(Node storage n) private view returns (bool) {
        uint256 digestRevoked = policy[n.pcrDigest].revokedAt;
        uint256 releaseRevoked = releases[n.release].revokedAt;
        uint256 latest = digestRevoked > releaseRevoked ? digestRevoked : releaseRevoked;
        return latest != 0 && block.timestamp <= latest + attestationInterval;
    }

    /// @dev "malformed enrolment voucher" unless it is exactly 65 bytes with v in {27, 28} and
    /// a low s. A signature over other data (another operator, node, AK, registry or chain)
    /// recovers some unrelated address, or none (address(0), never an enroller): both are refused.
    function _checkVoucher(bytes32 nodeId, bytes32 akX, bytes32 akY, bytes calldata voucher) private {
        require(voucher.length == VOUCHER_BYTES, "malformed enrolment voucher");
        bytes32 r = bytes32(voucher[0:32]);
        bytes32 s = bytes32(voucher[32:64]);
        uint8 v = uint8(voucher[64]);
        require((v == 27 || v == 28) && uint256(s) <= SECP256K1_HALF_ORDER, "malformed enrolment voucher");
        address enroller = ecrecover(enrolmentDigest(msg.sender, nodeId, akX, akY), v, r, s);
        require(isEnroller[enroller], "voucher not from an enroller");
        emit NodeEnrolled(nodeId, enroller);
    }

    /// @dev Stores a new node and announces it (a separate function: register's arguments
    /// fill the stack).
    function _admit(
        bytes32 nodeId,
        string calldata endpoint,
        bytes32 akX,
        bytes32 akY,
        Attest memory q,
        uint256 nonceBlock,
        uint64 release
    ) private {
        Node storage n = nodes[nodeId];
        n.operator = msg.sender;
        n.lastAttestation = uint64(block.timestamp);
        n.reputation = REPUTATION_START;
        n.status = Status.Active;
        n.akX = akX;
        n.akY = akY;
        n.stake = uint128(msg.value);
        n.lastNonceBlock = uint64(nonceBlock);
        n.tpmClock = q.clock;
        n.tpmResetCount = q.resetCount;
        n.floorClock = q.clock;
        n.floorResetCount = q.resetCount;
        n.firmwareVersion = q.firmwareVersion;
        n.release = release;
        n.attestedWindow = uint64(block.timestamp / attestationInterval);
        n.index = uint32(nodeIds.length);
        n.pcrDigest = q.pcrDigest;
        n.endpoint = endpoint;
        nodeIds.push(nodeId);
        nodeOfAk[keccak256(abi.encodePacked(akX, akY))] = nodeId;
        emit NodeRegistered(nodeId, msg.sender, msg.value, endpoint);
        emit AttestationUpdated(nodeId, block.timestamp, q.pcrDigest, nonceBlock, release);
    }

    function _qualifyingData(bytes32 nonce, bytes32 nodeId) private view returns (bytes32) {
        return keccak256(abi.encodePacked(REGISTRY_DOMAIN, block.chainid, address(this), nonce, nodeId));
    }

    /// @dev EIP-7951: 160 bytes in; 32 bytes holding 1 on success, empty output otherwise.
    /// Before Osaka the address holds no code and the call "succeeds" with empty output,
    /// which is why the length and value are both checked.
    function _p256(bytes32 h, bytes32 r, bytes32 s, bytes32 x, bytes32 y) private view returns (bool) {
        (bool ok, bytes memory out) = P256VERIFY.staticcall(abi.encodePacked(h, r, s, x, y));
        return ok && out.length == 32 && abi.decode(out, (uint256)) == 1;
    }

    function _outsidePolicy(Policy memory p) private view returns (bool) {
        if (p.approved) return false;
        return p.revokedAt == 0 || block.timestamp > uint256(p.revokedAt) + attestationInterval;
    }

    /// @dev TPM time only moves forward within a reset epoch; a new reset count starts a new one.
    function _tpmLater(Attest memory q, uint32 resetCount, uint64 clock) private pure returns (bool) {
        return q.resetCount > resetCount || (q.resetCount == resetCount && q.clock > clock);
    }

    function _healthy(Node storage n, uint256 minReputation) private view returns (bool) {
        return n.status == Status.Active && block.timestamp <= uint256(n.lastAttestation) + attestationInterval
            && n.reputation >= minReputation && n.stake >= minimumStake;
    }

    function _slash(bytes32 nodeId, Node storage n, uint8 kind, uint256 bps, uint16 reputation) private {
        uint256 amount = (uint256(n.stake) * bps) / 10_000;
        uint256 reward = (amount * REPORTER_REWARD_BPS) / 10_000;
        n.stake -= uint128(amount);
        burned += amount - reward;
        emit NodeSlashed(nodeId, kind, msg.sender, amount, reward);
        _setReputation(nodeId, n, reputation);
        if (n.status != Status.Unbonding && (n.reputation < REPUTATION_FLOOR || n.stake < minimumStake)) {
            _startUnbonding(nodeId, n); // ejected: the stake stays bonded (and slashable) a while
        }
        (bool ok,) = payable(msg.sender).call{value: reward}("");
        require(ok, "transfer failed");
    }

    function _startUnbonding(bytes32 nodeId, Node storage n) private {
        n.status = Status.Unbonding;
        n.unbondingEnds = uint64(block.timestamp + unbondingDelay);
        emit WithdrawalRequested(nodeId, n.unbondingEnds);
    }

    function _setReputation(bytes32 nodeId, Node storage n, uint16 value) private {
        if (value != n.reputation) {
            emit ReputationChanged(nodeId, n.reputation, value);
            n.reputation = value;
        }
    }

    function _minus(uint16 a, uint16 b) private pure returns (uint16) {
        return a > b ? a - b : 0;
    }

    function _removeId(uint32 index) private {
        uint256 last = nodeIds.length - 1;
        if (index != last) {
            bytes32 moved = nodeIds[last];
            nodeIds[index] = moved;
            nodes[moved].index = index;
        }
        nodeIds.pop();
    }

    function _existing(bytes32 nodeId) private view returns (Node storage n) {
        n = nodes[nodeId];
        require(n.status != Status.None, "unknown node");
    }

    function _operated(bytes32 nodeId) private view returns (Node storage n) {
        n = _existing(nodeId);
        require(msg.sender == n.operator, "not operator");
    }

    function _checkEndpoint(string calldata endpoint) private pure {
        uint256 len = bytes(endpoint).length;
        require(len > 0 && len <= MAX_ENDPOINT_BYTES, "endpoint length out of range");
    }

    /// @dev A region is zero (not said) or an ISO 3166 code in upper-case ASCII, zero-padded on
    /// the right: a country (ISO 3166-1 alpha-2, "DE") optionally followed by "-" and a
    /// subdivision of 1..3 letters or digits (ISO 3166-2, "US-CA", "GB-SCT"). The country is
    /// the jurisdiction clients keep apart; the whole code the place. The format is checked
    /// here so every client reads the same, well-formed codes.
    function _checkRegion(bytes8 region) private pure {
        if (region == bytes8(0)) return;
        uint256 len = 2;
        require(_upper(region[0]) && _upper(region[1]), "malformed region");
        if (region[2] == "-") {
            len = 3;
            while (len < 6 && (_upper(region[len]) || (region[len] >= "0" && region[len] <= "9"))) {
                ++len;
            }
            require(len > 3, "malformed region");
        }
        for (uint256 i = len; i < 8; ++i) {
            require(region[i] == 0, "malformed region");
        }
    }

    function _upper(bytes1 c) private pure returns (bool) {
        return c >= "A" && c <= "Z";
    }

    /// @dev Reads a big-endian unsigned integer of len (1..32) bytes at off; the caller
    /// has checked off + len <= a.length (mload may read past the end; those bits are shifted out).
    function _be(bytes memory a, uint256 off, uint256 len) private pure returns (uint256 v) {
        assembly {
            v := shr(sub(256, mul(len, 8)), mload(add(add(a, 32), off)))
        }
    }

    function _need(bool ok) private pure {
        require(ok, "malformed quote");
    }

    /// @dev Parses TPMS_ATTEST for a quote; any deviation from the shared format reverts.
    function _parse(bytes memory a) private pure returns (Attest memory q) {
        uint256 len = a.length;
        _need(len >= 8 && len <= MAX_ATTEST_BYTES);
        _need(_be(a, 0, 4) == TPM_GENERATED && _be(a, 4, 2) == TPM_ST_ATTEST_QUOTE);
        uint256 o = 6 + 2 + _be(a, 6, 2); // qualifiedSigner: TPM2B_NAME, skipped
        _need(o + 2 + 32 + 25 <= len && _be(a, o, 2) == 32); // extraData, clockInfo, firmware
        q.extraData = bytes32(_be(a, o + 2, 32));
        o += 34;
        q.clock = uint64(_be(a, o, 8));
        q.resetCount = uint32(_be(a, o + 8, 4));
        q.firmwareVersion = uint64(_be(a, o + 17, 8));
        o += 17 + 8; // clock, resetCount, restartCount, safe; firmwareVersion
        // TPML_PCR_SELECTION: count 1, then hash, sizeofSelect, bitmap (10 bytes in all).
        _need(o + 10 <= len && _be(a, o, 4) == 1);
        _need(_be(a, o + 4, 2) == TPM_ALG_SHA256 && _be(a, o + 6, 1) == PCR_SELECT_BYTES);
        require(bytes3(uint24(_be(a, o + 7, 3))) == PCR_SELECTION, "PCR selection mismatch");
        o += 10;
        _need(o + 2 + 32 == len && _be(a, o, 2) == 32); // pcrDigest ends the structure
        q.pcrDigest = bytes32(_be(a, o + 2, 32));
    }
}
