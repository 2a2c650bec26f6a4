"""SSM cutover and rollback: one code path that gates, records, writes, labels, reads back and can undo.

Both commands are a *switch*: make the endpoint and port parameters hold new values, after recording what
was in effect. A cutover switches to the target and labels the versions `pre-cutover` (before) and
`cutover` (after); a rollback switches back to the recorded values, taken from the run dir's cutover.json
or, without it, from those labels. A dry run is the same switch with a Writer that only records what it
would write.

Label policy: the two moving labels mark the versions in effect before and after the last cutover, for
every parameter; each version a run writes also gets `<cutover|rollback>-<run id>`. A version therefore
never collects more than a few labels (SSM allows 10), however many cutover/rollback cycles there are.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Protocol

from redis.connection import parse_url

from ..errors import BadInput, GateRefused, MigrateError, RuntimeFailure
from ..net.endpoints import Endpoint
from ..net.keyspace import SLOT_COUNT, SlotRanges, coverage
from ..rundir import CutoverLedger, CutoverRecord, RunDir, RunLedger, VerifyLedger
from .aws import (
    MISSING_PARAMETER_HINT,
    Clients,
    History,
    Version,
    aws_errors,
    describe_serverless_cache,
    force_new_deployment,
    parameter_history,
    parse_service,
    read_parameter,
)

DEFAULT_PREFIX = "/storefront/{env}/redis"
KEYS = ("endpoint", "port")  # write order: the endpoint first, so a failed port write leaves one value to undo
LABEL_BEFORE = "pre-cutover"
LABEL_AFTER = "cutover"
_OWN_LABEL = re.compile(r"^(pre-cutover|cutover|rollback)(-[A-Za-z0-9_.-]+)?$")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
VERIFY_HINT = ("run a full verify (no --sample) against this target with the same --run-dir, then cut over within "
               "--max-verify-age; --force skips this gate")


# --- inputs ------------------------------------------------------------------------------------------

def parameter_names(env: str, prefix: str = DEFAULT_PREFIX) -> dict[str, str]:
    """`<prefix>/endpoint` and `<prefix>/port`, with {env} substituted."""
    if not env or not re.fullmatch(r"[A-Za-z0-9_.-]+", env):
        raise BadInput(f"--env {env!r} is not an environment name", "use e.g. --env prod (letters, digits, . _ -)")
    resolved = prefix.replace("{env}", env).rstrip("/")
    if not resolved.startswith("/") or "{" in resolved:
        raise BadInput(f"--param-prefix {prefix!r} is not an SSM path", f"use e.g. --param-prefix {DEFAULT_PREFIX}")
    return {key: f"{resolved}/{key}" for key in KEYS}


def parse_duration(text: str) -> float:
    """'30m', '2h', '90s', '1h30m' or plain seconds, in seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    if not text or _DURATION.sub("", text):
        raise BadInput(f"duration {text!r} is not understood", "use e.g. 30m, 2h, 90s or 1h30m")
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION.findall(text))


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass(frozen=True)
class Target:
    """Where the parameters will point: a host and a port."""

    host: str
    port: int

    @property
    def values(self) -> dict[str, str]:
        return {"endpoint": self.host, "port": str(self.port)}

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def resolve_target(target_url: str | None, serverless_cache: str | None, clients: Clients) -> Target:
    """The target's host and port, from its URL or from the serverless cache's endpoint."""
    if bool(target_url) == bool(serverless_cache):
        raise BadInput("give exactly one of --target URL and --serverless-cache NAME",
                       "--serverless-cache reads the endpoint from AWS; --target takes it from the URL")
    if target_url:
        parsed = parse_url(Endpoint.from_url("target", target_url).url)
        if not parsed.get("host"):
            raise BadInput("the --target URL has no host", "use rediss://host:port")
        return Target(parsed["host"], int(parsed.get("port") or 6379))
    cache = describe_serverless_cache(clients, serverless_cache)
    if cache.status != "available" or not cache.host:
        raise BadInput(f"serverless cache {cache.name} is {cache.status}, without an endpoint to cut over to",
                       "wait until `aws elasticache describe-serverless-caches` shows it available")
    return Target(cache.host, int(cache.port or 6379))


