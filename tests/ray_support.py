"""Helpers for the Ray Serve tests: one private Ray cluster for the test session (bound to loopback,
started the way `mmserve serve --ray` starts it) and `mmserve serve --ray` processes joining it."""

from __future__ import annotations

import ipaddress
import os
import time
from typing import Optional

import httpx
import psutil
from conftest import ServerProcess
from test_server_split import _HEADERS, _multipart

__all__ = ["RayCluster", "RayServerProcess", "ray_processes", "listening_addresses", "remote_peers", "non_loopback",
           "replica_pids", "labels"]

# Small Ray for CI's 2 cores: a smaller object store, no log deduplication work.
TEST_RAY_ENV = {"RAY_DEDUP_LOGS": "0", "RAY_object_store_memory": str(200 * 1024 * 1024)}


class RayCluster:
    """A Ray head in this process (ray.init with mmserve's loopback settings); `stop()` ends it."""

    def __init__(self) -> None:
        os.environ.update(TEST_RAY_ENV)
        from server.ray_serve import cluster

        cluster.start_or_join(None, num_cpus=8)  # logical CPUs: enough slots for 2+2 replicas + ingress
        import ray

        self.address = ray.get_runtime_context().gcs_address

    def stop(self) -> None:
        from server.ray_serve import cluster

        cluster.stop()


class RayServerProcess(ServerProcess):
    """`python -m server --ray ...` (= `mmserve serve --ray ...`) on a free loopback port."""

    def __init__(self, args: list[str], env: Optional[dict[str, str]] = None, address: Optional[str] = None,
                 replicas: int = 2, ready_timeout: float = 300) -> None:
        ray_args = ["--ray", "--replicas", str(replicas)] + (["--ray-address", address] if address else [])
        super().__init__(ray_args + args, env=env, ready_timeout=ready_timeout)
        # /readyz is 200 once one replica of each model answers; `serve.run` returns (and the CLI
        # says so) once every replica is up. Tests that count replicas need the latter.
        deadline = time.monotonic() + ready_timeout
        while "serving on Ray at" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mmserve serve --ray did not finish deploying:\n{self.output()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 60) -> bool:
        return super().stop(timeout)  # removing a Ray application takes longer than a uvicorn drain

    def stopped_cleanly(self) -> bool:
        """On SIGTERM the CLI removes its application (and a Ray it started) and exits 0."""
        return self.proc.returncode == 0 and "removing the application" in self.output()


def ray_processes() -> list[psutil.Process]:
    """Every process of Ray's on this machine that descends from the test process (the session's
    cluster: gcs, raylet, agents, workers and replicas)."""
    me = psutil.Process()
    return [p for p in me.children(recursive=True) if _is_ray(p)]


def _is_ray(proc: psutil.Process) -> bool:
    try:
        cmd = " ".join(proc.cmdline())
        return "ray" in proc.name().lower() or "ray/" in cmd or "ray::" in cmd
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def listening_addresses(procs: list[psutil.Process]) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of these processes."""
    out = []
    for proc in procs:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    out.append((conn.laddr.ip, conn.laddr.port, proc.name()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def remote_peers(procs: list[psutil.Process]) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP connection of these processes to a peer."""
    out = []
    for proc in procs:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.raddr:
                    out.append((conn.raddr.ip, conn.raddr.port, proc.name()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def non_loopback(entries: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """The entries whose address is not a loopback address (IPv4-mapped IPv6 counted as IPv4)."""
    bad = []
    for ip, port, name in entries:
        addr = ipaddress.ip_address(ip.split("%")[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if not addr.is_loopback:
            bad.append((ip, port, name))
    return bad


def replica_pids(deployment: str) -> list[int]:
    """Pids of the replicas of `deployment` in the application "mmserve"."""
    return sorted(p.pid for p in ray_processes() if p.name().startswith(f"ray::ServeReplica:mmserve:{deployment}"))


def labels(url: str, images: list[bytes]) -> list[str]:
    """The top label the server gives each image (one request per image)."""
    with httpx.Client(base_url=url, timeout=30) as c:
        return [c.post("/classify", content=_multipart(img), headers=_HEADERS).json()["predictions"][0]["label"]
                for img in images]
