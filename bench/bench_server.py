"""The node server's cost: end-to-end latency and throughput of LocalRpcDataSampler.

In one run on one machine: p50/p99 latency and aggregate negatives/s for 1, 2, 4 and 8
client processes, the fused request against RecIS's 5-call sequence, results through
shared memory against copies through the socket, the in-process NegativeSampler, and the
bare round trip of torch.distributed.rpc (what RecIS uses) carrying the same request and
response bytes. JSON + PNG to --out.

Throughput against in-process (issue 9: 8 clients within 10 %): for each client count, in
rounds, the in-process sampler alone makes as many fused calls as all clients together,
then the clients make theirs; "rounds" holds both rates per round and the median of their
ratios. In-process alone is the fair peer: the server, like it, runs one numba pool on the
machine's cores, while the "fused_interleaved" pair alternates two processes' pools (each
call pays for the other pool's threads), which measures the server's added latency but
depresses both rates; "fused_interleaved_paused" is that pair with an untimed pause after
each call, so no call starts beside the other pool's spinning thread (PAUSE_S).

    python bench/bench_server.py [--items 1000000] [--batch-size 4096] [--iters 40] [--client-iters 6] [--rounds 7]
        [--clients 1,2,4,8] [--out bench/results]

--node is bench/device_check.sh's step: only the server on --device (default cuda) with
--results (default cuda: answers written into each rank's GPU buffers), fused requests
from 1 and 4 client processes (--clients), p50/p99 and negatives/s, each client count
written to --out/bench_server_node.json as soon as it is measured; without pyzmq it says so
there and exits 0.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import threading
import time

import numpy as np
import torch

from report import Run, load_average, save

from gpu_negsample import LocalRpcDataSampler, NegativeSampler, RaggedTensor
from gpu_negsample.server import protocol
from gpu_negsample.synthetic import DEDUP_TAG, SAMPLE_TAG, SKEY, WEIGHT_TAG, make_catalogue, positive_batch

K = 10
CLIENTS = (1, 2, 4, 8)
SPAWN = mp.get_context("spawn")


def ragged(values: np.ndarray) -> RaggedTensor:
    return RaggedTensor(torch.from_numpy(values), torch.arange(values.shape[0] + 1))


def five_calls(s, items, cats, default_id):
    neg = s.sample_ids(items, K, cats)
    pos = s.valid_sample_ids(items.values(), default_id)
    ids = s.combine_vector_with_sample_counts(pos, K, neg)
    return s.pack_feature(ids, default_id)


def interleaved(fns: dict, iters, pause_s: float = 0.0) -> dict[str, list[float]]:
    """Each of `fns` timed once per round, in turn, for `iters` rounds: what the machine does
    meanwhile falls on all of them alike, so their ratio holds where absolute figures move.
    With pause_s, an untimed sleep after each call (see PAUSE_S)."""
    for fn in fns.values():
        fn()  # warm-up
    out = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t0)
            if pause_s:
                time.sleep(pause_s)
    return out


# numba's TBB worker threads spin ~1 ms after a parallel region before they sleep (measured
# here: 1.0 ms at load 2, ~3 ms at load 3). Alternated back to back, each call starts while
# the other process's pool still spins on one of the 2 cores: the server's request is packed,
# parsed and handed to its lane beside the in-process sampler's spinning thread, and the next
# in-process call starts beside the server's. With an untimed pause after each call both pools
# are asleep when a call starts, as between the batches of a training loop that does other
# work: every call then starts cold (pool wake-up, caches; the in-process call itself measured
# 14 -> 22 ms at load 2-4) and the pair shows the server's added latency under that start.
# Both pairs are printed; neither replaces the other.
PAUSE_S = 0.02


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) process pid has used so far, from /proc (in
    clock ticks, 10 ms here: divide a difference over many calls); None where /proc is absent."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_timed(fn, clock=time.thread_time):
    """fn, and a list that collects the CPU seconds (`clock`) each call of it used."""
    spent = []

    def call():
        c0 = clock()
        fn()
        spent.append(clock() - c0)
    return call, spent


def timed(fn, iters) -> list[float]:
    return interleaved({"": fn}, iters)[""]


def burst(fn, calls) -> list[float]:
    """Latencies of `calls` calls of fn, back to back (no warm-up: the caller times the burst)."""
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summary(latencies: list[float], negatives_per_call: int, wall: float | None = None) -> dict:
    lat = np.asarray(latencies) * 1e3
    calls = len(latencies)
    out = {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)), "calls": calls}
    if negatives_per_call:
        out["negatives_per_s"] = negatives_per_call * calls / (wall if wall else float(np.sum(latencies)))
    return out


def client_loop(rank, job, ids, cats, default_id, iters, rounds, results_mode, device, sequences, barrier,
                results) -> None:
    """One training process: `rounds` bursts of `iters` fused requests, then (`sequences`) one burst
    of `iters` 5-call sequences; each burst starts and ends with every client and the main process
    at `barrier`, so the main process times all clients' burst together. Puts (rank, fused, calls5);
    when it fails, breaks the barrier and puts (rank, error), so the parent reports it at once."""
    os.environ.update(LOCAL_PROCESS_RANK=str(rank), RANK=str(rank))
    try:
        with LocalRpcDataSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=rank, device=device, name=job,
                                 results=results_mode) as s:
            items, tags = ragged(ids), ragged(cats)
            s.sample(items, K, tags, default_value=default_id)  # connect and warm up
            barrier.wait()
            fused, calls5 = [], []
            for _ in range(rounds):
                barrier.wait()
                fused += burst(lambda: s.sample(items, K, tags, default_value=default_id), iters)
                barrier.wait()
            if sequences:
                barrier.wait()
                calls5 = burst(lambda: five_calls(s, items, tags, default_id), iters)
                barrier.wait()
            results.put((rank, fused, calls5))
    except Exception as e:
        barrier.abort()
        results.put((rank, f"client rank {rank}: {type(e).__name__}: {e}"))


def run_clients(job, n, batch, default_id, iters, rounds, results_mode, in_process=None, device="cpu",
                sequences=True, timeout_s=600.0) -> dict:
    """n client processes against the server, in `rounds` rounds: the in-process sampler (when
    given) makes n * iters fused calls alone (the server idle), then the n clients make iters each
    at once (the in-process sampler idle). Both bursts of a round see the same machine, so the
    median of the rounds' ratios holds where this shared machine's speed moves between rounds.
    A RuntimeError naming the clients that failed, instead of waiting for their figures."""
    barrier, results = SPAWN.Barrier(n + 1, timeout=timeout_s), SPAWN.Queue()
    procs = [SPAWN.Process(target=client_loop, args=(rank, job, batch[0], batch[1], default_id, iters, rounds,
                                                     results_mode, device, sequences, barrier, results))
             for rank in range(1, n + 1)]
    for p in procs:
        p.start()
    negatives = batch[0].shape[0] * K
    local_walls, server_walls, wall5 = [], [], None
    try:
        barrier.wait()  # every client connected and warmed up
        for _ in range(rounds):
            if in_process is not None:
                t0 = time.perf_counter()
                burst(in_process, n * iters)
                local_walls.append(time.perf_counter() - t0)
            barrier.wait()
            t0 = time.perf_counter()
            barrier.wait()
            server_walls.append(time.perf_counter() - t0)
        if sequences:
            barrier.wait()
            t0 = time.perf_counter()
            barrier.wait()
            wall5 = time.perf_counter() - t0
    except threading.BrokenBarrierError:
        pass  # a client failed: its error is on the queue
    got = [results.get(timeout=timeout_s) for _ in procs]
    for p in procs:
        p.join(60)
    failed = [g[1] for g in got if len(g) == 2]
    if failed:
        raise RuntimeError("; ".join(failed))
    out = {"clients": n, "fused": summary([t for _, f, _ in got for t in f], negatives, sum(server_walls))}
    if sequences:
        out["five_calls"] = summary([t for _, _, c in got for t in c], negatives, wall5)
    if in_process is not None:
        local_rate = n * iters * negatives / np.asarray(local_walls)
        server_rate = n * iters * negatives / np.asarray(server_walls)
        out["rounds"] = {"in_process_negatives_per_s": local_rate.tolist(),
                         "server_negatives_per_s": server_rate.tolist(),
                         "server_over_in_process_median": float(np.median(server_rate / local_rate))}
    return out


def node_step(args) -> dict:
    """device_check.sh's step (--node): the server on args.device answering 1 and 4 (args.clients)
    client processes' fused requests, results in args.results; each client count's figures
    are on disk as soon as they are measured, and one that fails does not stop the next."""
    run = Run(args.out, "bench_server_node")
    run.results.update(settings=vars(args), machine={"host": platform.node(), "cpus": os.cpu_count(),
                                                     "torch": torch.__version__, "load_average": load_average()})
    if importlib.util.find_spec("zmq") is None:
        run.results["skipped"] = "pyzmq is not installed here: the node server cannot run (pip install pyzmq)"
        run.flush()
        print(f"node server: SKIPPED, {run.results['skipped']}")
        return run.results
    cat = make_catalogue(args.items, args.categories, seed=0)
    default_id = int(cat.ids[0])
    b = positive_batch(cat, args.batch_size, np.random.default_rng(0))[0]
    batch = (b[DEDUP_TAG].values().numpy().copy(), b[SAMPLE_TAG].values().numpy().copy())
    job = f"benchnode{os.getpid()}"
    starter = None
    with run.section("start") as figures:
        t0 = time.perf_counter()
        starter = LocalRpcDataSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=0, device=args.device, name=job,
                                      results=args.results)
        starter.reload(cat.table)
        figures["reload_s"] = time.perf_counter() - t0
        figures["placement"] = starter.describe()
    if "error" in run.results["start"]:
        return run.results
    try:
        for n in map(int, args.clients.split(",")):
            with run.section(f"clients_{n}") as figures:
                figures.update(run_clients(job, n, batch, default_id, args.iters, 1, args.results, device=args.device,
                                           sequences=False, timeout_s=args.client_timeout))
                f = figures["fused"]
                print(f"node server on {args.device}, results={args.results}, {n} client(s), {args.batch_size}x{K} "
                      f"fused: p50 {f['p50_ms']:.3f} ms, p99 {f['p99_ms']:.3f} ms, {f['negatives_per_s']:.3e} neg/s")
    finally:
        starter.close()
        run.results["machine"]["load_average_after"] = load_average()
        run.flush()
    return run.results


def rpc_echo_worker(response_bytes, ready) -> None:
    import torch.distributed.rpc as rpc

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29631")
    rpc.init_rpc("server", rank=1, world_size=2)
    ready.set()
    rpc.shutdown()


def respond(request: list, response_bytes: int) -> torch.Tensor:
    return torch.empty(response_bytes, dtype=torch.uint8)


def rpc_round_trip(request_bytes: int, response_bytes: int, iters: int) -> dict:
    """torch.distributed.rpc between two local processes, carrying the same payload sizes."""
    import torch.distributed.rpc as rpc

    ready = SPAWN.Event()
    worker = SPAWN.Process(target=rpc_echo_worker, args=(response_bytes, ready))
    worker.start()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29631")
    rpc.init_rpc("client", rank=0, world_size=2)
    payload = [torch.empty(request_bytes, dtype=torch.uint8)]
    lat = timed(lambda: rpc.rpc_sync("server", respond, args=(payload, response_bytes)), iters)
    rpc.shutdown()
    worker.join(60)
    return summary(lat, 0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--categories", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--iters", type=int, default=40, help="calls timed for the in-process and interleaved figures")
    ap.add_argument("--client-iters", type=int, default=6, help="fused calls per client per round, and 5-call sequences per client once")
    ap.add_argument("--rounds", type=int, default=7, help="rounds of in-process against server bursts")
    ap.add_argument("--clients", default=",".join(map(str, CLIENTS)))
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--node", action="store_true", help="only the server on --device with --results (device_check)")
    ap.add_argument("--device", default="cuda", help="--node: the server's device")
    ap.add_argument("--results", default="cuda", help="--node: where answers go (cuda, shm or socket)")
    ap.add_argument("--client-timeout", type=float, default=600.0, help="seconds to wait for a client's figures")
    args = ap.parse_args(argv)
    if args.node:
        return node_step(args)
    cat = make_catalogue(args.items, args.categories, seed=0)
    default_id = int(cat.ids[0])
    b = positive_batch(cat, args.batch_size, np.random.default_rng(0))[0]
    batch = (b[DEDUP_TAG].values().numpy().copy(), b[SAMPLE_TAG].values().numpy().copy())
    items, tags = ragged(batch[0]), ragged(batch[1])
    negatives = args.batch_size * K
    results = {"machine": {"host": platform.node(), "cpus": os.cpu_count(), "processor": platform.processor(),
                           "torch": torch.__version__, "python": platform.python_version(),
                           "load_average_start": load_average()},
               "settings": vars(args)}

    local = NegativeSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=0, device="cpu")
    local.reload(cat.table)
    results["in_process"] = {
        "fused": summary(timed(lambda: local.sample(items, K, tags, default_value=default_id), args.iters), negatives),
        "five_calls": summary(timed(lambda: five_calls(local, items, tags, default_id), args.iters), negatives)}

    job = f"bench{os.getpid()}"
    with LocalRpcDataSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=0, device="cpu", name=job) as starter:
        starter.reload(cat.table)
        # CPU per call beside the wall times: what bounds throughput when clients and server share
        # the cores, and steadier than wall time on a loaded machine. The in-process call's is its
        # process's (its numba threads); the server call's is the client's own thread's plus the
        # server process's over all calls (warm-up included) divided by their number.
        in_process_call, in_process_cpu = cpu_timed(lambda: local.sample(items, K, tags, default_value=default_id),
                                                    time.process_time)
        server_call, client_cpu = cpu_timed(lambda: starter.sample(items, K, tags, default_value=default_id))
        starter.sample(items, K, tags, default_value=default_id)  # the server's first call may compile kernels
        server_cpu_before = process_cpu_s(starter.server_pid)
        pair = interleaved({"in_process": in_process_call, "server": server_call}, args.iters)
        server_cpu_after = process_cpu_s(starter.server_pid)
        il = results["fused_interleaved"] = {name: summary(lat, negatives) for name, lat in pair.items()}
        il["overhead_p50_ms"] = float(np.median((np.asarray(pair["server"]) - np.asarray(pair["in_process"])) * 1e3))
        paused = interleaved({"in_process": lambda: local.sample(items, K, tags, default_value=default_id),
                              "server": lambda: starter.sample(items, K, tags, default_value=default_id)},
                             args.iters, PAUSE_S)
        ip = results["fused_interleaved_paused"] = {name: summary(lat, negatives) for name, lat in paused.items()}
        ip["pause_ms"] = PAUSE_S * 1e3
        ip["overhead_p50_ms"] = float(np.median((np.asarray(paused["server"]) - np.asarray(paused["in_process"])) * 1e3))
        il["cpu_ms_per_call"] = {
            "in_process_p50": float(np.median(in_process_cpu) * 1e3),
            "client_thread_p50": float(np.median(client_cpu) * 1e3),
            "server_process_mean": None if server_cpu_before is None else
            (server_cpu_after - server_cpu_before) * 1e3 / len(client_cpu)}
        fused_in_process = lambda: local.sample(items, K, tags, default_value=default_id)  # noqa: E731
        results["server"] = [run_clients(job, n, batch, default_id, args.client_iters, args.rounds, "shm",
                                         fused_in_process) for n in map(int, args.clients.split(","))]
        results["server_socket_results"] = run_clients(job, 1, batch, default_id, args.client_iters, args.rounds,
                                                       "socket", fused_in_process)
        # the bytes one fused request and its answer carry, for the torch.distributed.rpc peer
        arrays = {}
        protocol.encode("dedup", items, arrays), protocol.encode("tags", tags, arrays)
        request_bytes = sum(a.nbytes for a in arrays.values())
        answer = local.sample(items, K, tags, default_value=default_id)
        out = {}
        protocol.encode_table("f", answer.features, out)
        response_bytes = sum(a.nbytes for a in out.values()) + 3 * answer.ids.nbytes
    results["payload_bytes"] = {"request": request_bytes, "response": response_bytes}
    results["torch_rpc_round_trip"] = rpc_round_trip(request_bytes, response_bytes, args.iters)

    results["machine"]["load_average_end"] = load_average()
    print(json.dumps(results["machine"]))
    print(f"batch {args.batch_size} x {K}; request {request_bytes / 1e3:.0f} kB, response {response_bytes / 1e6:.1f} MB")
    ip = results["in_process"]
    print(f"in-process         fused p50 {ip['fused']['p50_ms']:.1f} ms   5 calls p50 {ip['five_calls']['p50_ms']:.1f} ms")
    il = results["fused_interleaved"]
    print(f"fused, one process, in-process and server calls interleaved: in-process p50 "
          f"{il['in_process']['p50_ms']:.1f} ms, server p50 {il['server']['p50_ms']:.1f} ms, "
          f"median overhead {il['overhead_p50_ms']:.1f} ms")
    pp = results["fused_interleaved_paused"]
    print(f"the same pair, {pp['pause_ms']:.0f} ms untimed pause after each call (both numba pools asleep): "
          f"in-process p50 {pp['in_process']['p50_ms']:.1f} ms, server p50 {pp['server']['p50_ms']:.1f} ms, "
          f"median overhead {pp['overhead_p50_ms']:.1f} ms")
    cpu = il["cpu_ms_per_call"]
    print(f"fused CPU per call: in-process {cpu['in_process_p50']:.1f} ms; server path: client thread "
          f"{cpu['client_thread_p50']:.2f} ms + server process {cpu['server_process_mean'] or float('nan'):.1f} ms")
    for r in results["server"]:
        f, c = r["fused"], r["five_calls"]
        print(f"server {r['clients']} client(s)  fused p50 {f['p50_ms']:.1f} p99 {f['p99_ms']:.1f} ms, "
              f"{f['negatives_per_s']:.3e} neg/s | 5 calls p50 {c['p50_ms']:.1f} p99 {c['p99_ms']:.1f} ms, "
              f"{c['negatives_per_s']:.3e} neg/s | fused throughput / in-process alone, median of "
              f"{len(r['rounds']['server_negatives_per_s'])} rounds: {r['rounds']['server_over_in_process_median']:.2f}")
    so = results["server_socket_results"]["fused"]
    print(f"server, results by socket copy: fused p50 {so['p50_ms']:.1f} p99 {so['p99_ms']:.1f} ms")
    rp = results["torch_rpc_round_trip"]
    print(f"torch.distributed.rpc bare round trip, same bytes: p50 {rp['p50_ms']:.1f} p99 {rp['p99_ms']:.1f} ms")
    save(results, args.out, "bench_server", plot)
    return results


def plot(results, plt):
    fig, ax = plt.subplots(1, 2, figsize=(12, 4))
    clients = [r["clients"] for r in results["server"]]
    for kind in ("fused", "five_calls"):
        ax[0].plot(clients, [r[kind]["p50_ms"] for r in results["server"]], "o-", label=f"{kind} p50")
        ax[0].plot(clients, [r[kind]["p99_ms"] for r in results["server"]], "o--", label=f"{kind} p99")
    ax[0].axhline(results["in_process"]["fused"]["p50_ms"], color="k", lw=1, label="in-process fused p50")
    ax[0].axhline(results["torch_rpc_round_trip"]["p50_ms"], color="r", lw=1, label="torch rpc bare round trip p50")
    ax[0].set_xlabel("client processes")
    ax[0].set_ylabel("ms per request")
    ax[0].set_title("latency")
    ax[0].legend(fontsize=7)
    for kind in ("fused", "five_calls"):
        ax[1].plot(clients, [r[kind]["negatives_per_s"] for r in results["server"]], "o-", label=kind)
    ax[1].set_xlabel("client processes")
    ax[1].set_ylabel("negatives / s (all clients)")
    ax[1].set_title("throughput")
    ax[1].legend()
    fig.suptitle(f"LocalRpcDataSampler, {results['settings']['batch_size']}x{K} per request, "
                 f"{results['machine']['cpus']} cores")
    return fig


if __name__ == "__main__":
    main()
