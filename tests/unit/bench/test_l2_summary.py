"""bench/l2.py's summary: each ratio against the better OpenVPN transport, and the harness's
ceilings (the same load with no tunnel), so a goal the machine cannot show is told apart
from one the tunnel misses."""

from __future__ import annotations

import json
from typing import Any

from bench.l2 import summarize, udp_result


def fig(tcp1: float, tcp4: float, rtt: float, udp: float | None = None) -> dict[str, float]:
    out = {"tcp1_gbps": tcp1, "tcp4_gbps": tcp4, "rtt_ms": rtt, "rtt_hot_ms": rtt / 2}
    if udp is not None:
        out["udp_gbps"] = udp
    return out


def results() -> dict[str, Any]:
    return {
        "direct": fig(9.0, 9.5, 0.05, udp=1.4),
        "direct-plain-senders": fig(2.8, 3.0, 0.05),
        "openvpn-tcp": fig(0.5, 0.55, 0.3, udp=0.4),
        "openvpn-udp": fig(0.6, 0.5, 0.25, udp=0.6),
        "openvpn-tcp-plain-senders": fig(0.45, 0.5, 0.3),
        "openvpn-udp-plain-senders": fig(0.55, 0.45, 0.25),
        "shadowmesh-offload": fig(4.0, 4.2, 0.95, udp=1.1),
        "shadowmesh-gro": fig(1.65, 1.5, 0.9, udp=1.2),
        "shadowmesh-plain": fig(1.0, 1.1, 0.9, udp=0.9),
    }


def test_ratios_use_the_better_openvpn_transport() -> None:
    r = results()
    summarize(r)
    assert r["openvpn_best"]["udp_gbps"] == 0.6
    assert r["ratio_udp"] == 2.0  # best ShadowMesh mode (gro, 1.2) over 0.6
    assert r["ratio_throughput_plain"] == 3.0  # gro 1.65 over the same traffic's 0.55
    assert r["added_rtt_ms"]["openvpn"] == 0.2


def test_ceilings_say_what_the_harness_can_show() -> None:
    r = results()
    summarize(r)
    assert r["udp_ceiling_gbps"] == 1.4
    assert r["ratio_udp_ceiling"] == 2.33  # 1.4 / 0.6: a 3x goal cannot be shown here
    assert r["udp_share_of_direct"] == 0.86
    assert r["ratio_throughput_plain_ceiling"] == 5.09  # 2.8 / 0.55
    assert r["plain_share_of_direct"] == 0.59


def test_ceilings_absent_without_the_direct_runs() -> None:
    r = results()
    del r["direct-plain-senders"]
    del r["direct"]["udp_gbps"]
    summarize(r)
    assert r["udp_ceiling_gbps"] is None
    assert r["ratio_udp_ceiling"] is None
    assert r["udp_share_of_direct"] is None
    assert r["ratio_throughput_plain_ceiling"] is None


def test_python_floor_reported_beside_the_tunnels() -> None:
    r = results()
    r["python-floor"] = fig(1.2, 1.1, 0.65, udp=0.9)
    summarize(r)
    floor = r["python_floor"]
    assert floor["added_rtt_ms"] == 0.6  # 0.65 - the direct path's 0.05
    assert floor["ratio_throughput"] == 2.0  # 1.2 over OpenVPN's better 0.6
    assert floor["ratio_udp"] == 1.5
    assert r["added_rtt_ms"]["openvpn"] == 0.2


def test_no_floor_figures_without_the_floor_run() -> None:
    r = results()
    summarize(r)
    assert "python_floor" not in r


