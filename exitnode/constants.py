"""Every size, limit and timer of the exit node, in one place."""

from __future__ import annotations

# Virtual switch.
MAC_AGEING_S = 300.0  # as Linux bridges and most hardware switches
MAX_MACS = 16384  # whole table; a full table floods instead of learning
MAX_MACS_PER_PORT = 1024  # one device cannot evict everyone else's entries
BROADCAST_RATE = 1000.0  # broadcast + multicast frames per second per ingress port
BROADCAST_BURST = 200.0
# Unknown-unicast floods per second per ingress port: its own bucket, so random destination
# MACs cannot flood every port unchecked, nor use up the ARP/ND (broadcast) budget.
UNKNOWN_UNICAST_RATE = 1000.0
UNKNOWN_UNICAST_BURST = 200.0
# Isolation between devices (a device = one client identity, whatever its tunnel count).
MAX_TUNNELS_PER_DEVICE = 4  # ports one device may hold at once (failover overlaps)
MAX_PORTS = 1024  # client ports (tunnels) one exit switches at once
RESERVED_MACS_PER_PORT = 8  # table entries kept for each of MAX_PORTS, so a full table
# never makes another port's stations unknown (and their unicast flood); the rest is shared
MAX_IPS_PER_DEVICE = 64  # addresses one device may claim through ARP/ND
MAX_IP_BINDINGS = 16384  # whole ARP/ND binding table
DEFAULT_MTU = 1500
VLAN_MIN = 1
VLAN_MAX = 4094
AGE_SWEEP_S = 1.0  # how often the driver calls Switch.age

# Exit server data path.
PORT_QUEUE_FRAMES = 1024  # frames waiting for one client; beyond this they are dropped
LOCAL_PORT = "local"
TAP_NAME = "smx0"
BRIDGE_NAME = "smbr0"
STATS_INTERVAL_S = 10.0
REVOCATION_POLL_S = 0.5  # how often the exit looks for a changed revocation/allow-list file
REAUTH_INTERVAL_S = 60.0  # live sessions re-authorised at least this often (no file change)

# Relay role (multi-hop circuits, exitnode/relay.py).
RELAY_DECIDE_S = 1.0  # a link sending no cell within this long is an L2 device's
CIRCUIT_QUEUE_CELLS = 512  # cells waiting per circuit and direction; beyond: dropped
CIRCUIT_QUEUE_BYTES = 2 * 1024 * 1024
MAX_CIRCUITS_PER_LINK = 64
# A link to a next hop whose last circuit ended stays open this long (times a random factor
# of 0.75-1.25) for circuits yet to come, as Tor keeps idle channels: an extend over it skips
# a connect and a handshake, and a path observer does not see the link end with the circuit.
NEXT_LINK_IDLE_S = 120.0
MAX_CIRCUITS = 1024
EXTEND_TIMEOUT_S = 15.0  # open the next hop's link and get its CREATED within this long
RELAY_SEND_BATCH = 64  # cells per link record from one circuit queue

# Departures (exitnode/departures.py): when a client port detaches, the exit tells the other
# exits bridging the same LAN which of its stations left, so a client whose circuit now ends
# at another of them is not refused as a spoofer until the LAN entry ages out.
DEPARTURE_ETHERTYPE = 0x88B6  # IEEE 802 local experimental EtherType 2
DEPARTURE_GROUP = bytes.fromhex("03534d000001")  # locally administered multicast
DEPARTURE_MAGIC = b"SMLEFT\x00\x01"
DEPARTURE_MACS_PER_FRAME = 64
DEPARTURE_IPS_PER_FRAME = 32
# Holding notices (same format, another magic): what the exit's client ports hold, sent when
# a client port learns a station or an address and again every HOLDING_REFRESH_S, so another
# exit on the LAN refuses its own clients' claims to them even if none of their frames reach
# it. An exit keeps a station named only by notices for HOLDING_TTL_S after the last one
# (not MAC_AGEING_S: a client failing over from a crashed exit is refused no longer).
HOLDING_MAGIC = b"SMHELD\x00\x01"
HOLDING_REFRESH_S = 5.0
HOLDING_TTL_S = 15.0
# Circuit links one device (a client using us as hop 1, or a relaying exit) may hold at once:
# a relaying exit shares a link among up to MAX_CIRCUITS_PER_LINK circuits and opens another
# past that, so with circuits per link this bounds circuits per neighbour, not tunnels.
MAX_CIRCUIT_LINKS_PER_DEVICE = 256
