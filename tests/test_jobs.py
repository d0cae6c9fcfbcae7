"""runs/jobs.py: the one scheduler of ensemble members and sweep trials, with a stand-in
for the training (real trainings on a pool and a Dask cluster: test_parallel.py and
test_sweeps.py)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from convnet import checkpoint
from convnet.errors import BackendError
from convnet.runs import jobs


def _work(arguments, folder, send_back, resume_from, resume):
    """A job: fails, or kills its worker (once, or every time), as its arguments say."""
    marker = Path(folder) / "died"
    if arguments.get("die") == "always" or (arguments.get("die") == "once" and not marker.exists()):
        marker.write_text("")
        os._exit(1)  # as kill -9 would: the pool breaks
    if arguments.get("fail"):
        raise ValueError(f"{Path(folder).name} failed")
    made = {"made.txt": b"sent back"} if send_back else {}
    return {"resume": resume, "resume_from": resume_from, "files": made, "pid": os.getpid()}


def _jobs(tmp_path, *arguments):
    tmp_path.mkdir(exist_ok=True)
    made = []
    for k, given in enumerate(arguments):
        folder = tmp_path / f"job-{k}"
        folder.mkdir()
        made.append(jobs.Job(folder, given))
    return made


def _run(todo, workers, failures=None):
    done, failed = {}, {}

    def on_failure(job, exc):
        failed[job.folder.name] = exc
        return True

    jobs.run(
        todo, workers, _work, on_done=lambda job, result: done.__setitem__(job.folder.name, result),
        on_failure=on_failure if failures else None,
    )  # fmt: skip
    return done, failed


def test_one_after_another_each_job_from_its_checkpoint_when_it_has_one(tmp_path):
    todo = _jobs(tmp_path, {}, {}, {"fail": True})
    checkpoint.path_in(todo[1].folder).write_bytes(b"a checkpoint")
    done, failed = _run(todo, jobs.Workers(), failures=True)
    assert done["job-0"]["resume"] is False and done["job-1"]["resume"] is True
    assert done["job-1"]["resume_from"] is None  # it is on this disk: read there
    assert list(failed) == ["job-2"] and "job-2 failed" in str(failed["job-2"])
    with pytest.raises(ValueError, match="job-2 failed"):  # no on_failure: the error ends it
        _run(todo, jobs.Workers())


class _Remote(jobs.Workers):
    """A cluster's workers, as the scheduler sees them: another disk (files come back)."""

    def __init__(self) -> None:
        super().__init__()
        self.executor = ThreadPoolExecutor(2)

    @property
    def sends_back(self) -> bool:
        return True


def test_a_remote_worker_gets_the_checkpoint_and_sends_its_files_back(tmp_path):
    todo = _jobs(tmp_path, {}, {})
    checkpoint.path_in(todo[0].folder).write_bytes(b"a checkpoint")
    done, _ = _run(todo, _Remote())
    assert done["job-0"]["resume"] is True and done["job-0"]["resume_from"] == b"a checkpoint"
    assert done["job-1"]["resume_from"] is None
    assert all((job.folder / "made.txt").read_bytes() == b"sent back" for job in todo)


@pytest.mark.skipif(len(jobs.cores()) < 2, reason="needs 2 cores")
def test_a_dead_worker_costs_its_job_a_retry_in_a_fresh_pool_then_a_failure(tmp_path):
    todo = _jobs(tmp_path, {}, {"die": "once"})
    with jobs.Workers(2) as workers:
        done, failed = _run(todo, workers, failures=True)
    assert sorted(done) == ["job-0", "job-1"] and not failed  # job-1 trained again
    doomed = _jobs(tmp_path / "doomed", {"die": "always"})
    with jobs.Workers(2) as workers:
        done, failed = _run(doomed, workers, failures=True)
    assert not done and f"died {jobs.ATTEMPTS} times" in str(failed["job-0"])


def _slow(arguments, folder, send_back, resume_from, resume):
    time.sleep(arguments["seconds"])
    return {"files": {}}


def test_a_cluster_that_lost_every_worker_ends_the_wait_in_bounded_time(tmp_path, monkeypatch):
    """Dask waits for a worker forever; the scheduler asks, and gives up after a while."""
    monkeypatch.setattr(jobs, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(jobs, "NO_WORKERS_SECONDS", 0.3)
    remote = _Remote()
    remote.cluster = "tcp://127.0.0.1:1"
    counts = iter([1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    monkeypatch.setattr(remote, "worker_count", lambda: next(counts, 0))
    start = time.monotonic()
    with pytest.raises(BackendError, match="no worker has been there for"):
        jobs.run(_jobs(tmp_path, {"seconds": 3}), remote, _slow, on_done=lambda job, r: None)
    assert time.monotonic() - start < 2
    assert _Remote().worker_count() == 1  # a pool, not a cluster: never asked
