"""What verify and run print about keys, on real servers: long names stay short and quick, names never
carry terminal escapes, keys skipped on purpose are not differences, and the verify bar has a total."""

from __future__ import annotations

import base64
import json
import re
from contextlib import nullcontext

import pytest

from aws_helpers import aws_calls, own_client  # noqa: F401
from aws_helpers import invoke as aws_invoke
from migrate.commands import open_source, open_target
from migrate.datapath.reader import DumpOptions
from migrate.keynames import readable
from migrate.net.endpoints import Endpoint
from migrate.pipeline import verify_stage
from migrate.rundir import RunDir
from reliability import spawn
from snapshot import snapshot

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # every control character but \t and \n
ESCAPE_KEY = b"\x1b]0;pwned\x07title\r\x1b[2J"


def report_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- item 2: a long key name through run and verify -------------------------------------------------

@pytest.mark.parametrize("size", [60 << 10, 1 << 20])
def test_a_long_key_name_is_shortened_in_human_output_and_whole_in_the_report(
        standalone_source, serverless_target, run_dir, tmp_path, size):
    long_key = b"k" * size
    client = standalone_source.client()
    client.set(long_key, "v")
    client.set("fine", "v")
    # a name over 4 KiB is skipped, and without --skip-unsupported the run refuses (exit 2) after its
    # summary, whose verify section lists the key. 60 s is the failing condition, not a speed goal.
    ran = spawn("run", "--source", standalone_source.url(), "--target", serverless_target.url(),
                "--run-dir", run_dir, timeout=60)
    assert ran.exit_code == 2, ran
    shown = readable(long_key)
    assert shown in ran.stdout and f"{size} bytes" in shown
    assert long_key.decode()[:1000] not in ran.output and len(ran.output) < 20_000, ran
    assert "verify: EQUAL" in ran.stdout and "[{" not in ran.stdout  # like verify's output, not a list of dicts
    assert f"skipped  {shown}  key name over 4 KiB" in ran.stdout
    skipped = report_lines(run_dir / "verify-report.jsonl")
    assert [(base64.b64decode(line["key"]), line["kind"]) for line in skipped] == [(long_key, "skipped")]
    assert skipped[0]["key_text"] == long_key.decode()

    report = tmp_path / "report.jsonl"  # without the run dir, nothing says it was skipped: it is missing
    verified = spawn("verify", "--source", standalone_source.url(), "--target", serverless_target.url(),
                     "--report", report, timeout=60)
    assert verified.exit_code == 1, verified
    assert f"missing  {shown}  source: string" in verified.stdout and long_key.decode()[:1000] not in verified.output
    assert [base64.b64decode(line["key"]) for line in report_lines(report)] == [long_key]


# --- item 9: escapes ----------------------------------------------------------------------------------

def test_a_key_holding_terminal_escapes_is_printed_escaped_everywhere(standalone_source, serverless_target, run_dir):
    client = standalone_source.client()
    client.set(ESCAPE_KEY, "x" * 100_000)               # the largest key, so plan names it
    client.set(ESCAPE_KEY + b"y" * 5000, "v")           # a name over 4 KiB: skipped, named in the summary
    client.set("fine", "v")
    urls = ("--source", standalone_source.url(), "--target", serverless_target.url())
    outputs = {"plan": spawn("plan", *urls, timeout=60)}
    outputs["run"] = spawn("run", *urls, "--run-dir", run_dir, timeout=120)
    assert outputs["run"].exit_code == 2, outputs["run"]                  # the long one was skipped
    serverless_target.first.client().delete(ESCAPE_KEY)
    outputs["verify"] = spawn("verify", *urls, "--run-dir", run_dir, timeout=60)
    assert outputs["verify"].exit_code == 1, outputs["verify"]
    outputs["status"] = spawn("status", "--run-dir", run_dir, timeout=60)
    escaped = r"\x1b]0;pwned\x07title\r\x1b[2J"
    for name, outcome in outputs.items():
        assert not CONTROL.search(outcome.output), (name, outcome)
        assert escaped in outcome.output, (name, outcome)


# --- item 6: keys skipped on purpose -------------------------------------------------------------------

@pytest.fixture
def ssm(aws, aws_calls):
    client = own_client("ssm")
    client.put_parameter(Name="/storefront/test/redis/endpoint", Value="old-redis.internal", Type="String")
    client.put_parameter(Name="/storefront/test/redis/port", Value="6379", Type="String")
    return client


