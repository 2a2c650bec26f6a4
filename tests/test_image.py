"""The container image runs the migration: `run` and `cutover --dry-run` from inside it, exact from outside.

Opt-in (`--runslow`): it builds the image with scripts/build-image.sh (about 25 s with the base made once; a
first build here also makes the Debian base with mmdebstrap, about 2 min), unless an image built from this
source is there already. It needs buildah and root (`buildah run --isolation chroot` shares the host's
network, so the image reaches the test bed's servers and moto on 127.0.0.1); without them it skips.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import seed_data
from aws_helpers import PASSWORDS, own_client
from conftest import SOURCE_PASSWORD, TARGET_PASSWORD
from migrate import __version__
from migrate.rundir import RunDir
from migrate.sync.protocol import SyncLedger
from snapshot import assert_same, snapshot

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
IMAGE = f"localhost/redis-migrate:{__version__}"
USER_ID = 10001  # the Dockerfile's user
ENV = "test"
PARAMETERS = {f"/storefront/{ENV}/redis/endpoint": "old-redis.storefront.internal",
              f"/storefront/{ENV}/redis/port": "6379"}


def source_digest() -> str:
    """The label scripts/build-image.sh puts on the image: sha256sum of the tracked files, as the shell makes it."""
    files = subprocess.run(["git", "ls-files", "-z", "migrate", "pyproject.toml", "Dockerfile"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    lines = "".join(f"{hashlib.sha256((ROOT / f.decode()).read_bytes()).hexdigest()}  {f.decode()}\n"
                    for f in sorted(f for f in files if f))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def image_digest_label() -> str | None:
    found = subprocess.run(["buildah", "inspect", "--type", "image", "--format",
                            '{{index .OCIv1.Config.Labels "redis-migrate.source-digest"}}',
                            IMAGE], capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else None


@pytest.fixture(scope="module")
def image() -> str:
    """The image built from this checkout: reused when its label says so, else built by scripts/build-image.sh."""
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed (scripts/build-image.sh installs it)")
    if os.geteuid() != 0:
        pytest.skip("buildah run --isolation chroot needs root here")
    if image_digest_label() != source_digest():
        built = subprocess.run(["bash", "scripts/build-image.sh"], cwd=ROOT, capture_output=True, text=True,
                               timeout=1200, env={**os.environ, "BUILDER": "buildah"})
        assert built.returncode == 0, built.stderr[-3000:]
        assert image_digest_label() == source_digest()
    return IMAGE


def new_container(image: str) -> str:
    return subprocess.run(["buildah", "from", "--pull-never", image], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def container(image):
    name = new_container(image)
    yield name
    subprocess.run(["buildah", "rm", name], capture_output=True)


@pytest.fixture
def second_container(image):
    """A second task from the same image."""
    name = new_container(image)
    yield name
    subprocess.run(["buildah", "rm", name], capture_output=True)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """The host side of the image's /data volume, owned by the image's user as an EFS access point would make it."""
    path = tmp_path / "data"
    path.mkdir(mode=0o700)
    os.chown(path, USER_ID, USER_ID)
    return path


def buildah_run(container: str, *args: str, env: dict[str, str], mounts: dict[Path, str]) -> list[str]:
    """The command line running `args` inside the image: host network, the image's user, env and mounts given."""
    command = ["buildah", "run", "--isolation", "chroot"]
    for name, value in env.items():
        command += ["--env", f"{name}={value}"]
    for host, guest in mounts.items():
        command += ["--volume", f"{host}:{guest}"]
    return [*command, container, "--", *args]


