"""`serprep build --backend dask` on a real `distributed.LocalCluster` (2 worker processes).

The store must be the one a local build writes (checksum table, corpus fingerprint and every
feature value), plain and augmented; the errors (no scheduler, unreachable scheduler, a worker
that cannot read the corpus root, --strict, --task-timeout) are one line and leave nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

distributed = pytest.importorskip("distributed")

from serprep.cli import main  # noqa: E402
from serprep.dask_backend import check_workers, content_versions, worker_report  # noqa: E402
from serprep.errors import SerprepError  # noqa: E402
from store_fixtures import build  # noqa: E402

# Small blocks (~6 utterances each): a dozen blocks in flight over two workers, so the order
# in which they come back differs from the plan's and the writer's ordering is exercised.
BLOCK_SECONDS = 15.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real two-process cluster. Its workers start in an empty folder of their own (their
    working folder, as on a cluster node: see test_worker_that_cannot_read_the_root...)."""
    workers_cwd = tmp_path_factory.mktemp("dask_workers_cwd")
    here = os.getcwd()
    os.chdir(workers_cwd)
    try:
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=":0")  # any free port: no clash
    finally:
        os.chdir(here)
    with cluster, distributed.Client(cluster, set_as_default=False) as client:
        yield cluster, client


@pytest.fixture(scope="module")
def local_plain(iemocap_root, tmp_path_factory):
    root, _ = iemocap_root
    out = tmp_path_factory.mktemp("local") / "plain.h5"
    build("iemocap", root, out, jobs=2, backend="threads", block_seconds=BLOCK_SECONDS)
    return out


def _assert_same_store(a: Path, b: Path) -> None:
    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        assert json.loads(x.attrs["checksums"]) == json.loads(y.attrs["checksums"])
        assert x.attrs["corpus_fingerprint"] == y.attrs["corpus_fingerprint"]
        fx, fy = x["features"][...], y["features"][...]
        assert fx.shape == fy.shape and fx.dtype == fy.dtype
        assert fx.tobytes() == fy.tobytes()  # byte for byte, not approximately


def _one_line_error(result, exit_code: int) -> str:
    assert result.exit_code == exit_code, result.output
    lines = [line for line in result.output.strip().splitlines() if line]
    # The build's first log line ("iemocap: 80 utterances ...") may precede the error.
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    return errors[0]


def _wait_until_idle(client, seconds: float = 15.0) -> int:
    """Tasks the scheduler still holds once our build's client is gone (0 = nothing left)."""
    deadline = time.monotonic() + seconds
    while True:
        n = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
        if n == 0 or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


def test_plain_build_on_the_cluster_is_the_local_store(cluster, iemocap_root, local_plain, tmp_path):
    c, client = cluster
    root, _ = iemocap_root
    out = tmp_path / "dask.h5"

    def executed() -> dict[str, int]:
        return client.run(lambda dask_worker: dask_worker.state.executed_count)

    before = executed()
    summary = build("iemocap", root, out, backend="dask", scheduler=c.scheduler_address,
                    block_seconds=BLOCK_SECONDS)
    assert summary.failures  # the fixture's corrupt files failed on the workers, recorded as locally
    _assert_same_store(local_plain, out)
    # Both workers extracted blocks: the comparison above is not one worker's sequential run.
    after = executed()
    assert len(after) == 2 and all(after[w] > before[w] for w in after), (before, after)


def test_augmented_balanced_build_on_the_cluster_is_the_local_store(cluster, iemocap_root, tmp_path):
    c, _ = cluster
    root, _ = iemocap_root
    options = dict(augment="default", balance=True, block_seconds=BLOCK_SECONDS)
    local, remote = tmp_path / "local.h5", tmp_path / "dask.h5"
    build("iemocap", root, local, jobs=2, backend="processes", **options)  # what `auto` picks locally
    summary = build("iemocap", root, remote, backend="dask", scheduler=c.scheduler_address, **options)
    assert summary.n_items > summary.n_extracted  # augmented copies were made
    _assert_same_store(local, remote)
    with h5py.File(remote, "r") as f:  # the copies' recorded chains, too (part of the checksums)
        assert json.loads(f.attrs["build"])["augment"]["preset"] == "default"


def test_cli_takes_the_scheduler_from_DASK_SCHEDULER_ADDRESS(cluster, iemocap_root, local_plain, tmp_path,
                                                              monkeypatch):
    c, _ = cluster
    root, _ = iemocap_root
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", c.scheduler_address)
    monkeypatch.chdir(root.parent)  # a relative --root: sent to the workers as an absolute path
    out = tmp_path / "env.h5"
    # --jobs is ignored with dask (the cluster's threads are the jobs); --block-seconds has no flag.
    r = CliRunner().invoke(main, ["build", "iemocap", "--root", root.name, "--out", str(out),
                                  "--backend", "dask", "--jobs", "1"])
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.output
    # The log names where the work runs: the cluster and its 2 worker threads, not "--jobs 1".
    assert f"on the dask cluster at {c.scheduler_address} (2 worker threads)" in r.output, r.output
    assert "with 1 job(s)" not in r.output
    local = tmp_path / "local.h5"
    build("iemocap", root, local, jobs=1)
    _assert_same_store(local, out)