def test_gro_kernel_runs_compare_with_the_same_openvpn_runs_and_never_replace_the_default() -> None:
    r = results()
    r["shadowmesh-gro-software"] = fig(2.2, 1.8, 0.95, udp=1.0)
    r["shadowmesh-offload-software"] = fig(3.0, 3.3, 0.97, udp=1.0)
    summarize(r)
    assert r["ratio_throughput_plain_gro_software"] == 4.0  # 2.2 over the same traffic's 0.55
    assert r["ratio_throughput_plain_gro_software_4"] == 3.6  # 1.8 over 0.5
    assert r["ratio_throughput_offload_software"] == 5.0  # 3.0 over the better OpenVPN's 0.6
    assert r["ratio_throughput_plain"] == 3.0  # still the default config's gro run
    assert r["ratio_udp"] == 2.0  # the setting's UDP is reported apart
    assert r["ratio_udp_gro_software"] == 1.67
    assert r["added_rtt_ms"]["shadowmesh_gro_software"] == 0.9


def test_rps_runs_compare_like_their_default_runs_and_never_replace_them() -> None:
    r = results()
    r["shadowmesh-gro-rps"] = fig(2.2, 1.8, 0.95, udp=1.0)
    r["shadowmesh-offload-rps"] = fig(3.0, 3.3, 0.97, udp=1.2)
    r["shadowmesh-offload-rps"]["udp_senders_gbps"] = 1.6
    r["openvpn-udp"]["udp_senders_gbps"] = 0.8
    summarize(r)
    assert r["ratio_throughput_plain_rps"] == 4.0  # over the same traffic's 0.55
    assert r["ratio_throughput_plain_rps_4"] == 3.6
    assert r["ratio_throughput_offload_rps"] == 5.0  # over the better OpenVPN's 0.6
    assert r["ratio_udp_rps"] == 2.0  # the better of its two runs, 1.2 over 0.6
    assert r["ratio_udp_senders_rps"] == 2.0
    assert r["ratio_throughput_plain"] == 3.0  # still the default config's runs
    assert r["ratio_udp"] == 2.0
    assert r["added_rtt_ms"]["shadowmesh_gro_rps"] == 0.9


def test_no_gro_kernel_figures_without_those_runs() -> None:
    r = results()
    summarize(r)
    assert r["ratio_throughput_plain_gro_software"] is None
    assert r["ratio_throughput_offload_software"] is None
    assert r["ratio_throughput_plain_rps"] is None
    assert r["ratio_udp_rps"] is None


def test_udp_over_several_senders_compares_like_for_like() -> None:
    r = results()
    r["direct"]["udp_senders_gbps"] = 2.4
    r["openvpn-tcp"]["udp_senders_gbps"] = 0.5
    r["openvpn-udp"]["udp_senders_gbps"] = 0.8
    r["shadowmesh-gro"]["udp_senders_gbps"] = 2.0
    summarize(r)
    assert r["ratio_udp_senders"] == 2.5  # 2.0 over the better OpenVPN's 0.8
    assert r["ratio_udp_senders_ceiling"] == 3.0
    assert r["ratio_udp"] == 2.0  # the one-sender figure is kept as it was


def test_no_several_senders_figures_without_those_runs() -> None:
    r = results()
    summarize(r)
    assert r["ratio_udp_senders"] is None and r["ratio_udp_senders_ceiling"] is None


def report(bps: float, packets: int, received: int) -> str:
    lost = 100.0 * (packets - received) / packets
    end = {
        "sum": {"lost_percent": lost, "packets": packets},
        "sum_sent": {"packets": packets, "bits_per_second": bps},
        "sum_received": {"packets": received, "bits_per_second": bps * received / packets},
    }
    return json.dumps({"end": end})


def test_udp_loss_over_several_senders_weighs_each_by_what_it_sent() -> None:
    gbps, lost = udp_result([report(1e9, 1000, 1000), report(1e9, 1000, 960)])
    assert round(gbps, 3) == 1.96
    assert round(lost, 6) == 2.0  # 40 of 2000: one sender's 4 % loss is not hidden by the other
    assert [round(x, 6) for x in udp_result([report(5e8, 100, 99)])] == [0.495, 1.0]