def inside(container: str, *args: str, env: dict[str, str], mounts: dict[Path, str], code: int = 0,
           own_pid_namespace: bool = False) -> str:
    """Run a command inside the image; return its output, checked for secrets. `own_pid_namespace`: as a
    second ECS task sees the first, whose pids are not its own."""
    command = ["buildah", "run", "--isolation", "chroot"]
    for name, value in env.items():
        command += ["--env", f"{name}={value}"]
    for host, guest in mounts.items():
        command += ["--volume", f"{host}:{guest}"]
    prefix = ["unshare", "--pid", "--fork", "--mount-proc"] if own_pid_namespace else []
    result = subprocess.run([*prefix, *command, container, "--", *args], capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == code, f"exit {result.returncode}:\n{output[-3000:]}"
    assert not any(p in output for p in PASSWORDS), output
    assert "Traceback" not in output, output
    return output


def test_a_migration_run_inside_the_image_is_exact(container, data_dir, standalone_source, serverless_target,
                                                   certs, aws):
    seed_data.seed(standalone_source.client(), 3000, seed=18, short_ttl_keys=0)
    ssm = own_client("ssm")
    for name, value in PARAMETERS.items():
        ssm.put_parameter(Name=name, Value=value, Type="String")
    mounts = {certs.ca: "/certs/ca.pem:ro", data_dir: "/data"}
    env = {"REDIS_MIGRATE_SOURCE_PASSWORD": SOURCE_PASSWORD, "REDIS_MIGRATE_TARGET_PASSWORD": TARGET_PASSWORD,
           **aws.env()}
    source = f"redis://127.0.0.1:{standalone_source.port}/0"
    target = f"rediss://127.0.0.1:{serverless_target.first.port}/0?ssl_ca_certs=/certs/ca.pem"

    assert inside(container, "id", "-u", env={}, mounts={}).strip() == str(USER_ID)
    assert inside(container, "redis-migrate", "--version", env={}, mounts={}).startswith(
        f"redis-migrate, version {__version__}")
    inside(container, "redis-migrate", "run", "--source", source, "--target", target, "--run-dir", "/data/run",
           env=env, mounts=mounts)
    assert_same(snapshot(standalone_source), snapshot(serverless_target))

    shown = inside(container, "redis-migrate", "cutover", "--env", ENV, "--target", target, "--run-dir",
                   "/data/run", "--dry-run", env=env, mounts=mounts)
    assert "DRY RUN" in shown and "would go ahead" in shown, shown
    assert {name: ssm.get_parameter(Name=name)["Parameter"]["Value"] for name in PARAMETERS} == PARAMETERS
    assert all(ssm.get_parameter(Name=name)["Parameter"]["Version"] == 1 for name in PARAMETERS)

    files = [data_dir / "run", *(data_dir / "run").rglob("*")]
    assert len(files) > 3
    assert {path.stat().st_uid for path in files} == {USER_ID}, "the run dir was written by another user than 10001"
    assert not any(path.stat().st_mode & 0o077 for path in files), "the run dir is readable by other users"


def test_cutover_from_a_second_task_finds_the_sync_running_in_the_first(container, second_container, data_dir,
                                                                        standalone_source, serverless_target,
                                                                        certs, aws):
    """The task route's live cutover: sync in one task, `cutover --dry-run` from another on the same run dir
    (its own pid namespace, as on ECS: the sync's pid means nothing there; its heartbeat does)."""
    seed_data.seed(standalone_source.client(), 500, seed=19, big_keys=False, short_ttl_keys=0)
    ssm = own_client("ssm")
    for name, value in PARAMETERS.items():
        ssm.put_parameter(Name=name, Value=value, Type="String")
    mounts = {certs.ca: "/certs/ca.pem:ro", data_dir: "/data"}
    env = {"REDIS_MIGRATE_SOURCE_PASSWORD": SOURCE_PASSWORD, "REDIS_MIGRATE_TARGET_PASSWORD": TARGET_PASSWORD,
           **aws.env()}
    source = f"redis://127.0.0.1:{standalone_source.port}/0"
    target = f"rediss://127.0.0.1:{serverless_target.first.port}/0?ssl_ca_certs=/certs/ca.pem"
    sync = subprocess.Popen(buildah_run(container, "redis-migrate", "sync", "--source", source, "--target", target,
                                        "--run-dir", "/data/run", "--enable-notifications", env=env, mounts=mounts),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ledger = wait_following(data_dir / "run", sync)
        standalone_source.client().set("written:while:following", "1")
        shown = inside(second_container, "redis-migrate", "cutover", "--env", ENV, "--target", target, "--source",
                       source, "--run-dir", "/data/run", "--dry-run", env=env, mounts=mounts, own_pid_namespace=True)
        assert "sync following" in shown and "would go ahead" in shown, shown
        assert {name: ssm.get_parameter(Name=name)["Parameter"]["Value"] for name in PARAMETERS} == PARAMETERS
        os.kill(ledger.pid, signal.SIGTERM)  # chroot isolation shares the host's pids: what `ecs stop-task` sends
        output = sync.communicate(timeout=120)[0]
        assert sync.returncode == 0, output[-3000:]
        assert not any(p in output for p in PASSWORDS)
    finally:
        if sync.poll() is None:
            sync.kill()
            sync.wait()
    assert_same(snapshot(standalone_source), snapshot(serverless_target))


def wait_following(run_dir: Path, process: subprocess.Popen, timeout: float = 120) -> SyncLedger:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()[-3000:]
        if (run_dir / "sync.json").exists():
            ledger = SyncLedger.load(RunDir(run_dir))
            if ledger.found and ledger.state == "following" and ledger.running():
                return ledger
        time.sleep(0.2)
    raise AssertionError("sync inside the image did not reach following")
