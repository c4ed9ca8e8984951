"""A sweep runner on a Ray cluster (optional extra: pip install 'shardtwin[ray]').

Rules: same contract as the local runners (experiments.sweep.Runner): one outcome per
task, in task order, so a Ray sweep stores and prints exactly what the local pool does
for the same seeds. Tasks go out in chunks (a Ray task costs ~ms; a scenario ~tens of ms).
`address=None` starts a local Ray on this machine and shuts it down on close; an address
joins an existing cluster ("auto" for the one this machine belongs to). run_each is for long
tasks (a subprocess each, `shardtwin distributed`): one Ray task per item, a bounded number
out at a time, results as they finish; tasks still out when it is left are cancelled.
"""

from __future__ import annotations

from itertools import islice
from typing import Any, Callable, Iterator, Sequence

from shardtwin.errors import InputError, ShardtwinError

CANCEL_GRACE_S = 5.0     # how long cancelled tasks get to stop what they started before Ray goes


def _run_chunk(fn: Callable[[Any], Any], chunk: Sequence[Any]) -> list[Any]:
    return [fn(t) for t in chunk]


class RayRunner:
    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise InputError("--ray needs the ray package: pip install 'shardtwin[ray]'") from None
        self._ray = ray
        self._owns = not ray.is_initialized()
        try:
            if self._owns:
                kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                          "configure_logging": False}
                if address:
                    ray.init(address=address, **kwargs)
                else:
                    ray.init(num_cpus=workers or None, **kwargs)
            self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        except Exception as exc:   # Ray's errors are many; the user needs one line
            self.close()           # a half-started local Ray leaves no process behind
            raise InputError(f"cannot start or join Ray at {address or 'a local cluster'}: "
                             f"{' '.join(str(exc).split())[:200]}") from None
        except BaseException:      # Ctrl-C while Ray starts: the same
            self.close()
            raise
        self._remote = ray.remote(_run_chunk)

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[Any]:
        size = max(1, min(32, len(tasks) // (self.workers * 4) or 1))
        fn_ref = self._ray.put(fn)
        refs = [self._remote.remote(fn_ref, list(tasks[i:i + size])) for i in range(0, len(tasks), size)]
        for ref in refs:
            yield from self._ray.get(ref)

    def run_each(self, fn: Callable[[Any], Any], tasks: Sequence[Any], limit: int | None = None
                 ) -> Iterator[tuple[int, Any]]:
        """(index, fn(task)) in the order the tasks finish, at most `limit` (default: the cluster's
        CPUs) out at a time. Leaving early (an error, Ctrl-C, close of the generator) cancels the
        ones still out: a running one gets KeyboardInterrupt, and CANCEL_GRACE_S to act on it."""
        ray = self._ray
        fn_ref = ray.put(fn)
        todo = enumerate(tasks)
        out: dict[Any, int] = {}

        def submit(k: int) -> None:
            for i, t in islice(todo, k):
                out[self._remote.remote(fn_ref, [t])] = i
        try:
            submit(max(1, limit or self.workers))
            while out:
                (ref,), _ = ray.wait(list(out), num_returns=1)
                i = out.pop(ref)
                (res,) = ray.get(ref)
                submit(1)
                yield i, res
        except ray.exceptions.RayError as exc:
            raise ShardtwinError(f"Ray task failed: {' '.join(str(exc).split())[:300]}") from None
        finally:
            for ref in out:
                ray.cancel(ref)
            if out:
                ray.wait(list(out), num_returns=len(out), timeout=CANCEL_GRACE_S)

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self) -> "RayRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