# --- the gate ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """A safety check's outcome; a failed one refuses the switch unless --force."""

    passed: bool
    reason: str
    hint: str = ""
    warning: bool = False  # passed, but the operator should read it before switching


def verify_gate(run_dir: RunDir | None, max_age: float, target: Target, now: float) -> Check:
    """Pass only for a full, equal verify of this very target, newer than max_age."""
    if run_dir is None:
        return Check(False, "no --run-dir, so no verify to check",
                     "pass the --run-dir that verify wrote; --force cuts over without one "
                     "(rollback then relies on the SSM labels)")
    ledger = VerifyLedger.load(run_dir)
    if not ledger.found:
        return Check(False, f"no verify in {run_dir.path}", VERIFY_HINT)
    verify = ledger.verdict()
    if verify is None:
        return Check(False, f"verify.json in {run_dir.path} is incomplete", VERIFY_HINT)
    age, skipped, (host, port) = now - verify.finished_at, verify.skipped, verify.target_address
    if not verify.equal or verify.differences != 0:
        return Check(False, f"the last verify found {verify.differences} differences", VERIFY_HINT)
    if verify.sample is not None:
        return Check(False, f"the last verify checked a sample of {verify.sample} keys, not every key", VERIFY_HINT)
    if skipped and not RunLedger.load(run_dir).skipped_accepted:
        return Check(False, f"the last verify found {skipped} key(s) that the copy skipped, and the copy did not "
                            f"accept skipping them", "rerun the copy with --skip-unsupported to accept them (or fix "
                                                     "them on the source and rerun it); --force skips this gate")
    if age > max_age:
        return Check(False, f"the last verify is {format_duration(age)} old (limit {format_duration(max_age)})",
                     VERIFY_HINT)
    if (host, port) != (target.host.lower(), target.port):
        return Check(False, f"the last verify checked {host}:{port}, not the cutover target {target}",
                     VERIFY_HINT)
    accepted = f", but {skipped} key(s) skipped on purpose (--skip-unsupported)" if skipped else ""
    return Check(True, f"full verify {format_duration(max(age, 0))} ago: every key equal{accepted}")


def as_run_dirs(run_dir: RunDir | list[RunDir] | None) -> list[RunDir]:
    return run_dir if isinstance(run_dir, list) else [run_dir] if run_dir is not None else []


def check_slot_coverage(run_dirs: list[RunDir]) -> None:
    """Run dirs of a copy split by --slots must cover every hash slot exactly once together; a gap or an
    overlap is bad input (exit 2) naming the slots. One run dir without --slots covers them all."""
    if not run_dirs:
        return
    recorded = [(run_dir, RunLedger.load(run_dir).slots) for run_dir in run_dirs]
    gaps, overlaps = coverage([SlotRanges.parse(slots) if slots else SlotRanges([(0, SLOT_COUNT - 1)])
                               for _, slots in recorded])
    listed = "; ".join(f"{run_dir.path}: {slots or 'all'}" for run_dir, slots in recorded)
    if gaps:
        raise BadInput(f"the run dirs leave slots {gaps} uncovered ({listed})",
                       "copy and verify those slots too (run --slots ... into its own --run-dir) and pass that "
                       "--run-dir as well")
    if overlaps:
        raise BadInput(f"the run dirs cover slots {overlaps} more than once ({listed})",
                       "pass each slot range's run dir once: one --run-dir per --slots range")


def verify_gates(run_dirs: list[RunDir], max_age: float, target: Target, now: float) -> list[Check]:
    """One verify gate per run dir; with several, each check names its run dir."""
    if len(run_dirs) <= 1:
        return [verify_gate(run_dirs[0] if run_dirs else None, max_age, target, now)]
    checks = [verify_gate(run_dir, max_age, target, now) for run_dir in run_dirs]
    return [Check(c.passed, f"{run_dir.path} (slots {RunLedger.load(run_dir).slots}): {c.reason}", c.hint, c.warning)
            for run_dir, c in zip(run_dirs, checks)]


def first_record(run_dirs: list[RunDir]) -> CutoverRecord | None:
    """The cutover record of the first run dir that holds one (all hold the same)."""
    return next((record for run_dir in run_dirs if (record := CutoverLedger.load(run_dir).record)), None)


