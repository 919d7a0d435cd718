"""Tests of the cache file format and of the shared state cache, on the real SLURM and with
fake clients that record how often they are called.
"""

import multiprocessing
import os
import shutil
import subprocess
import threading
import time
from datetime import datetime, timedelta

import pytest
from conftest import (
    COMMENTS,
    DATA,
    STATES,
    data,
    fake_command,
    lock_free,
    sacct_state,
    scontrol_state,
    submit_as_nobody,
    submit_held_job,
    wait_for,
)
from path import Path

from stepup.queue.config import Config, ConfigError, QueryMethod
from stepup.queue.slurm.cache import StateCache, format_cache, parse_cache
from stepup.queue.slurm.identity import find_by_token
from stepup.queue.slurm.parsers import parse_squeue
from stepup.queue.slurm.queries import query_jobs, squeue_command

# The cache file format


def test_format_cache():
    text = format_cache(datetime(2026, 11, 25, 10, 1, 2), 0, "1|RUNNING|(null)\n")
    assert text == "v1 datetime=2026-11-25T10:01:02.000000 returncode=+000\n1|RUNNING|(null)\n"


def test_format_cache_has_the_fixed_layout_stepup_queue_102_reads():
    # StepUp Queue 1.0.2 shares sbatch_wait.out and reads fixed columns of the header.
    text = format_cache(datetime(2026, 11, 25, 10, 1, 2, 345678), -9, "")
    header = text[:55]
    assert header.endswith("\n")
    assert header.startswith("v1 datetime=")
    assert datetime.fromisoformat(header[12:38]) == datetime(2026, 11, 25, 10, 1, 2, 345678)
    assert int(header[50:54]) == -9


@pytest.mark.parametrize("returncode", [0, 1, 2, 127, 255, -9, -15, 1000])
def test_cache_round_trip(returncode):
    now = datetime.now()
    output = "8|RUNNING|stepup-queue-fedcba9876543210\n9|PENDING|(null)\n"
    assert parse_cache(format_cache(now, returncode, output)) == (now, returncode, output)


def test_parse_cache_written_by_stepup_queue_102():
    header = "v1 datetime=2025-03-04T10:01:02.345678 returncode=-001\n"
    text = header + data("scontrol_show_job.txt")
    assert parse_cache(text) == (
        datetime(2025, 3, 4, 10, 1, 2, 345678),
        -1,
        data("scontrol_show_job.txt"),
    )


def test_parse_cache_empty_output():
    assert parse_cache("v1 datetime=2026-11-25T10:01:02.000000 returncode=+000\n") == (
        datetime(2026, 11, 25, 10, 1, 2),
        0,
        "",
    )


CORRUPT_CACHES = {
    "empty": "",
    "zero bytes": "\x00" * 200,
    "truncated header": "v1 datetime=2026-11-25T10:0",
    "header without newline": "v1 datetime=2026-11-25T10:01:02.000000 returncode=+000",
    "newer format": "v2 datetime=2026-11-25T10:01:02.000000 returncode=+000\n1|RUNNING|\n",
    "newer v1 header": "v1 datetime=2026-11-25T10:01:02.000000 returncode=+000 host=a\n",
    "short datetime": "v1 datetime=2026-11-25T10:01:02 returncode=+000\n",
    "invalid datetime": "v1 datetime=2026-13-45T10:01:02.000000 returncode=+000\n",
    "no sign": "v1 datetime=2026-11-25T10:01:02.000000 returncode=000\n",
    "output only": "1|RUNNING|(null)\n",
}


@pytest.mark.parametrize("text", CORRUPT_CACHES.values(), ids=CORRUPT_CACHES.keys())
def test_parse_cache_invalid(text):
    assert parse_cache(text) is None


# StateCache


@pytest.fixture
def logged_squeue(fakebin, tmp_path) -> Path:
    """A squeue first on PATH that logs each call and then runs the real one."""
    real = shutil.which("squeue")
    assert real is not None
    calls = Path(tmp_path) / "squeue_calls.txt"
    calls.write_text("")
    fakebin("squeue", f'echo "$*" >> {calls}\nexec {real} "$@"\n')
    return calls


def check_cache_file(path: Path, since: datetime):
    """The cache file holds a valid v1 header of a query run after `since`."""
    text = path.read_text()
    assert text.startswith("v1 datetime=")
    cached = parse_cache(text)
    assert cached is not None
    assert since <= cached[0] <= datetime.now()
    assert cached[1] == 0
    return cached


