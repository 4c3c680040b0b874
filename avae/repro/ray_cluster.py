"""The executors (`EXECUTORS`: "local" and "ray") as a command checks them, and the Ray cluster that
`--executor ray` runs planned runs on (`RayCluster`). Ray is an optional extra: it is imported only
when asked for."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from avae.errors import ConfigError, check_choice
from avae.repro.execute import Task, execute_run
from avae.repro.progress import Outcomes
from avae.training.config import Runtime
from avae.watchdog import reap_on_death

EXECUTORS = ("local", "ray")


RAY_INSTALL = "pip install 'avae[ray]'"


def import_ray():
    """The `ray` module, or a one-sentence error naming the install command."""
    try:
        import ray  # the optional extra: imported only for --executor ray
    except ImportError:
        raise ConfigError(
            f"--executor ray needs Ray, which is not installed; install it with {RAY_INSTALL}"
        ) from None
    return ray


def check_executor(executor: str, address: str | None, device: str, *, need_ray: bool = True) -> None:
    """Refuse an unknown executor, an --address without Ray, a device Ray cannot place and, when
    `need_ray`, a missing Ray, in one sentence each, before anything is written."""
    check_choice("executor", executor, EXECUTORS)
    if address and executor != "ray":
        raise ConfigError("--address names a Ray cluster; give it with --executor ray")
    if executor == "ray" and device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"--executor ray takes --device cpu or cuda (Ray assigns the GPU), got {device!r}")
    if executor == "ray" and need_ray:
        import_ray()


def ray_cluster(
    executor: str, address: str | None, jobs: int, runtime: Runtime
) -> contextlib.AbstractContextManager[RayCluster | None]:
    """A `with` context holding the Ray cluster for --executor ray, else None (the local executor)."""
    return RayCluster(address, jobs, runtime) if executor == "ray" else contextlib.nullcontext()


class RayCluster:
    """The Ray cluster one command runs its tasks on.

    Without `address` it starts a local cluster with room for `jobs` tasks (jobs x the CPUs of one
    task); with one (host:port, "auto" or a ray:// client address) it connects to that cluster. A
    cluster this command started or connected to is let go on exit; one already initialised by the
    caller (a test, a notebook) is used and left as it is. Every task declares its resources:
    `runtime.threads` CPUs and, on CUDA, 1/jobs of a GPU, so `jobs` runs share each GPU. Ray retries
    a task whose worker or node died; the retry resumes from the run's last checkpoint."""

    def __init__(self, address: str | None, jobs: int, runtime: Runtime):
        self.ray, self.address, self.jobs, self.runtime = import_ray(), address, jobs, runtime
        cuda = runtime.device.startswith("cuda")
        self.resources = {"num_cpus": runtime.threads, "num_gpus": 1 / jobs if cuda else 0}
        self.owned = False
        self.reaper = reap_on_death()

    def __enter__(self) -> RayCluster:
        if not self.ray.is_initialized():
            try:
                if self.address:
                    self.ray.init(address=self.address)
                else:
                    self.reaper.__enter__()  # the local cluster's processes die with this driver
                    self.ray.init(num_cpus=self.jobs * self.runtime.threads, include_dashboard=False)
            except ConnectionError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(
                    f"cannot reach the Ray cluster at {self.address} ({first}); start it with "
                    "`ray start --head` or check --address"
                ) from None
            self.owned = True
        return self

    def __exit__(self, *exc) -> None:
        if self.owned:
            self.ray.shutdown()
            if not self.address:
                self.reaper.__exit__(None, None, None)

    def slots(self) -> int:
        """How many tasks the cluster runs at a time (its CPUs / the CPUs of one task)."""
        cpus = self.ray.cluster_resources().get("CPU", 1)
        return max(1, int(cpus // self.resources["num_cpus"]))

    def remote(self, function: Callable[..., Any]):
        """`function` as a Ray remote function with this command's per-task resources."""
        return self.ray.remote(function).options(**self.resources)

    def run(self, tasks: list[Task], outcomes: Outcomes) -> None:
        """Submit every task at once (Ray queues what does not fit) and record each as it finishes.
        Each task writes its run directory itself, so a run that finished is kept whatever becomes
        of this driver."""
        execute = self.remote(execute_run)
        pending = {execute.remote(task): task for task in tasks}
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in done:
                outcomes.record(pending.pop(ref), lambda ref=ref: self.ray.get(ref))