def ignored_databases_check(run_dir: RunDir | None) -> list[Check]:
    """A warning (never a refusal) when dump/run copied one database with --ignore-other-dbs: the
    apps reading the others lose them at the switch."""
    ignored = RunLedger.load(run_dir).ignored_databases if run_dir else None
    if not ignored:
        return []
    listed = ", ".join(f"db{n}: {k} keys" for n, k in ignored.others.items())
    return [Check(True, f"only db{ignored.db} was migrated: the source also held {listed}, left behind on purpose "
                        "(--ignore-other-dbs)", warning=True)]


# --- the writer: executes, or for a dry run only records -------------------------------------------

class Writer:
    """Every write goes through here. A dry run records it instead, so the caller's path is the same."""

    def __init__(self, clients: Clients, dry_run: bool) -> None:
        self.clients = clients
        self.dry_run = dry_run
        self.actions: list[str] = []
        self.refusals: list[str] = []

    def _act(self, description: str, call):
        self.actions.append(description)
        return None if self.dry_run else call()

    def step(self, description: str, call):
        """A step of a hook (fence, drain, unpause): listed like every write, only listed in a dry run."""
        return self._act(description, call)

    def refuse(self, error: GateRefused) -> None:
        """A live run stops here; a dry run notes the refusal and shows what it would have written."""
        if not self.dry_run:
            raise error
        self.refusals.append(str(error))

    def save(self, run_dir: RunDir | list[RunDir] | None, record: CutoverRecord) -> None:
        """The record goes to the run dir, or to every one of them (a copy split by --slots)."""
        for each in run_dir if isinstance(run_dir, list) else [run_dir] if run_dir is not None else []:
            ledger = CutoverLedger(each)
            self._act(f"write {ledger.path}", lambda ledger=ledger: ledger.keep(record))

    def put(self, name: str, value: str) -> int | None:
        def call():
            with aws_errors(f"SSM parameter {name}"):
                return int(self.clients.ssm.put_parameter(Name=name, Value=value, Overwrite=True)["Version"])
        return self._act(f"put {name} = {value}", call)

    def label(self, name: str, version: int | None, labels: list[str]) -> None:
        def call():
            with aws_errors(f"SSM parameter {name}"):
                reply = self.clients.ssm.label_parameter_version(Name=name, ParameterVersion=version, Labels=labels)
            if reply.get("InvalidLabels"):
                raise RuntimeFailure(f"SSM refused labels {reply['InvalidLabels']} on {name}", "report this as a bug")
        self._act(f"label {name} version {version or 'new'}: {', '.join(labels)}", call)

    def unlabel(self, name: str, version: int, labels: list[str]) -> None:
        def call():
            with aws_errors(f"SSM parameter {name}"):
                self.clients.ssm.unlabel_parameter_version(Name=name, ParameterVersion=version, Labels=labels)
        self._act(f"unlabel {name} version {version} (the oldest of 100): {', '.join(labels)}", call)

    def read_back(self, name: str, expected: str) -> None:
        """What the applications will read must be what was written."""
        if self.dry_run:
            return
        got = read_parameter(self.clients.ssm, name)
        if got.value != expected:
            raise RuntimeFailure(f"read back {name} = {got.value!r} (version {got.number}), expected {expected!r}",
                                 "someone wrote the parameter at the same time: check its history, then rerun")

    def redeploy(self, cluster: str, service: str) -> str | None:
        return self._act(f"redeploy ECS {cluster}/{service}",
                         lambda: force_new_deployment(self.clients, cluster, service))


# --- the switch: the one code path --------------------------------------------------------------------

class SwitchFailed(RuntimeFailure):
    """A write failed part-way; `holding` says what each parameter holds now."""

    def __init__(self, message: str, hint: str, holding: dict[str, str]) -> None:
        super().__init__(message, hint)
        self.holding = holding