def test_state_cache_paths_and_commands(tmp_path):
    folder = Path(tmp_path) / "cache"
    config = Config(cache_dir=folder)
    # The default cluster's file is named once SLURM told its name, see locate().
    assert StateCache(config, None).path is None
    assert StateCache(config, "c1").path == folder / "squeue_me.c1.out"
    assert StateCache(config, "c1").command() == squeue_command("c1")
    config = Config(cache_dir=folder, query=QueryMethod.SCONTROL)
    # The file names StepUp Queue 1.0.2 uses for its scontrol cache of another cluster.
    assert StateCache(config, None).path is None
    assert StateCache(config, "c1").path == folder / "sbatch_wait.c1.out"
    assert StateCache(config, None).command() == ["scontrol", "show", "job"]
    assert StateCache(config, "c1").command() == ["scontrol", "show", "job", "--cluster=c1"]


def test_state_cache_queries_once_within_timeout(slurm, tmp_path, logged_squeue):
    config = Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=60)
    cache = StateCache(config, None)
    before = datetime.now()
    first = cache.snapshot()
    second = cache.snapshot()
    assert logged_squeue.read_text() == "--me -t all -h -o %i|%T|%k|%r|%Z\n"
    assert first.ok
    assert second == first
    _, _, output = check_cache_file(cache.path, before)
    assert parse_squeue(output) == first.listing
    # Named after the ClusterName of the local SLURM.
    assert cache.path == Path(tmp_path) / "cache" / "squeue_me.default.localcluster.out"
    assert (cache.path + ".lock").is_file()


def test_state_cache_with_cluster(slurm, tmp_path, logged_squeue):
    config = Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=60)
    cache = StateCache(config, "localcluster")
    before = datetime.now()
    snapshot = cache.snapshot()
    cache.snapshot()
    assert logged_squeue.read_text() == "-M localcluster --me -t all -h -o %i|%T|%k|%r|%Z\n"
    assert snapshot.ok
    check_cache_file(Path(tmp_path) / "cache" / "squeue_me.localcluster.out", before)


def test_state_cache_timeout_zero_always_queries(slurm, tmp_path, logged_squeue):
    cache = StateCache(Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=0), None)
    cache.snapshot()
    cache.snapshot()
    assert logged_squeue.read_text().count("\n") == 2


RECOVERED = CORRUPT_CACHES | {
    "stale": format_cache(datetime.now() - timedelta(hours=1), 0, "1|RUNNING|(null)\n"),
    "from the future": format_cache(datetime.now() + timedelta(hours=1), 0, "1|RUNNING|\n"),
}


@pytest.mark.parametrize("text", RECOVERED.values(), ids=RECOVERED.keys())
def test_state_cache_recovers_from_bad_cache_file(slurm, tmp_path, logged_squeue, text):
    config = Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=3600)
    cache = StateCache(config, None)
    assert cache.locate() is None
    cache.path.parent.makedirs_p()
    cache.path.write_text(text)
    before = datetime.now()
    snapshot = cache.snapshot()
    assert logged_squeue.read_text().count("\n") == 1
    assert snapshot.ok
    assert 1 not in snapshot.states or snapshot.states[1] != "RUNNING"
    check_cache_file(cache.path, before)
    # The repaired cache is used from now on.
    assert cache.snapshot() == snapshot
    assert logged_squeue.read_text().count("\n") == 1


def test_state_cache_sees_a_real_job(slurm, tmp_path):
    token, job_id = submit_held_job(tmp_path)
    try:
        config = Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=60)
        snapshot = StateCache(config, None).snapshot()
        assert snapshot.states[job_id] == "PENDING"
        assert snapshot.comments[job_id] == token
        scontrol = Config(cache_dir=config.cache_dir, query=QueryMethod.SCONTROL)
        snapshot = StateCache(scontrol, None).snapshot()
        assert snapshot.states[job_id] == "PENDING"
        assert snapshot.comments[job_id] == token
        assert find_by_token(token, None, datetime.now(), config.command_timeout) == (True, job_id)
        other = "stepup-queue-" + os.urandom(8).hex()
        assert find_by_token(other, None, datetime.now(), config.command_timeout) == (True, None)
    finally:
        subprocess.run(["scancel", str(job_id)], check=True)
    deadline = time.monotonic() + 30
    while sacct_state(job_id) != "CANCELLED" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sacct_state(job_id) == "CANCELLED"


