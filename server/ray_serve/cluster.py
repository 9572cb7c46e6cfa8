"""Starting a local Ray, or joining a cluster, the way mmserve needs it.

A local Ray (no address) is a private one: every process it starts listens on 127.0.0.1 only, no
dashboard, no usage statistics, and `stop()` ends all of it. Ray picks the node's address for its
servers; on Linux it normally takes the machine's outward address, so it is told to use loopback
(`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` is Ray's switch for "a single machine, bind to localhost").
Joining a cluster (`address`) leaves the cluster's own network settings alone.
"""

from __future__ import annotations

import os
from typing import Any, Optional

__all__ = ["LOCAL_RAY_ENV", "start_or_join", "stop", "runtime_env"]

# Set before `import ray` and inherited by every process Ray starts.
LOCAL_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # node IP = loopback: gcs, raylet, workers bind 127.0.0.1
}


def runtime_env() -> dict[str, Any]:
    """The job's runtime environment: replicas import the same `server` package as this process
    (PYTHONPATH, for source checkouts), and log at our level."""
    env_vars = {k: v for k, v in os.environ.items() if k == "PYTHONPATH" or k.startswith("MMSERVE_")}
    env_vars.pop("MMSERVE_API_KEY", None)  # secrets stay out of Ray's job records; nodes set it themselves
    return {"env_vars": env_vars} if env_vars else {}


def start_or_join(address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
    """`ray.init` for a private local Ray (address None) or an existing cluster ("host:port", "auto")."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    if address is None:
        os.environ.update(LOCAL_RAY_ENV)
    import ray

    if address is None:
        # Ray reads the variable when it is first imported; a caller that imported Ray earlier
        # would otherwise get a node on the machine's outward address.
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False

    if address is None:
        ray.init(address="local", include_dashboard=False, num_cpus=num_cpus, runtime_env=runtime_env(),
                 log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, runtime_env=runtime_env(), log_to_driver=False, configure_logging=False)


def stop() -> None:
    """Leave Ray; for a local Ray this stops every process it started."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