@dataclass
class Switch:
    """Make the parameters hold `desired`, labelling before/after versions; refusals stop it unless forced."""

    kind: str  # "cutover" or "rollback"
    env: str
    names: dict[str, str]
    histories: dict[str, History]
    desired: dict[str, str]
    pre_cutover: dict[str, Version]  # the versions in effect before the cutover: what a rollback restores
    record: CutoverRecord | None  # the run dir's cutover.json as found
    checks: list[Check] = field(default_factory=list)
    labels_before: tuple[str, ...] = ()
    labels_after: tuple[str, ...] = ()
    run_id: str = ""

    @property
    def changes(self) -> list[str]:
        return [key for key in KEYS if self.histories[key].current.value != self.desired[key]]

    @property
    def done_state(self) -> str:
        return "cut-over" if self.kind == "cutover" else "rolled-back"

    @property
    def run_label(self) -> str:
        return f"{self.kind}-{self.run_id}"


class SwitchHooks(Protocol):
    """What a live cutover does around the SSM writes: `before_write` (fence, drain) right before the first put,
    `after_write` (lift the fence, record the flip) right after the read back, `abort` when anything in
    between failed (lift the fence), `report` for the result."""

    def before_write(self, writer: Writer) -> None: ...

    def after_write(self, writer: Writer) -> None: ...

    def abort(self) -> str | None: ...

    def report(self) -> dict: ...


def run_switch(switch: Switch, writer: Writer, run_dir: RunDir | None, services: list[tuple[str, str]],
               force: bool, hooks: SwitchHooks | None = None) -> dict:
    """Gate, record, write, label, read back, redeploy, record: the same steps for cutover, rollback and dry runs."""
    result = _result(switch, writer)
    if not switch.changes:
        result["gate"] = "not needed"
        result["outcome"] = f"nothing to change: the parameters already hold the {switch.kind} values"
        _redeploy(writer, run_dir, switch.record, _pending_redeploys(switch, services), result)
        return _finish(result, writer)
    for check in switch.checks:
        if not check.passed:
            result["gate"] = "forced" if force else "refused"
            if not force:
                writer.refuse(GateRefused(f"{switch.kind} refused: {check.reason}", check.hint))
    for key in switch.changes:
        _refuse_foreign_labels_in_the_way(writer, switch.histories[key])
    record = _new_record(switch)
    writer.save(run_dir, record)  # the old values are durable before the first SSM write
    _prepare(switch, writer)
    if hooks is not None:
        _before_write(hooks, switch, writer, run_dir, record, result)
    try:
        after = _write(switch, writer)
    except SwitchFailed as exc:
        _aborted(hooks, exc, result)
        record.state, record.holding, record.error = f"{switch.kind}-failed", exc.holding, exc.message
        writer.save(run_dir, record)
        raise
    except BaseException as exc:
        _aborted(hooks, exc if isinstance(exc, MigrateError) else None, result)
        raise
    if hooks is not None:
        hooks.after_write(writer)
        result["live"] = hooks.report()
    record.state, record.finished_at, record.versions_after = switch.done_state, time.time(), after
    writer.save(run_dir, record)
    for row in result["parameters"]:
        row["after_version"] = after[row["key"]]
    result["outcome"] = _done_message(switch)
    _redeploy(writer, run_dir, record, services, result)
    return _finish(result, writer)


def _before_write(hooks: SwitchHooks, switch: Switch, writer: Writer, run_dir: RunDir | None,
                  record: CutoverRecord, result: dict) -> None:
    """Fence and drain; if either fails, the fence is lifted and SSM was not touched (recorded as such)."""
    try:
        hooks.before_write(writer)
    except BaseException as exc:
        _aborted(hooks, exc if isinstance(exc, MigrateError) else None, result)
        if isinstance(exc, MigrateError):
            record.state, record.error = f"{switch.kind}-failed", exc.message
            record.holding = {key: h.current.value for key, h in switch.histories.items()}
            writer.save(run_dir, record)
        raise


def _aborted(hooks: SwitchHooks | None, exc: MigrateError | None, result: dict) -> None:
    """Lift a live cutover's fence after a failure; a failure to lift it is added to the error's hint."""
    if hooks is None:
        return
    trouble = hooks.abort()
    result["live"] = hooks.report()
    if trouble and exc is not None:
        exc.hint = f"{exc.hint}; also: {trouble}" if exc.hint else trouble


def _prepare(switch: Switch, writer: Writer) -> None:
    """Make room and label the old versions: SSM work that need not happen inside a live cutover's fence."""
    for key in switch.changes:
        _make_room(writer, switch.histories[key])
    for key in KEYS:
        _label_missing(writer, switch.histories[key], switch.pre_cutover[key], switch.labels_before)