def test_scontrol_query_lists_own_jobs_only(slurm, tmp_path):
    """With STEPUP_SBATCH_QUERY=scontrol, another user's job is not among the user's jobs.

    `scontrol show job` lists the jobs of all users; they must not count against the user's
    submit limit.
    """
    other = submit_as_nobody(Path(tmp_path) / "nobody", "true")
    _, mine = submit_held_job(tmp_path)
    try:
        config = Config(cache_dir=Path(tmp_path) / "cache", query=QueryMethod.SCONTROL)
        snapshot = StateCache(config, None).snapshot()
        assert snapshot.states[mine] == "PENDING"
        assert other not in snapshot.states
        assert scontrol_state(other) == "PENDING"
    finally:
        subprocess.run(["scancel", str(mine), str(other)], check=True)


def test_garbled_squeue_answer_is_not_sure(slurm, tmp_path, monkeypatch):
    """An squeue answer with a line that cannot be read proves nothing, not even "no job".

    A fake `squeue` runs the real one and garbles its lines (each `|` becomes a space):
    a real squeue does not print garbage on demand.
    """
    token, job_id = submit_held_job(tmp_path)
    bindir = Path(tmp_path) / "bin"
    fake_command(bindir, "squeue", 'out=$(/usr/bin/squeue "$@") || exit\necho "${out//|/ }"\n')
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    try:
        config = Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=60)
        snapshot = StateCache(config, None).snapshot()
        assert not snapshot.ok
        assert "StepUp Queue cannot read" in snapshot.error
        assert find_by_token(token, None, datetime.now(), config.command_timeout) == (False, None)
        assert query_jobs([job_id], None, 20) is None
    finally:
        subprocess.run(["scancel", str(job_id)], check=True)


def test_state_cache_caches_a_failed_query(tmp_path, fakebin):
    calls = Path(tmp_path) / "calls.txt"
    error = data("squeue_no_controller.err")
    fakebin("squeue", f"echo x >> {calls}\ncat {DATA / 'squeue_no_controller.err'} >&2\nexit 1\n")
    cache = StateCache(Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=60), None)
    snapshot = cache.snapshot()
    assert not snapshot.ok
    assert snapshot.returncode == 1
    assert snapshot.error == error
    assert snapshot.states == {}
    # Every waiting step backs off instead of asking the struggling controller again.
    assert cache.snapshot() == snapshot
    assert calls.read_text() == "x\n"
    assert cache.path.read_text().splitlines()[0].endswith(" returncode=+001")


def test_state_cache_scontrol(tmp_path, fakebin):
    calls = Path(tmp_path) / "calls.txt"
    fakebin("scontrol", f'echo "$*" >> {calls}\ncat {DATA / "scontrol_show_job.txt"}\n')
    config = Config(cache_dir=Path(tmp_path) / "cache", query=QueryMethod.SCONTROL)
    snapshot = StateCache(config, "localcluster").snapshot()
    assert snapshot.ok
    assert snapshot.states == STATES
    assert snapshot.comments == COMMENTS
    assert calls.read_text() == "show job --cluster=localcluster\n"
    assert (config.cache_dir / "sbatch_wait.localcluster.out").is_file()


def test_state_cache_scontrol_no_jobs(tmp_path, fakebin):
    fakebin("scontrol", 'echo "No jobs in the system"\n')
    config = Config(cache_dir=Path(tmp_path) / "cache", query=QueryMethod.SCONTROL)
    snapshot = StateCache(config, "localcluster").snapshot()
    assert snapshot.ok
    assert snapshot.states == {}


def test_check_writable(tmp_path):
    StateCache(Config(cache_dir=Path(tmp_path) / "a" / "b"), None).check_writable()
    assert os.listdir(Path(tmp_path) / "a" / "b") == []
    blocker = Path(tmp_path) / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as excinfo:
        StateCache(Config(cache_dir=blocker / "cache"), None).check_writable()
    message = str(excinfo.value)
    assert f"Cannot use the shared scheduler cache in {blocker / 'cache'}" in message
    assert "STEPUP_QUEUE_CACHE_DIR" in message


def test_state_cache_two_hundred_processes_query_once(slurm, tmp_path, logged_squeue):
    """200 processes asking at the same moment share one squeue call."""
    config = Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=60)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(200)
    results = context.Queue()

    def ask():
        barrier.wait()
        results.put(StateCache(config, None).snapshot().ok)

    processes = [context.Process(target=ask) for _ in range(200)]
    for process in processes:
        process.start()
    answers = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join()
    assert answers == [True] * 200
    assert logged_squeue.read_text() == "--me -t all -h -o %i|%T|%k|%r|%Z\n"


# The cache file of the default cluster is named after SLURM's ClusterName