def test_keys_skipped_on_purpose_pass_verify_and_the_cutover_gate(standalone_source, serverless_target, run_dir, ssm):
    long_key = b"long:" + b"x" * 5000
    client = standalone_source.client()
    client.set(long_key, "v")
    client.mset({f"k:{n}": n for n in range(300)})
    urls = ("--source", standalone_source.url(), "--target", serverless_target.url())
    ran = spawn("run", *urls, "--run-dir", run_dir, "--skip-unsupported", timeout=120)
    assert ran.exit_code == 0, ran
    assert "verify: EQUAL" in ran.stdout and "not differences: 1 key that the copy skipped" in ran.stdout
    assert readable(long_key) in ran.stdout
    assert long_key not in snapshot(serverless_target)

    as_json = spawn("verify", *urls, "--run-dir", run_dir, "--json", timeout=60)
    assert as_json.exit_code == 0, as_json
    result = json.loads(as_json.stdout)
    assert result["equal"] and result["differences"] == 0 and result["first_differences"] == []
    assert result["skipped"]["keys"] == 1
    assert [base64.b64decode(item["key"]) for item in result["skipped"]["first"]] == [long_key]
    assert list(result["skipped"]["reasons"]) == ["key name over 4 KiB (ElastiCache Serverless limit)"]
    text = spawn("verify", *urls, "--run-dir", run_dir, timeout=60)
    assert text.exit_code == 0 and text.stdout.startswith("EQUAL"), text
    assert f"skipped  {readable(long_key)}  key name over 4 KiB" in text.stdout

    host, port = "127.0.0.1", str(serverless_target.first.port)
    switched = aws_invoke("cutover", "--env", "test", "--target", serverless_target.url(), "--run-dir", run_dir)
    assert "skipped on purpose" in switched.output
    assert ssm.get_parameter(Name="/storefront/test/redis/endpoint")["Parameter"]["Value"] == host
    assert ssm.get_parameter(Name="/storefront/test/redis/port")["Parameter"]["Value"] == port

    # a missing key that the run dir does not name as skipped stays a difference
    serverless_target.first.client().delete("k:7")
    again = spawn("verify", *urls, "--run-dir", run_dir, "--json", timeout=60)
    assert again.exit_code == 1, again
    assert json.loads(again.stdout)["kinds"] == {"missing": 1}


def test_without_skip_unsupported_the_run_refuses_and_the_gate_does_too(standalone_source, serverless_target,
                                                                         run_dir, ssm):
    client = standalone_source.client()
    client.set(b"long:" + b"x" * 5000, "v")
    client.set("fine", "v")
    ran = spawn("run", "--source", standalone_source.url(), "--target", serverless_target.url(),
                "--run-dir", run_dir, timeout=120)
    assert ran.exit_code == 2, ran
    assert "1 key could not be migrated and was skipped" in ran.stderr
    refused = aws_invoke("cutover", "--env", "test", "--target", serverless_target.url(), "--run-dir", run_dir, code=1)
    assert "did not accept" in refused.output and "--skip-unsupported" in refused.output
    assert ssm.get_parameter(Name="/storefront/test/redis/endpoint")["Parameter"]["Value"] == "old-redis.internal"


def test_only_keys_the_ledger_names_are_excused(standalone_source, serverless_target, run_dir):
    """The dump ledger names the first 1,000 skipped keys; the 1,001st, found missing, is a difference."""
    client = standalone_source.client()
    client.mset({b"long:%04d:" % n + b"x" * 4100: "v" for n in range(1001)})
    client.set("fine", "v")
    ran = spawn("run", "--source", standalone_source.url(), "--target", serverless_target.url(),
                "--run-dir", run_dir, "--skip-unsupported", "--json", timeout=300)
    assert ran.exit_code == 1, ran
    result = json.loads(ran.stdout)["verify"]
    assert result["differences"] == 1 and result["kinds"] == {"missing": 1}
    assert result["skipped"]["keys"] == 1000
    named = {item["key"] for item in RunDir(run_dir).read("dump")["skipped_keys"]}
    assert len(named) == 1000 and readable(base64.b64decode(result["first_differences"][0]["key"])) not in named


# --- item 9: the verify bar ------------------------------------------------------------------------------

class Bars:
    """A progress factory (the CLI's is tqdm) that records each bar's total and the updates it got."""

    def __init__(self) -> None:
        self.bars: dict[str, dict] = {}

    def __call__(self, description, total, **_kwargs):
        bar = self.bars[description] = {"total": total, "done": 0}
        return nullcontext(lambda n: bar.__setitem__("done", bar["done"] + n))


@pytest.mark.parametrize("filtered", [False, True])
def test_the_verify_bar_has_a_total_that_its_updates_reach(standalone_source, serverless_target, run_dir, filtered):
    client = standalone_source.client()
    client.mset({f"k:{n}": n for n in range(3000)})
    client.mset({f"other:{n}": n for n in range(500)})
    match = ("--match", "k:*") if filtered else ()
    ran = spawn("run", "--source", standalone_source.url(), "--target", serverless_target.url(),
                "--run-dir", run_dir, *match, timeout=120)
    assert ran.exit_code == 0, ran
    (run_dir / "verify.json").unlink()
    bars = Bars()
    source = open_source(Endpoint.from_url("source", standalone_source.url()), 0)
    target = open_target(Endpoint.from_url("target", serverless_target.url()))
    verify_stage(RunDir(run_dir), source, target, DumpOptions(db=0, match="k:*" if filtered else None), bars)
    keys = 3000 if filtered else 3500       # on the target, and in the reference (the dump, or the source)
    assert bars.bars["verify"] == {"total": 2 * keys, "done": 2 * keys}
    assert RunDir(run_dir).read("verify")["equal"] is True