def _write(switch: Switch, writer: Writer) -> dict[str, int | None]:
    """Put and label each change, label the rest, read everything back (after `_prepare`)."""
    written: dict[str, int | None] = {}
    for key in switch.changes:
        name = switch.names[key]
        try:
            written[key] = writer.put(name, switch.desired[key])
            writer.label(name, written[key], [switch.run_label, *switch.labels_after])
        except MigrateError as exc:
            raise _undo(switch, writer, written, key, exc) from None
    after = {key: written.get(key, switch.histories[key].current.number) for key in KEYS}
    for key in KEYS:
        if key not in written:
            _label_missing(writer, switch.histories[key], switch.histories[key].current, switch.labels_after)
        writer.read_back(switch.names[key], switch.desired[key])
    return after


def _label_missing(writer: Writer, history: History, version: Version, labels: tuple[str, ...]) -> None:
    missing = [label for label in labels if label not in version.labels]
    if missing:
        writer.label(history.name, version.number, missing)


def _labels_in_the_way(history: History) -> list[str]:
    """SSM refuses a 101st version while the oldest one carries a label: those labels."""
    return list(history.oldest.labels) if history.full else []


def _refuse_foreign_labels_in_the_way(writer: Writer, history: History) -> None:
    """Labels this tool did not set are not ours to move: say how, before anything is written."""
    foreign = [label for label in _labels_in_the_way(history) if not _OWN_LABEL.match(label)]
    if foreign:
        oldest = history.oldest.number
        writer.refuse(GateRefused(
            f"{history.name} has {len(history.versions)} versions and the oldest (version {oldest}) carries labels "
            f"this tool did not set ({', '.join(foreign)}): SSM refuses a new version "
            "(ParameterMaxVersionLimitExceeded)",
            f"move or remove them, e.g. aws ssm unlabel-parameter-version --name {history.name} "
            f"--parameter-version {oldest} --labels {' '.join(foreign)}, then rerun"))


def _make_room(writer: Writer, history: History) -> None:
    """Our own labels on the oldest version mark long-finished runs (this run's are on newer versions): remove them."""
    ours = [label for label in _labels_in_the_way(history) if _OWN_LABEL.match(label)]
    if ours:
        writer.unlabel(history.name, history.oldest.number, ours)


def _undo(switch: Switch, writer: Writer, written: dict, failed_key: str, cause: MigrateError) -> SwitchFailed:
    """Put back what this run wrote before the failure, and say exactly what the parameters hold now."""
    holding = {key: switch.histories[key].current.value for key in KEYS}
    holding.update({key: switch.desired[key] for key in written})
    failed = switch.names[failed_key]
    restored, undo_errors = [], []
    for key in reversed(list(written)):
        old = switch.histories[key].current.value
        try:
            writer.put(switch.names[key], old)
            holding[key] = old
            restored.append(f"{switch.names[key]} put back to {old}")
        except MigrateError as exc:
            undo_errors.append(f"putting {switch.names[key]} back failed: {exc.message}")
    state = ", ".join(f"{switch.names[key]}={holding[key]}" for key in KEYS)
    if undo_errors:
        what, other_way = "; ".join(undo_errors) + ". The parameters are MIXED", ", or run rollback --force to go back"
    else:
        what, other_way = ("; ".join(restored) or "Nothing had been written") + \
            ". All parameters hold what they held before this run", ""
    return SwitchFailed(f"{switch.kind} failed writing {failed}: {cause.message}. {what}: {state}",
                        f"fix the cause ({cause.hint or 'see above'}), then rerun the same command{other_way}", holding)