@pytest.fixture
def cluster_named(fakebin, tmp_path, monkeypatch):
    """A scontrol that answers `show config` as the local SLURM, with another ClusterName."""
    calls = Path(tmp_path) / "scontrol_calls.txt"
    fakebin(
        "scontrol",
        f"""\
        echo "$*" >> {calls}
        sed "s/^ClusterName .*/ClusterName             = $CLUSTER_NAME/" \\
            {DATA / "scontrol_show_config.txt"}
        """,
    )

    def name(value: str) -> Path:
        # A cluster module puts another installation first on PATH (here an empty folder, so
        # that the same commands run).
        monkeypatch.setenv("PATH", f"{tmp_path}/{value}/bin:{os.environ['PATH']}")
        monkeypatch.setenv("CLUSTER_NAME", value)
        return calls

    return name


def test_state_cache_named_after_the_cluster(slurm, tmp_path, cluster_named):
    """Two SLURM installations (or cluster modules) sharing one cache folder."""
    folder = Path(tmp_path) / "cache"
    config = Config(cache_dir=folder, cache_timeout=60)
    calls = cluster_named("alpha")
    alpha = StateCache(config, None)
    assert alpha.locate() is None
    assert alpha.path == folder / "squeue_me.default.alpha.out"
    alpha.snapshot()
    alpha.snapshot()
    # Asked once, by the first look.
    assert calls.read_text() == "show config\n"
    cluster_named("beta")
    beta = StateCache(config, None)
    before = datetime.now()
    beta.snapshot()
    assert beta.path == folder / "squeue_me.default.beta.out"
    check_cache_file(beta.path, before)
    assert alpha.path.is_file()
    assert parse_cache(alpha.path.read_text())[0] < before
    scontrol = StateCache(Config(cache_dir=folder, query=QueryMethod.SCONTROL), None)
    assert scontrol.locate() is None
    assert scontrol.path == folder / "sbatch_wait.default.beta.out"
    # With -M, the cluster is named already; each installation is asked once per process.
    assert StateCache(config, "alpha").path == folder / "squeue_me.alpha.out"
    assert calls.read_text() == "show config\n" * 2


def test_state_cache_cluster_name_unknown(tmp_path, fakebin):
    """When SLURM cannot name the default cluster, nothing is cached and it is asked again."""
    calls = Path(tmp_path) / "calls.txt"
    fakebin(
        "scontrol",
        f"echo x >> {calls}\ncat {DATA / 'scontrol_show_config_no_controller.err'} >&2\nexit 1\n",
    )
    cache = StateCache(Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=60), None)
    snapshot = cache.snapshot()
    assert not snapshot.ok
    assert "Unable to contact slurm controller" in snapshot.error
    assert cache.path is None
    cache.snapshot()
    assert calls.read_text() == "x\nx\n"
    assert not (Path(tmp_path) / "cache").exists()


# The wait for the lock of the cache is bounded


@pytest.fixture
def lock_holder():
    """Hold the lock on a file from another process, as a workflow stopped with Ctrl-Z would."""
    holders = []

    def hold(path: Path):
        holders.append(subprocess.Popen(["flock", path, "sleep", "600"]))
        wait_for(lambda: not lock_free(path), 10, "flock to take the lock")

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait()


def test_state_cache_lock_held_for_ever(tmp_path, fakebin, lock_holder, capsys):
    calls = Path(tmp_path) / "calls.txt"
    fakebin("squeue", f"echo x >> {calls}\ncat {DATA / 'squeue_me.txt'}\n")
    config = Config(cache_dir=Path(tmp_path) / "cache", command_timeout=1, debug=True)
    cache = StateCache(config, "c1")
    cache.path.parent.makedirs_p()
    lock_holder(cache.path + ".lock")
    answers = []
    thread = threading.Thread(target=lambda: answers.append(cache.snapshot()), daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(20)
    assert not thread.is_alive()
    assert 1 <= time.monotonic() - start < 5
    assert answers[0].ok
    assert answers[0].states == STATES
    assert calls.read_text() == "x\n"
    check_cache_file(cache.path, datetime.now() - timedelta(seconds=10))
    assert f"{cache.path}.lock" in capsys.readouterr().out


def test_state_cache_fresh_answer_needs_no_lock(tmp_path, fakebin, lock_holder):
    calls = Path(tmp_path) / "calls.txt"
    fakebin("squeue", f"echo x >> {calls}\ncat {DATA / 'squeue_me.txt'}\n")
    config = Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=60, command_timeout=30)
    cache = StateCache(config, "c1")
    first = cache.snapshot()
    lock_holder(cache.path + ".lock")
    start = time.monotonic()
    assert cache.snapshot() == first
    assert time.monotonic() - start < 1
    assert calls.read_text() == "x\n"
