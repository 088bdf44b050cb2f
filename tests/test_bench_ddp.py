"""benchmarks/bench_ddp.py: the parts that need no root (arguments, line-up, byte accounting,
summary) on hand-checkable cases, a tiny 2-rank run on Gloo, and (as root with iproute2) the
namespace life cycle and bytes measured on a namespace's loopback against the byte model."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_ddp  # noqa: E402
from _dist import run_ranks  # noqa: E402

TINY = dict(seed=0, width=4, stem_stride=2, lr=0.005, batch_size=4, warmup=2, steps=2,
            count_link=False, profile_steps=0)


# -- arguments and line-up -----------------------------------------------------------------------
def test_default_lineup_holds_every_contender_the_issue_names():
    specs = [c.spec for c in bench_ddp.default_contenders()]
    assert len(specs) == len(set(specs))
    for s in ("none", "local", "fp16", "powersgd:1", "powersgd:4", "quant-pertensor"):
        assert s in specs
    for bits in (2, 3, 4):
        for scheme in ("qsgd", "nuqsgd", "alq"):
            assert f"{scheme}:{bits}" in specs and f"{scheme}:{bits}:elias" in specs
        assert f"allreduce-qsgd:{bits}" in specs and f"allreduce-nuqsgd:{bits}" in specs
        assert f"rs-qsgd:{bits}" in specs and f"rs-nuqsgd:{bits}" in specs


@pytest.mark.parametrize("spec, family, algorithm", [
    ("none", "reference", "allreduce"), ("local", "reference", "none"), ("fp16", "pytorch", "allreduce"),
    ("powersgd:4", "pytorch", "allreduce"), ("quant-pertensor", "pytorch", "allgather"),
    ("nuqsgd:4:elias", "commcomp", "allgather"), ("allreduce-qsgd:3", "commcomp", "allreduce"),
    ("rs-nuqsgd:4", "commcomp", "reduce_scatter"), ("rs-qsgd:3:elias", "commcomp", "reduce_scatter"),
    ("rs-nuqsgd:4+flat", "commcomp", "reduce_scatter"),
])
def test_contender_classification(spec, family, algorithm):
    c = bench_ddp.contender_for(spec)
    assert (c.family, c.algorithm) == (family, algorithm)


def test_flat_suffix_keeps_rs_hooks_flat_between_nodes():
    assert bench_ddp.flat_spec("rs-nuqsgd:4+flat") == ("rs-nuqsgd:4", True)
    assert bench_ddp.flat_spec("rs-nuqsgd:4") == ("rs-nuqsgd:4", False)
    assert bench_ddp.make_hook("rs-nuqsgd:4", hierarchical=True)[0].hierarchical
    assert not bench_ddp.make_hook("rs-nuqsgd:4+flat", hierarchical=True)[0].hierarchical
    with pytest.raises(ValueError, match="rs- contenders only"):
        bench_ddp.contender_for("nuqsgd:4+flat")


def test_parse_args_defaults_and_bad_input():
    args = bench_ddp.parse_args([])
    assert args.bandwidths == [1.0, 2.5, 10.0] and 2 in args.world_sizes
    assert (4 in args.world_sizes) == ((os.cpu_count() or 1) >= 4)
    assert [c.spec for c in bench_ddp.parse_args(["--contenders", "none", "qsgd:4"]).contenders] == ["none", "qsgd:4"]
    with pytest.raises(ValueError, match="bandwidths"):
        bench_ddp.parse_args(["--bandwidths", "0"])
    with pytest.raises(ValueError, match="world-sizes"):
        bench_ddp.parse_args(["--world-sizes", "1"])
    with pytest.raises(ValueError, match="steps"):
        bench_ddp.parse_args(["--steps", "0"])
    with pytest.raises(ValueError, match="qsgd:x"):
        bench_ddp.parse_args(["--contenders", "qsgd:x"])


# -- byte accounting -----------------------------------------------------------------------------
def test_link_bytes_hand_checked():
    # ring allreduce: each of p ranks sends 2 (p-1)/p N; all-gather: each rank's N reaches p-1 peers
    assert bench_ddp.link_bytes_per_step("allreduce", 100, 2) == 200
    assert bench_ddp.link_bytes_per_step("allreduce", 100, 4) == 600
    assert bench_ddp.link_bytes_per_step("allgather", 100, 2) == 200
    assert bench_ddp.link_bytes_per_step("allgather", 100, 4) == 1200
    assert bench_ddp.link_bytes_per_step("none", 100, 4) == 0
    # reduce-scatter + all-gather of a compressed bucket N: (p-1)/p N out in each phase per rank
    assert bench_ddp.link_bytes_per_step("reduce_scatter", 100, 4) == 600
    # Two nodes of p/2 ranks: only the link between them counts. At p = 2 it is the shared link.
    for algorithm in ("allreduce", "allgather", "reduce_scatter"):
        assert bench_ddp.link_bytes_per_step(algorithm, 100, 2, nodes=2) == 200
    assert bench_ddp.link_bytes_per_step("allreduce", 100, 4, nodes=2) == 300  # a ring crosses twice
    assert bench_ddp.link_bytes_per_step("allgather", 100, 4, nodes=2) == 600
    assert bench_ddp.link_bytes_per_step("reduce_scatter", 100, 4, nodes=2) == 350  # 200 all-to-all, 150 ring
    assert bench_ddp.link_bytes_per_step("reduce_scatter", 100, 4, nodes=2, hierarchical=True) == 400
    with pytest.raises(ValueError, match="nodes"):
        bench_ddp.link_bytes_per_step("allreduce", 1, 3, nodes=2)
    with pytest.raises(ValueError, match="algorithm"):
        bench_ddp.link_bytes_per_step("broadcast", 1, 2)
    with pytest.raises(ValueError, match="world_size"):
        bench_ddp.link_bytes_per_step("allreduce", 1, 0)


def test_torch_hook_payload_hand_checked():
    shapes = [(10, 2, 10), (10,)]  # a 10 x 20 matrix and a bias: 210 elements
    assert bench_ddp.torch_hook_payload_bytes("none", shapes) == 840
    assert bench_ddp.torch_hook_payload_bytes("fp16", shapes) == 420
    assert bench_ddp.torch_hook_payload_bytes("quant-pertensor", shapes) == 210 + 8
    # rank 1: 200 >= 2 * (10 + 20) * 1, so P (10) + Q (20) go instead of 200; the bias goes as is
    assert bench_ddp.torch_hook_payload_bytes("powersgd:1", shapes) == 4 * (30 + 10)
    # rank 4: 200 < 2 * 30 * 4, PowerSGD leaves the matrix uncompressed
    assert bench_ddp.torch_hook_payload_bytes("powersgd:4", shapes) == 840
    with pytest.raises(ValueError, match="nuqsgd:4"):
        bench_ddp.torch_hook_payload_bytes("nuqsgd:4", shapes)


def test_ideal_speedup_hand_checked():
    assert bench_ddp.ideal_speedup(10.0, 4.0, 1.0) == pytest.approx(1.0)
    assert bench_ddp.ideal_speedup(10.0, 4.0, 2.0) == pytest.approx(10 / 7)
    assert bench_ddp.ideal_speedup(10.0, 4.0, 1e12) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="byte_ratio"):
        bench_ddp.ideal_speedup(1.0, 1.0, 0.0)


def test_read_loopback_bytes_parses_proc_net_dev(tmp_path):
    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n"
        "  eth0: 999 1 0 0 0 0 0 0 888 1 0 0 0 0 0 0\n"
        "    lo: 12345 10 0 0 0 0 0 0 67890 11 0 0 0 0 0 0\n"
    )
    path = tmp_path / "dev"
    path.write_text(text)
    assert bench_ddp.read_loopback_bytes(str(path)) == 67890
    assert bench_ddp.read_interface_bytes("eth0", str(path)) == 999 + 888  # a veth end: both directions
    path.write_text(text.replace("lo:", "xx:"))
    with pytest.raises(ValueError, match="'lo'"):
        bench_ddp.read_loopback_bytes(str(path))


def test_tbf_burst_exceeds_a_loopback_frame_and_a_timer_tick():
    for gbps in (0.1, 1.0, 10.0, 100.0):
        burst = bench_ddp.tbf_burst_bytes(gbps)
        assert burst > 65536 and burst >= gbps * 1e9 / 8 / 1000  # HZ=1000: one tick of tokens
    with pytest.raises(ValueError, match="bandwidth"):
        bench_ddp.tbf_burst_bytes(0)


def test_summarize_speedups_and_failures():
    rows = [
        dict(spec="none", median_step_s=2.0, loss_after_steps=1.0, link_bytes_per_step=800.0, model_link_bytes_per_step=790.0),
        dict(spec="local", median_step_s=1.0, loss_after_steps=9.0, link_bytes_per_step=1.0, model_link_bytes_per_step=0.0),
        dict(spec="qsgd:4", median_step_s=1.6, loss_after_steps=1.2, link_bytes_per_step=100.0, model_link_bytes_per_step=99.0),
        dict(spec="quant-pertensor", error="RuntimeError: boom"),
    ]
    out = {r["spec"]: r for r in bench_ddp.summarize(rows)}
    q = out["qsgd:4"]
    assert q["speedup"] == pytest.approx(1.25) and q["byte_ratio"] == pytest.approx(8.0)
    assert q["ideal_speedup"] == pytest.approx(2.0 / (1.0 + 1.0 / 8))
    assert q["loss_vs_fp32"] == pytest.approx(0.2)
    assert out["local"]["loss_after_steps"] is None  # unaveraged model: no comparable loss
    assert out["quant-pertensor"] == rows[3]
    table = bench_ddp.format_table(list(out.values()))
    assert "| qsgd:4 | 1600 |" in table and "FAILED quant-pertensor" in table
    assert "share" not in table  # no profiled steps, no share column
    out["qsgd:4"]["op_share"] = {"commcomp_op_share": 0.25}
    table = bench_ddp.format_table(list(out.values()))
    assert table.splitlines()[0].endswith("commcomp op share |")
    assert [line.endswith("| 25% |") for line in table.splitlines()[2:5]] == [False, False, True]


def test_merge_rounds_pools_times_and_keeps_failures():
    rows = [
        dict(spec="none", step_times_s=[1.0, 5.0], median_step_s=3.0, link_bytes_per_step=10.0, loss_after_steps=1.0),
        dict(spec="fp16", error="boom"),
        dict(spec="none", step_times_s=[2.0, 3.0], median_step_s=2.5, link_bytes_per_step=20.0, loss_after_steps=2.0),
        dict(spec="fp16", step_times_s=[1.0], median_step_s=1.0, link_bytes_per_step=1.0, loss_after_steps=1.0),
    ]
    merged = bench_ddp.merge_rounds(rows)
    assert [r["spec"] for r in merged] == ["none", "fp16"] and merged[1]["error"] == "boom"
    none = merged[0]
    assert none["rounds"] == 2 and sorted(none["step_times_s"]) == [1.0, 2.0, 3.0, 5.0]
    assert none["median_step_s"] == 2.5  # median of the pool, not of the two medians' mean (2.75)
    assert none["link_bytes_per_step"] == 15.0 and none["loss_after_steps"] == 1.5


# -- a tiny real run -----------------------------------------------------------------------------
def _tiny_rank(rank, world, specs):
    data = bench_ddp.load_data(0)
    return [bench_ddp._run_contender(s, TINY, data, torch.device("cpu")) for s in specs]


def test_tiny_two_rank_run_reports_consistent_rows():
    specs = ["none", "nuqsgd:4", "allreduce-qsgd:4", "powersgd:1", "rs-nuqsgd:4"]
    rows0, rows1 = run_ranks(_tiny_rank, 2, specs, timeout=120)
    by = {r["spec"]: r for r in rows0}
    for r0, r1 in zip(rows0, rows1):
        assert len(r0["step_times_s"]) == TINY["steps"] and min(r0["step_times_s"]) > 0
        assert r0["step_times_s"] == r1["step_times_s"]  # max over ranks, identical everywhere
        assert r0["cpu_times_s"] == r1["cpu_times_s"] and min(r0["cpu_times_s"]) > 0  # mean over ranks
        assert math.isfinite(r0["loss_after_steps"])
        # averaged gradients keep the ranks' weights equal: same held-out loss on both ranks
        assert r0["loss_after_steps"] == pytest.approx(r1["loss_after_steps"], rel=1e-5)
    numel = by["none"]["params"]
    assert by["none"]["payload_bytes_per_rank"] == 4 * numel
    # 4-bit symbols + one fp32 norm per 512 (+ headers): between 1/8 and 1/6 of fp32
    assert 4 * numel / 8 < by["nuqsgd:4"]["payload_bytes_per_rank"] < 4 * numel / 6
    assert by["nuqsgd:4"]["model_link_bytes_per_step"] == 2 * by["nuqsgd:4"]["payload_bytes_per_rank"]
    # reduce-scatter: the same compressed bucket per rank, on the ring-allreduce byte budget
    assert 4 * numel / 8 < by["rs-nuqsgd:4"]["payload_bytes_per_rank"] < 4 * numel / 6


# -- inside a namespace (root + iproute2 only) ---------------------------------------------------
needs_netns = pytest.mark.skipif(bench_ddp.can_shape() is not None, reason=str(bench_ddp.can_shape()))


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@needs_netns
def test_namespace_is_shaped_and_removed_even_on_error():
    name = f"cctest{os.getpid()}"
    with pytest.raises(RuntimeError, match="inside"):
        with bench_ddp.shaped_namespace(name, 0.5):
            qdisc = subprocess.run(["ip", "netns", "exec", name, "tc", "qdisc", "show", "dev", "lo"],
                                   capture_output=True, text=True, check=True).stdout
            assert "tbf" in qdisc and "500Mbit" in qdisc
            raise RuntimeError("inside")
    assert name not in _namespaces()


@needs_netns
def test_measured_link_bytes_match_the_model_in_a_namespace():
    cfg = dict(TINY, count_link=True, world_size=2, contenders=["none", "nuqsgd:4"], threads=1, device="cpu",
               link_check_bytes=1 << 16, port=29511, collective_timeout_s=60)
    name = f"cctest{os.getpid()}"
    with bench_ddp.shaped_namespace(name, None) as ns:
        rows, link, error = bench_ddp._run_worker(cfg, ns, timeout_s=120)
    assert error is None and link is not None and len(rows) == 2
    for r in rows:
        # TCP/IP headers on a 64 KiB-MTU loopback, barriers and the size exchange: a few % at most
        assert r["model_link_bytes_per_step"] <= r["link_bytes_per_step"] <= 1.10 * r["model_link_bytes_per_step"] + 20_000


@needs_netns
def test_two_nodes_are_joined_by_a_shaped_link_and_removed_even_on_error():
    name = f"cctest{os.getpid()}"
    with pytest.raises(RuntimeError, match="inside"):
        with bench_ddp.shaped_nodes(name, 0.5) as (a, b):
            for ns, dev in ((a, "cc0"), (b, "cc1")):
                qdisc = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", dev],
                                       capture_output=True, text=True, check=True).stdout
                assert "tbf" in qdisc and "500Mbit" in qdisc
            addresses = subprocess.run(["ip", "netns", "exec", a, "ip", "-4", "addr", "show", "cc0"],
                                       capture_output=True, text=True, check=True).stdout
            assert f"{bench_ddp.NODE_SUBNET}1/24" in addresses
            raise RuntimeError("inside")
    listed = _namespaces()
    assert f"{name}n0" not in listed and f"{name}n1" not in listed


@needs_netns
def test_bytes_between_two_nodes_match_the_model():
    # one rank per node: all traffic crosses the veth, so the interface counts every byte
    cfg = dict(TINY, count_link=True, world_size=2, contenders=["none", "rs-nuqsgd:4"], threads=1, device="cpu",
               link_check_bytes=1 << 16, port=29512, collective_timeout_s=60, nodes=2, local_ranks=1,
               master_addr=f"{bench_ddp.NODE_SUBNET}1", interface="cc0")
    name = f"cctest{os.getpid()}"
    with bench_ddp.shaped_nodes(name, 10.0) as namespaces:
        rows, link, error = bench_ddp._run_worker_nodes(cfg, namespaces, timeout_s=180)
    assert error is None and link is not None and len(rows) == 2
    for r in rows:
        assert r["model_link_bytes_per_step"] <= r["link_bytes_per_step"] <= 1.15 * r["model_link_bytes_per_step"] + 40_000


@needs_netns
def test_bytes_between_two_nodes_of_two_ranks_match_the_model():
    # two ranks per node: only cross-node traffic is on the veth (rings cross it twice; the
    # hierarchical rs- hook sends only its compressed share across, the flat one every chunk)
    cfg = dict(TINY, count_link=True, world_size=4, threads=1, device="cpu", link_check_bytes=1 << 16, port=29522,
               contenders=["none", "nuqsgd:4", "rs-nuqsgd:4", "rs-nuqsgd:4+flat"], collective_timeout_s=60, nodes=2,
               local_ranks=2, master_addr=f"{bench_ddp.NODE_SUBNET}1", interface="cc0")
    name = f"cctest{os.getpid()}"
    with bench_ddp.shaped_nodes(name, 10.0) as namespaces:
        rows, link, error = bench_ddp._run_worker_nodes(cfg, namespaces, timeout_s=240)
    assert error is None and link is not None and len(rows) == 4, error
    for r in rows:
        assert r["model_link_bytes_per_step"] <= r["link_bytes_per_step"] <= 1.15 * r["model_link_bytes_per_step"] + 80_000, r
