"""Everything a person reads: results as text (or JSON), warnings, progress bars. click and tqdm live here
and in cli.py only; the stages below report through `events` and return results, and this module turns
them into text, always scrubbed of secrets."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from tqdm import tqdm

from .datapath.segments import NO_EXPIRY
from .events import Events, ProgressCallback
from .keynames import readable
from .redact import scrub


def emit(result: dict, as_json: bool, render: Callable[[dict], str] | None = None) -> None:
    """Print a result for a machine (--json) or a person, with every known secret scrubbed."""
    if as_json:
        click.echo(scrub(json.dumps(result, indent=2, sort_keys=True, default=str)))
    else:
        click.echo(scrub(render(result) if render else table(result)))


def table(rows: dict, indent: str = "") -> str:
    """A plain two-column table of a (possibly nested) dict."""
    width = max((len(str(k)) for k in rows), default=0)
    lines = []
    for key, value in rows.items():
        if isinstance(value, dict) and value:
            lines.append(f"{indent}{key}:")
            lines.append(table(value, indent + "  "))
        else:
            lines.append(f"{indent}{str(key).ljust(width)}  {value}")
    return "\n".join(lines)


def warn(message: str) -> None:
    click.echo(scrub(f"warning: {message}"), err=True)


@contextmanager
def progress_bar(description: str, total: int | None, unit: str = "keys", initial: int = 0
                 ) -> Iterator[ProgressCallback]:
    """A tqdm bar with rate and ETA on a TTY; silent otherwise (tqdm's disable=None does that)."""
    bar = tqdm(total=total, desc=description, unit=unit, unit_scale=True, dynamic_ncols=True, initial=initial,
               disable=None, file=sys.stderr, mininterval=0.5)
    try:
        yield bar.update
    finally:
        bar.close()


TERMINAL = Events(progress=progress_bar, warn=warn)  # what the command line's stages report to


# --- dump, replay, run, status ---------------------------------------------------------------------

def render_summary(result: dict) -> str:
    """The stages' counts, the keys they skipped, then run's verify as `verify` prints it."""
    lines = [table({k: v for k, v in result.items() if k not in ("skipped_keys", "not_held_keys", "verify")
                    and not (k == "not_held" and not v)})]
    for item in result.get("skipped_keys", []):
        lines.append(f"skipped: {readable(item['key'])}: {item['reason']}")
    for item in result.get("not_held_keys", []):
        lines.append(f"not held: {readable(item['key'])}: {item['reason']}")
    if result.get("verify"):
        lines.append("verify: " + render_verify(result["verify"]).replace("\n", "\n  "))
    return "\n".join(lines)


def render_status(result: dict) -> str:
    lines = [f"{'stage':<8} {'state':<12} {'finished':<21} seconds"]
    for name, stage in result["stages"].items():
        lines.append(f"{name:<8} {stage['state']:<12} {stage.get('finished_at') or '-':<21} "
                     f"{stage.get('seconds') or '-'}")
    text = "\n".join(lines) + "\n\n" + render_summary(result["counts"])
    if result.get("sync"):
        text += "\n\n" + sync_line(result["sync"])
    if result.get("live"):
        live = result["live"]
        text += (f"\nlive cutover {live['phase']}: fence {live['fence_ms']} ms, forwarded {live['forwarded']}, "
                 f"conflicts {live['conflicts']}, last old-side write {live['seconds_since_last_old_write']} s ago, "
                 f"old-side clients {live['old_side_clients']}")
    return text


# --- sync --------------------------------------------------------------------------------------------

def sync_line(status: dict) -> str:
    """One line: state, lag, pending, applied, gaps, the proof."""
    proof = status.get("proof") or {}
    alive = "" if status.get("running", True) else " (not running)"
    if status.get("slots"):
        alive += f" [slots {status['slots']}]"
    return (f"sync {status['state']}{alive}: lag {status['lag_ms']} ms, pending {status['pending']}, "
            f"applied {status['applied']}, deleted {status['deleted']}, gaps {status['gaps']} "
            f"({status.get('unreconciled_gaps', 0)} open), reconciles {status['reconciles']}, "
            f"proof {'holds' if proof.get('holds') else 'not yet'} ({proof.get('open', 0)} open)")


def live_sync_line(status: dict) -> None:
    """The running sync's line, rewritten in place on the terminal."""
    sys.stderr.write("\r\x1b[2K" + scrub(sync_line(status)))
    sys.stderr.flush()


def end_live_line() -> None:
    """Leave the live line where it is: what follows starts on a line of its own."""
    sys.stderr.write("\n")
    sys.stderr.flush()


def render_sync(result: dict) -> str:
    return sync_line(result)


# --- verify ------------------------------------------------------------------------------------------

def _side_text(summary: dict | None) -> str:
    if summary is None:
        return "absent"
    ttl = "no TTL" if summary["ttl_ms"] == NO_EXPIRY else f"TTL {summary['ttl_ms']} ms"
    return f"{summary['type']} of {summary['length']}, {ttl}"


def render_verify(result: dict) -> str:
    """The result for a person: totals, the first differences, then the keys skipped on purpose."""
    lines = [("EQUAL" if result["equal"] else f"DIFFERENT: {result['differences']} differences")
             + f" ({result['seconds']:.1f}s)"]
    lines.append(table({k: result[k] for k in ("source", "target", "sample", "counts", "kinds", "repaired", "report")
                        if result.get(k) not in (None, {})}))
    for diff in result["first_differences"]:
        lines.append(f"{diff['kind']:8} {_shown(diff)}  source: {_side_text(diff['source'])}  "
                     f"target: {_side_text(diff['target'])}")
    if result["differences"] > len(result["first_differences"]):
        lines.append(f"... and {result['differences'] - len(result['first_differences'])} more in the report")
    skipped = result.get("skipped")
    if skipped:
        reasons = "; ".join(f"{count} {reason}" for reason, count in sorted(skipped["reasons"].items()))
        lines.append(f"not differences: {_keys(skipped['keys'])} that the copy skipped ({reasons})")
        lines += [f"skipped  {_shown(item)}  {item['reason']}" for item in skipped["first"]]
        if skipped["keys"] > len(skipped["first"]):
            lines.append(f"... and {skipped['keys'] - len(skipped['first'])} more in the report")
    return "\n".join(lines)


def _shown(item: dict) -> str:
    """A reported key as a person reads it (the item carries the exact name in base64)."""
    return readable(base64.b64decode(item["key"]))


def _keys(count: int) -> str:
    return f"{count} key{'s' if count != 1 else ''}"


# --- plan --------------------------------------------------------------------------------------------

def render_plan(result: dict) -> str:
    """One screen: both sides, the replay mode, the source's shape, the cache and SSM, blockers and warnings."""
    src, tgt = result["source"], result["target"]
    blocked = len(result["blockers"])
    lines = [f"plan: BLOCKED ({blocked})" if blocked else "plan: GO"]
    for role, side in (("source", src), ("target", tgt)):
        slots = "/".join(str(n) for n in side["masters"].values())
        lines.append(f"  {role:<8} {side['kind']}, {side.get('engine', side['server'])} {side['version']}, "
                     f"RDB {side['rdb_version']}, "
                     f"{len(side['masters'])} master(s) ({slots} slots), TLS {'yes' if side['tls'] else 'no'}, "
                     f"auth {'IAM' if side.get('iam') else 'yes' if side['auth'] else 'no'}, {side['keys']} keys  "
                     f"{side['url']}")
    lines.append(f"  replay   {result['replay']['mode']}: {result['replay']['why']}")
    lines += _type_path_lines(result.get("types", {}))
    sample = src["sample"]
    memory = _bytes(src["used_memory"]) if src["used_memory"] is not None else "n/a"
    in_memory = _bytes(src["data_bytes_memory"]) if src["data_bytes_memory"] is not None else "n/a"
    lines.append(f"  data     ~{_bytes(src['data_bytes'])} in db{src['db']}: "
                 f"the larger of {_bytes(src['data_bytes_sampled'])} "
                 f"from {sample['keys']} random keys ({sample['size_method']}) and {in_memory} from INFO memory "
                 f"(used_memory {memory}); {sample['ttl_share']:.0%} of keys with a TTL")
    lines.append("  types    " + (", ".join(f"{t} {n}" for t, n in sample["types"].items()) or "-"))
    if sample["largest"]:
        lines.append(f"  largest  of the {sample['keys']} sampled keys (a bigger one may be outside the sample):")
    for item in sample["largest"][:5]:
        lines.append(f"           {item['key']} ({item['type']}, {_bytes(item['bytes'])})")
    cache = result.get("serverless_cache")
    if cache:
        seconds = cache["replay_seconds_at_ecpu_max"]
        lines.append(f"  cache    {cache['name']} {cache['status']}, {cache['engine']}, endpoint {cache['endpoint']}")
        lines.append(f"           storage max {cache['storage_max_gb']} GB, "
                     f"needs {_bytes(cache['storage_needed_bytes'])} "
                     f"with headroom; ECPU/s {cache['ecpu_per_second_min']}..{cache['ecpu_per_second_max']}")
        lines.append(f"           replay writes {cache['replay_ecpu']} ECPU: {_usd(cache['replay_ecpu_cost_usd'])}"
                     f"{'' if seconds is None else f', at least {seconds} s at the ECPU maximum'}; "
                     f"storage {_usd(cache['storage_cost_usd_per_month'])}/month")
        lines.append(f"           {cache['advice']}")
    for name, param in result.get("ssm", {}).items():
        lines.append(f"  ssm      {name} = {param['value']} (v{param['version']})" if param["exists"]
                     else f"  ssm      {name} MISSING")
    for blocker in result["blockers"]:
        lines += [f"  BLOCKER  {blocker['problem']}", f"           fix: {blocker['fix']}"]
    lines += [f"  warning  {w}" for w in result["warnings"]]
    return "\n".join(lines)


def _type_path_lines(paths: dict) -> list[str]:
    """Types that take the same path for the same reason share a line: `string, list, ...: restore (why)`."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for kind, path in paths.items():
        shown = kind if path.get("keys") is None else f"{kind} ({_keys(path['keys'])} in the source)"
        grouped.setdefault((path["path"], path["why"]), []).append(shown)
    return [f"  {'paths' if index == 0 else '':<8} {', '.join(kinds)}: {path} ({why})"
            for index, ((path, why), kinds) in enumerate(grouped.items())]


def _usd(amount: float) -> str:
    return f"${amount:.2f}" if amount >= 0.01 else "< $0.01"


def _bytes(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return str(count)


# --- cutover, rollback -------------------------------------------------------------------------------

def _after_cell(row: dict) -> str:
    if row["change"] == "unchanged":
        return f"{row['after']} (unchanged)"
    return f"{row['after']} ({'v' + str(row['after_version']) if row['after_version'] else 'new version'})"


def render_switch(result: dict) -> str:
    """A short table: the check verdicts, each parameter now and after, redeploys, and the outcome."""
    head = f"{result['command']}  env {result['env']}  run {result['run_id']}"
    lines = [head + ("  (DRY RUN: nothing written)" if result["dry_run"] else "")]
    for check in result["checks"]:
        verdict = ("WARNING" if check.get("warning") else "pass") if check["passed"] else result["gate"].upper()
        lines.append(f"  check     {verdict}: {check['reason']}")
    cells = [(row["name"], f"{row['now']} (v{row['now_version']})", _after_cell(row)) for row in result["parameters"]]
    widths = [max(len(cell[i]) for cell in cells + [("parameter", "now", "")]) for i in (0, 1)]
    for name, now, after in [("parameter", "now", "after"), *cells]:
        lines.append(f"  {name.ljust(widths[0])}  {now.ljust(widths[1])}  {after}")
    if result.get("live"):
        lines.append("  live      " + _live_line(result["live"]))
    if result.get("bring_back"):
        lines += ["  back      " + line for line in _bring_back_lines(result["bring_back"])]
    for deploy in result["redeployed"]:
        lines.append(f"  redeploy  {deploy['service']}: {deploy['deployment'] or 'would force a new deployment'}")
    for refusal in result["refused"]:
        lines.append(f"  refused   {refusal}")
    if result["dry_run"]:
        lines += [f"  would     {action}" for action in result["actions"]]
    lines.append(f"  result    {result['outcome']}")
    return "\n".join(lines)


def _live_line(live: dict) -> str:
    """A live cutover's fence (or race window), and what sync's drain did."""
    parts = []
    if live.get("no_fence"):
        parts.append("no fence" + (f", race window {live['race_window_ms']} ms" if "race_window_ms" in live else ""))
    elif live.get("fence_ms") is not None:
        parts.append(f"fence held {live['fence_ms']} ms (limit {live['fence_limit_ms']} ms)")
    drain = live.get("drain")
    if drain:
        parts.append(f"drain {live.get('drain_ms')} ms: {drain['applied']} applied, {drain['rechecked']} re-checked, "
                     f"{drain['differences']} differences")
    return "; ".join(parts) or "sync following"


def _bring_back_lines(back: dict) -> list[str]:
    """Rounds, stragglers, conflicts and the last compare of rollback --bring-back."""
    lines = [f"round {n}: {r['found']} differences, {r['copied']} copied, {r['deleted']} deleted ({r['seconds']}s)"
             + _quiet_check(r.get("quiet_check")) for n, r in enumerate(back["rounds"], 1)]
    rollout = back.get("rollout")
    if rollout:
        lines.append(f"rollout: the redeploys replaced the tasks still on the cache in {rollout['waited_s']}s"
                     if rollout["replaced"] else
                     f"rollout: after {rollout['waited_s']}s tasks of earlier deployments still run "
                     f"({', '.join(f'{name}: {n}' for name, n in rollout['still_running'].items())}); the straggler "
                     "round ran anyway: what they write on the cache from now on is not brought back")
    if back["stragglers"]:
        s = back["stragglers"]
        lines.append(f"stragglers after the flip back: {s['found']} differences, {s['copied']} copied, "
                     f"{s['deleted']} deleted, {s['kept_newer_on_old']} kept (newer on the old Redis)")
    if back.get("phases"):
        lines.append("seconds: " + ", ".join(f"{name.replace('_', ' ')} {seconds}"
                                             for name, seconds in back["phases"].items()))
    lines.append(f"brought back {back['brought_back']} keys in {back['seconds']}s; conflicts {back['conflicts']}"
                 + (f" ({', '.join(back['conflict_keys'])})" if back["conflict_keys"] else "")
                 + f"; final differences {back['final_differences']}")
    return lines


def _quiet_check(check: dict | None) -> str:
    if not check:
        return ""
    if check["quiet"]:
        return f"; the cache is quiet since ({check['sampled']} keys sampled, key count unchanged): no more rounds"
    return f"; the apps still write on the cache ({check['changed']} changed): another round"


def render_ecs_task(result: dict) -> str:
    """The task definition and both policies as JSON (ready for the CLI or the console), then how to run it."""
    def block(title: str, document: dict) -> list[str]:
        return [f"# {title}", json.dumps(document, indent=2, sort_keys=True), ""]

    sizing = result["sizing"]
    lines = block("task definition", result["task_definition"])
    lines += block(f"task role {result['task_role']['arn']}: policy", result["task_role"]["policy"])
    lines += block(f"execution role {result['execution_role']['arn']}: policy", result["execution_role"]["policy"])
    lines += block("trust policy of both roles", result["trust_policy"])
    copy = sizing["copy_cpu_bound_s"]
    lines.append(f"# sized: {sizing['vcpu']:g} vCPU, {sizing['memory_mib']} MiB for {sizing['workers']} dump "
                 f"worker(s) + replay" + (f"; copy ~{copy:.0f} s of CPU per task (the cache's ECPU/s may bind "
                                          "first)" if copy is not None else ""))
    registered = result.get("registered")
    if registered:
        lines.append(f"# registered: {registered['arn']}")
    lines.append("# run it (one line per task):")
    for run in result["run_task"]:
        lines += [f"# {run['what']}", run["line"]]
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)


def render_retire(result: dict) -> str:
    """retire-check: the verdict, one line of evidence per check, then the next step."""
    checks = result["checks"]
    width = max(len(c["check"]) for c in checks)
    lines = [f"retire-check {result['old_redis']} ({result['kind']}): {result['verdict']}", ""]
    lines += [f"  {c['check'].ljust(width)}  {c['result'].ljust(11)}  {c['evidence']}" for c in checks]
    return "\n".join([*lines, "", f"next step: {result['next_step']}"])