def _pending_redeploys(switch: Switch, services: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """On a rerun with nothing to write, only the redeploys the recorded switch did not finish."""
    record = switch.record
    if record is None or record.state != switch.done_state or record.values_after != switch.desired:
        return []
    done = set(record.redeployed)
    return [s for s in services if "/".join(s) not in done]


def _redeploy(writer: Writer, run_dir: RunDir | None, record: CutoverRecord | None,
              services: list[tuple[str, str]], result: dict) -> None:
    """Force new ECS deployments, recording each, so that a rerun redeploys only what is left."""
    for cluster, service in services:
        name = f"{cluster}/{service}"
        try:
            deployment = writer.redeploy(cluster, service)
        except MigrateError as exc:
            raise RuntimeFailure(f"the parameters are switched, but redeploying {name} failed: {exc.message}",
                                 f"{exc.hint}; then rerun the same command: it redeploys only what is left") from None
        result["redeployed"].append({"service": name, "deployment": deployment})
        if record is not None:
            record.redeployed = sorted({*record.redeployed, name})
            writer.save(run_dir, record)


def _new_record(switch: Switch) -> CutoverRecord:
    """cutover.json: what a rollback restores and what the cutover wrote (set by a cutover, kept by a rollback),
    plus the latest switch's state and redeploys."""
    record = CutoverRecord(env=switch.env, parameters=switch.names, state=f"{switch.kind}-started",
                           values_after=switch.desired, redeployed=[], started_at=time.time(),
                           last_run_id=switch.run_id)
    if switch.kind == "cutover":
        record.set_before({key: (v.number, v.value) for key, v in switch.pre_cutover.items()})
        record.cutover_values, record.run_id = switch.desired, switch.run_id
    elif switch.record is not None:
        record.before, record.cutover_values, record.run_id = (switch.record.before, switch.record.cutover_values,
                                                               switch.record.run_id)
    return record


def _result(switch: Switch, writer: Writer) -> dict:
    return {
        "command": switch.kind, "env": switch.env, "dry_run": writer.dry_run, "run_id": switch.run_id,
        "checks": [{"passed": c.passed, "reason": c.reason, **({"warning": True} if c.warning else {})}
                   for c in switch.checks],
        "gate": "pass",
        "parameters": [{"key": key, "name": switch.names[key], "now": h.current.value, "now_version": h.current.number,
                        "after": switch.desired[key], "after_version": h.current.number,
                        "change": "write" if key in switch.changes else "unchanged"}
                       for key, h in switch.histories.items()],
        "redeployed": [], "actions": writer.actions, "refused": writer.refusals, "outcome": "",
    }


def _finish(result: dict, writer: Writer) -> dict:
    if writer.dry_run:
        verdict = "would be refused" if writer.refusals else "would go ahead"
        result["outcome"] = f"dry run, nothing written; the {result['command']} {verdict}"
    return result


def _done_message(switch: Switch) -> str:
    where = f"{switch.desired['endpoint']}:{switch.desired['port']}"
    if switch.kind == "cutover":
        return (f"cut over to {where}; the apps use it once redeployed; undo with: "
                f"redis-migrate rollback --env {switch.env}")
    return f"rolled back to {where}; the apps use it once redeployed"


# --- the commands ------------------------------------------------------------------------------------

def read_histories(clients: Clients, names: dict[str, str]) -> dict[str, History]:
    """Both parameters must exist: creating one nobody reads would make a typo look like a cutover."""
    histories = {}
    for key, name in names.items():
        history = parameter_history(clients.ssm, name)
        if history is None:
            raise BadInput(f"SSM parameter {name} does not exist", MISSING_PARAMETER_HINT)
        histories[key] = history
    return histories


def before_version(history: History) -> Version:
    """The version in effect before the cutover: the current one, unless a cutover put it in effect
    (a rerun after a partial failure, or a cutover to another target), then the one labelled pre-cutover."""
    if LABEL_AFTER in history.current.labels:
        return history.labelled(LABEL_BEFORE) or history.current
    return history.current


def new_run_id(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + "-" + secrets.token_hex(2)


def cutover(env: str, *, target_url: str | None = None, serverless_cache: str | None = None,
            run_dir: RunDir | list[RunDir] | None = None, prefix: str = DEFAULT_PREFIX, max_verify_age: str = "30m",
            force: bool = False, redeploy: tuple[str, ...] = (), dry_run: bool = False,
            clients: Clients | None = None, now: float | None = None, gate: list[Check] | None = None,
            hooks: SwitchHooks | None = None) -> dict:
    """Repoint the parameters at the target, gated by a fresh passing verify and recorded for rollback.
    The caller holds the run dir's lock (unless this is a dry run, which writes nothing). A live cutover
    (live_cutover.py) passes its own gate (sync healthy) and hooks (fence, drain, unpause). Several run dirs
    (a copy split by --slots) must cover every slot once, each with its own passing verify; the record
    goes to all of them."""
    run_dirs = as_run_dirs(run_dir)
    check_slot_coverage(run_dirs)
    clients = clients or Clients()
    now = time.time() if now is None else now
    names = parameter_names(env, prefix)
    max_age = parse_duration(max_verify_age)
    services = [parse_service(s) for s in redeploy]
    target = resolve_target(target_url, serverless_cache, clients)
    writer = Writer(clients, dry_run)
    histories = read_histories(clients, names)
    switch = Switch("cutover", env, names, histories, target.values,
                    pre_cutover={key: before_version(h) for key, h in histories.items()},
                    record=first_record(run_dirs),
                    checks=[*(gate if gate is not None else verify_gates(run_dirs, max_age, target, now)),
                            *(check for each in run_dirs for check in ignored_databases_check(each))],
                    labels_before=(LABEL_BEFORE,), labels_after=(LABEL_AFTER,), run_id=new_run_id(now))
    return run_switch(switch, writer, run_dirs or None, services, force, hooks)


def rollback(env: str, *, run_dir: RunDir | list[RunDir] | None = None, prefix: str = DEFAULT_PREFIX,
             force: bool = False,
             redeploy: tuple[str, ...] = (), dry_run: bool = False, clients: Clients | None = None,
             now: float | None = None) -> dict:
    """Put back exactly the recorded values, refusing if someone else changed the parameters since.
    The caller holds the run dir's lock (unless this is a dry run)."""
    clients = clients or Clients()
    now = time.time() if now is None else now
    names = parameter_names(env, prefix)
    services = [parse_service(s) for s in redeploy]
    writer = Writer(clients, dry_run)
    histories = read_histories(clients, names)
    run_dirs = as_run_dirs(run_dir)
    record = first_record(run_dirs)  # any run dir of a split copy holds the record
    restore, wrote, source = _rollback_values(record, histories, names)
    switch = Switch("rollback", env, names, histories, {key: v.value for key, v in restore.items()},
                    pre_cutover=restore, record=record,
                    checks=[_unchanged_since_cutover(histories, restore, wrote, source)],
                    run_id=new_run_id(now))
    result = run_switch(switch, writer, run_dirs or None, services, force)
    result["restored_from"] = source
    return result


def _rollback_values(record: CutoverRecord | None, histories: dict[str, History],
                     names: dict[str, str]) -> tuple[dict[str, Version], dict[str, str], str]:
    """(values to restore, values the cutover wrote, where they came from): the run dir, else the SSM labels."""
    before = record.before_versions() if record is not None else None
    if before is not None:
        if record.parameters != names:
            raise BadInput(f"the run dir's cutover.json is for {sorted((record.parameters or {}).values())}, "
                           f"not {sorted(names.values())}", "pass the --env and --param-prefix the cutover used")
        restore = {key: Version(number, value) for key, (number, value) in before.items()}
        return restore, record.cutover_values, "run dir cutover.json"
    restore, wrote = {}, {}
    for key, history in histories.items():
        before, after = history.labelled(LABEL_BEFORE), history.labelled(LABEL_AFTER)
        if before is None or after is None:
            raise BadInput(f"{history.name} has no versions labelled {LABEL_BEFORE}/{LABEL_AFTER}, so no cutover "
                           "by this tool is recorded in SSM",
                           "pass the --run-dir of the cutover, or restore by hand with "
                           "aws ssm put-parameter --overwrite")
        restore[key], wrote[key] = before, after.value
    return restore, wrote, "SSM labels pre-cutover/cutover"


def _unchanged_since_cutover(histories: dict[str, History], restore: dict[str, Version],
                             wrote: dict[str, str], source: str) -> Check:
    """Each parameter must hold what the cutover wrote (or already the old value): anything else is someone else's."""
    foreign = [f"{h.name}={h.current.value!r} (version {h.current.number}), cutover wrote {wrote[key]!r}"
               for key, h in histories.items() if h.current.value not in (wrote[key], restore[key].value)]
    if foreign:
        return Check(False, "changed since the cutover by someone else: " + "; ".join(foreign),
                     "find out who changed them and why; --force restores the recorded values anyway")
    return Check(True, f"the parameters hold what the cutover wrote (recorded in {source})")