def test_backend_dask_needs_a_scheduler(iemocap_root, tmp_path, monkeypatch):
    root, _ = iemocap_root
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    args = ["build", "iemocap", "--root", str(root), "--out", str(tmp_path / "x.h5")]
    line = _one_line_error(CliRunner().invoke(main, args + ["--backend", "dask"]), 2)
    assert line.startswith("error: --backend dask needs --scheduler tcp://HOST:8786 or DASK_SCHEDULER_ADDRESS")
    line = _one_line_error(CliRunner().invoke(main, args + ["--scheduler", "tcp://127.0.0.1:8786"]), 2)
    assert "--scheduler is for --backend dask" in line
    with pytest.raises(SerprepError, match="--backend dask needs --scheduler"):  # the library, too
        build("iemocap", root, tmp_path / "x.h5", backend="dask")
    assert list(tmp_path.iterdir()) == []


def test_unreachable_scheduler_is_one_line_naming_it(iemocap_root, tmp_path):
    import dask.config

    root, _ = iemocap_root
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    t0 = time.monotonic()
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        r = CliRunner().invoke(main, ["build", "iemocap", "--root", str(root), "--out", str(tmp_path / "x.h5"),
                                      "--backend", "dask", "--scheduler", address])
    line = _one_line_error(r, 1)
    assert line.startswith(f"error: cannot reach the dask scheduler at {address} (")
    assert time.monotonic() - t0 < 15
    assert list(tmp_path.iterdir()) == []


def test_worker_that_cannot_read_the_root_is_named_with_the_path(cluster, iemocap_root, tmp_path, monkeypatch):
    """A corpus path that exists for the build process but not for the workers.

    A LocalCluster's workers share this machine's filesystem, so the test needs a path whose
    meaning depends on the process: ``/proc/self/cwd/corpus`` is ``corpus`` in the working
    folder of whichever process opens it. The build runs in a folder holding ``corpus`` (a
    link to the fixture corpus); the workers run in an empty folder of their own (the
    cluster fixture). Nothing is simulated: the check runs on both real workers, which
    really cannot open that path.
    """
    if not Path("/proc/self/cwd").is_dir():
        pytest.skip("needs Linux /proc")
    c, client = cluster
    root, _ = iemocap_root
    (tmp_path / "corpus").symlink_to(root, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    path = "/proc/self/cwd/corpus"
    assert Path(path).is_dir() and (Path(path) / "Session1").is_dir()  # readable here
    out = tmp_path / "x.h5"
    r = CliRunner().invoke(main, ["build", "iemocap", "--root", path, "--out", str(out), "--backend", "dask",
                                  "--scheduler", c.scheduler_address])
    line = _one_line_error(r, 1)
    workers = sorted(client.scheduler_info()["workers"])
    assert line == (f"error: dask worker {workers[0]} cannot read the corpus root {path} (No such file or "
                    "directory): workers must see the corpus at the same path (1 more worker(s) cannot either)")
    assert sorted(os.listdir(tmp_path)) == ["corpus"]  # no store, no temp file, no lock left


def test_workers_with_other_package_versions_are_refused(cluster, iemocap_root):
    """The version check, on the reports of the real workers: they match this process; against
    a process that had another numpy (this process's versions altered) they are refused."""
    _, client = cluster
    root, _ = iemocap_root
    reports = client.run(worker_report, str(root))
    here = content_versions()
    check_workers(reports, str(root), here)  # same environment: accepted
    other = {**here, "numpy": "1.0.0"}
    with pytest.raises(SerprepError, match=rf"dask worker tcp://\S+ runs numpy {here['numpy']} \(here 1.0.0\)"):
        check_workers(reports, str(root), other)


def test_strict_abort_cancels_the_queued_blocks(cluster, iemocap_root, tmp_path):
    c, client = cluster
    root, _ = iemocap_root
    with pytest.raises(SerprepError, match=r"Session\d/sentences/wav/.*\.wav: .*--strict: aborting"):
        build("iemocap", root, tmp_path / "s.h5", backend="dask", scheduler=c.scheduler_address, strict=True,
              block_seconds=2.0)
    assert list(tmp_path.iterdir()) == []
    assert _wait_until_idle(client) == 0  # nothing of the aborted build left queued or held


def test_task_timeout_applies_to_dask_blocks(cluster, iemocap_root, tmp_path):
    c, client = cluster
    root, _ = iemocap_root
    with pytest.raises(SerprepError, match="took longer than --task-timeout"):
        build("iemocap", root, tmp_path / "t.h5", backend="dask", scheduler=c.scheduler_address,
              task_timeout=1e-4)
    assert list(tmp_path.iterdir()) == []
    assert _wait_until_idle(client) == 0


def test_serprep_help_does_not_import_dask():
    code = "import sys, serprep.cli; assert not {'dask', 'distributed'} & set(sys.modules), 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_build_with_functionals_on_the_cluster_is_the_local_store(cluster, iemocap_root, tmp_path):
    c, _ = cluster
    root, _ = iemocap_root
    local, remote = tmp_path / "local.h5", tmp_path / "dask.h5"
    build("iemocap", root, local, jobs=1, block_seconds=BLOCK_SECONDS, functionals="egemaps")
    build("iemocap", root, remote, backend="dask", scheduler=c.scheduler_address, block_seconds=BLOCK_SECONDS,
          functionals="egemaps")
    _assert_same_store(local, remote)
    with h5py.File(remote, "r") as f:
        assert f["functionals/egemaps/values"].shape == (len(f["functionals/egemaps/utt"]), 88)
