"""Security: a local run listens on loopback only; outside files are never unpickled; no remote code
and no insecure-serialization switch unless the config asks."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import os, tempfile, time
    import psutil, ray
    from llama_rlhf.config import load_config
    from llama_rlhf.orchestrator.cluster import start_ray

    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rs_", dir="/tmp")
    start_ray(load_config("configs/ci.yaml").cluster)

    @ray.remote(num_cpus=0.1)
    class Rank:
        def bind(self):
            # what a rank 0 binds: the role's rendezvous store and the weight-sync sender's socket
            from llama_rlhf.actors.rendezvous import bind_master_store, node_endpoint
            from llama_rlhf.actors.weight_sync import listen_socket
            host = node_endpoint()[0]
            self.sock = listen_socket(host)
            return host, bind_master_store(host), self.sock.getsockname()[1]

        def join(self, host, port, rank):
            # a two-rank gloo group, as the roles and the weight sync form
            import datetime, torch, torch.distributed as dist
            store = torch.distributed.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=60))
            dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
            t = torch.ones(1)
            dist.all_reduce(t)
            return float(t)

    if os.environ.get("WITH_ROLLOUT"):  # a vLLM engine too (its workers and its distributed init)
        from llama_rlhf.actors.rollout import RolloutGroup
        from llama_rlhf.models import build_causal_lm, llama_config, save_hf

        path = save_hf(build_causal_lm(llama_config("tiny", vocab_size=256, max_seq_len=128), seed=0),
                       tempfile.mkdtemp(prefix="rs_model_"))
        cluster = load_config("configs/ci.yaml", ["cluster.rollout.dtype=float32"]).cluster
        rollout = RolloutGroup(path, cluster, seed=0, max_model_len=128, kv_cache_gib=0.25, timeout_s=300)
        print("GENERATED", len(rollout.generate([[5, 6, 7]], n=1, temperature=0.0, max_new_tokens=4)[0][0].token_ids))

    a, b = Rank.remote(), Rank.remote()
    host, port, sync = ray.get(a.bind.remote())
    print("ENDPOINT", (host, port, sync))
    print("ALLREDUCE", ray.get([a.join.remote(host, port, 0), b.join.remote(host, port, 1)]))
    time.sleep(2)
    for p in [psutil.Process()] + psutil.Process().children(recursive=True):
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    print("LISTEN", p.pid, p.name(), c.laddr.ip, c.laddr.port)
        except psutil.Error:
            pass
    if os.environ.get("WITH_ROLLOUT"):
        rollout.shutdown()  # not left to ray.shutdown(): a killed engine leaves its /dev/shm queues behind
    ray.shutdown()
""")


@pytest.mark.parametrize("with_rollout", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_local_run_listens_on_loopback_only(with_rollout):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled",
           "WITH_ROLLOUT": "1" if with_rollout else ""}
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    listen = [line.split() for line in r.stdout.splitlines() if line.startswith("LISTEN")]
    assert len(listen) >= 5, r.stdout  # GCS, raylet, agents, workers, our rendezvous + sync sockets
    host, store_port, sync_port = eval(r.stdout.split("ENDPOINT ", 1)[1].splitlines()[0])
    assert host == "127.0.0.1" and "ALLREDUCE [2.0, 2.0]" in r.stdout
    assert not with_rollout or "GENERATED 4" in r.stdout
    ports = {int(x[-1]) for x in listen}
    assert {store_port, sync_port} <= ports
    outside = [x for x in listen if x[-2] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert not outside, outside


def _sources():
    return [p for p in (ROOT / "llama_rlhf").rglob("*.py")] + list((ROOT / "benchmarks").rglob("*.py"))


def test_no_unsafe_loading_or_insecure_switches():
    bad = []
    for p in _sources():
        text = p.read_text()
        for pat in (r"pickle\.loads?\(", r"trust_remote_code\s*=\s*True", r"INSECURE_SERIALIZATION",
                    r"torch\.load\((?![^)]*weights_only\s*=\s*True)"):
            bad += [f"{p.relative_to(ROOT)}: {pat}" for _ in re.finditer(pat, text)]
    assert not bad, bad
