"""The exactly-once promise as a repeatable trial (scripts/soak.sh is the entry point).

Each trial starts a lab serving a hierarchy that mixes servers reached through their SUSDB and
through their web service, with replicas on both, runs `apply`, interrupts it at a random moment
(kill -9, SIGINT, SIGINT twice, SIGINT then kill -9), then `resume` (or `apply` again when the run
had ended) and `verify`, and checks what the lab's state file says:

- every replica is back in replica mode;
- every server is repaired: declined, no approval left for a computer group;
- no change was sent to a server in replica mode (the lab refuses, and records, each one);
- no second approval within one attempt (the journals' attempts against the lab's approvals);
- `verify` exits 0.

A failing trial is kept under soak-failures/ with what replays it: the seed, the signal and its
moment, the journals, the lab's state, and every command's output.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PASSWORD = "s0ak-Lab-Pw"

TOPOLOGY = """\
version: 1
defaults:
  sql:
    auth: { method: sql, user: wsus_repair, password_env: SOAK_PW }
  api:
    port: 8530
    tls: false
    auth: { method: windows, user: 'CORP\\wsus_repair', password_env: SOAK_PW }
servers:
  - name: hq
    sql: { host: sql-hq.soak.example }
  - name: r1
    upstream: hq
    api: { host: r1.soak.example }
  - name: r1a
    upstream: r1
    mode: replica
    api: { host: r1a.soak.example }
  - name: r1b
    upstream: r1
    mode: replica
    sql: { host: sql-r1b.soak.example }
  - name: r2
    upstream: hq
    mode: replica
    sql: { host: sql-r2.soak.example }
  - name: r2a
    upstream: r2
    mode: replica
    api: { host: r2a.soak.example }
  - name: r2b
    upstream: r2
    sql: { host: sql-r2b.soak.example }
  - name: r2c
    upstream: r2
    mode: replica
    sql: { host: sql-r2c.soak.example }
"""
REPLICAS = {"r1a", "r1b", "r2", "r2a", "r2c"}
APPROVALS = {"spDeployUpdate", "ExecuteSPDeployUpdate1"}
CHANGES = APPROVALS | {"spDeclineUpdate", "ExecuteSPDeclineUpdate"}
KINDS = ["kill9", "int", "int2", "int-kill9"]


def run(binary, work, args, timeout=120):
    env = dict(os.environ, SOAK_PW=PASSWORD, RUST_LOG="")
    return subprocess.run(
        [binary, *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout
    )


def start_lab(binary, work, latency_ms):
    env = dict(os.environ, SOAK_PW=PASSWORD)
    lab = subprocess.Popen(
        [binary, "lab", "h.yaml", "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0",
         "--state", "lab.json", "--seed", "broken", "--latency", str(latency_ms),
         "--user", "wsus_repair", "--password-env", "SOAK_PW",
         "--windows-user", "CORP\\wsus_repair", "--windows-password-env", "SOAK_PW"],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    first = lab.stdout.readline()
    second = lab.stdout.readline()
    tds = re.match(r"listening on (\S+)", first)
    api = re.match(r"api listening on (\S+)", second)
    if not tds or not api:
        lab.kill()
        raise RuntimeError(f"the lab did not start: {first!r} {second!r}")
    return lab, tds.group(1), api.group(1)


def journals(work):
    runs = os.path.join(work, "state", "runs")
    records = []
    if os.path.isdir(runs):
        for name in sorted(os.listdir(runs)):
            with open(os.path.join(runs, name), encoding="utf-8", errors="replace") as f:
                for line in f:
                    _, _, body = line.strip().partition(" ")
                    try:
                        records.append(json.loads(body))
                    except ValueError:
                        pass  # a torn last line of a killed run
    return records


def check(work, verify):
    """What is wrong after a trial, in words; empty when nothing."""
    with open(os.path.join(work, "lab.json"), encoding="utf-8") as f:
        servers = json.load(f)["servers"]
    wrong = []
    attempts = {}
    approved_in_attempt = {}
    for r in journals(work):
        server = r.get("server")
        if r.get("record") == "server-started":
            attempts[server] = attempts.get(server, 0) + 1
            approved_in_attempt[(server, attempts[server])] = 0
        if r.get("record") == "outcome" and r.get("name") == "approve" and r.get("result") == "done":
            key = (server, attempts.get(server, 0))
            approved_in_attempt[key] = approved_in_attempt.get(key, 0) + 1
    for (server, attempt), n in approved_in_attempt.items():
        if n > 1:
            wrong.append(f"{server}: {n} approvals journaled in attempt {attempt}")
    for name, db in servers.items():
        if name in REPLICAS and not db["replica_mode"]:
            wrong.append(f"{name} left autonomous")
        live = [d for d in db["deployments"] if d.get("target_group_type_id", 0) == 0]
        if not db["update_declined"] or live:
            wrong.append(f"{name} not repaired (declined {db['update_declined']}, {len(live)} live approvals)")
        calls = db["calls"]
        refused = [c["procedure"] for c in calls
                   if c["procedure"] in CHANGES and c["params"].get("ok") is False]
        if refused:
            wrong.append(f"{name}: changes sent while it was a replica (refused): {refused}")
        approvals = sum(1 for c in calls if c["procedure"] in APPROVALS and c["params"].get("ok") is not False)
        if approvals > max(attempts.get(name, 0), 1):
            wrong.append(f"{name}: {approvals} approvals in {attempts.get(name, 0)} attempt(s)")
    if verify.returncode != 0:
        wrong.append(f"verify exited {verify.returncode}")
    return wrong


def calibrate(binary, latency_ms):
    """How long an uninterrupted `apply` of the hierarchy takes: the window the signals land in."""
    work = tempfile.mkdtemp(prefix="soak-")
    lab = None
    try:
        with open(os.path.join(work, "h.yaml"), "w", encoding="utf-8") as f:
            f.write(TOPOLOGY)
        lab, tds, api = start_lab(binary, work, latency_ms)
        started = time.monotonic()
        done = run(binary, work, ["apply", "h.yaml", "--yes", "--state-dir", "state",
                                  "--connect-via", tds, "--api-via", api])
        if done.returncode != 0:
            raise RuntimeError(f"an uninterrupted apply failed: {done.stdout}{done.stderr}")
        return time.monotonic() - started
    finally:
        if lab is not None:
            lab.kill()
            lab.wait()
        shutil.rmtree(work, ignore_errors=True)


def trial(binary, k, seed, latency_ms, window, keep):
    rng = random.Random(seed)
    kind = rng.choice(KINDS)
    at = rng.uniform(0.0, window)
    work = tempfile.mkdtemp(prefix="soak-")
    outputs = []
    lab = None
    try:
        with open(os.path.join(work, "h.yaml"), "w", encoding="utf-8") as f:
            f.write(TOPOLOGY)
        lab, tds, api = start_lab(binary, work, latency_ms)
        via = ["--connect-via", tds, "--api-via", api]
        env = dict(os.environ, SOAK_PW=PASSWORD, RUST_LOG="")
        apply = subprocess.Popen(
            [binary, "apply", "h.yaml", "--yes", "--state-dir", "state", *via],
            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(at)
        if kind == "kill9":
            apply.send_signal(signal.SIGKILL)
        elif kind == "int":
            apply.send_signal(signal.SIGINT)
        elif kind == "int2":
            apply.send_signal(signal.SIGINT)
            time.sleep(rng.uniform(0.0, 0.1))
            apply.send_signal(signal.SIGINT)
        else:
            apply.send_signal(signal.SIGINT)
            time.sleep(rng.uniform(0.0, 0.2))
            apply.send_signal(signal.SIGKILL)
        out, err = apply.communicate(timeout=120)
        outputs.append(("apply", apply.returncode, out, err))
        interrupted = apply.returncode != 0
        resumed = run(binary, work, ["resume", "--state-dir", "state", *via])
        outputs.append(("resume", resumed.returncode, resumed.stdout, resumed.stderr))
        if resumed.returncode == 2 and "no unfinished run" in resumed.stderr:
            again = run(binary, work, ["apply", "h.yaml", "--yes", "--state-dir", "state", *via])
            outputs.append(("apply again", again.returncode, again.stdout, again.stderr))
        verify = run(binary, work, ["verify", "h.yaml", *via])
        outputs.append(("verify", verify.returncode, verify.stdout, verify.stderr))
        wrong = check(work, verify)
    except Exception as e:  # a trial that cannot even run is a failure too
        wrong = [f"the trial did not run: {e!r}"]
        interrupted = True
    finally:
        if lab is not None:
            lab.kill()
            lab.wait()
    if wrong:
        kept = os.path.join(keep, f"trial-{k}-seed-{seed}")
        shutil.copytree(work, kept, dirs_exist_ok=True)
        with open(os.path.join(kept, "trial.txt"), "w", encoding="utf-8") as f:
            f.write(f"seed {seed}\nsignal {kind} after {at:.3f} s (window {window:.3f} s)\n")
            f.write(f"latency {latency_ms} ms\n")
            f.write("\n".join(wrong) + "\n")
            for name, code, out, err in outputs:
                f.write(f"\n--- {name}: exit {code}\n{out}\n{err}\n")
    shutil.rmtree(work, ignore_errors=True)
    return kind, interrupted, wrong


def main():
    binary, n, seed = os.path.abspath(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    latency_ms = int(os.environ.get("SOAK_LATENCY_MS", "10"))
    keep = os.path.abspath("soak-failures")
    rng = random.Random(seed)
    failed = 0
    interrupted = 0
    by_kind = {}
    started = time.monotonic()
    window = calibrate(binary, latency_ms)
    for k in range(1, n + 1):
        trial_seed = rng.randrange(1 << 32)
        kind, cut, wrong = trial(binary, k, trial_seed, latency_ms, window, keep)
        by_kind[kind] = by_kind.get(kind, 0) + 1
        interrupted += int(cut)
        if wrong:
            failed += 1
            print(f"trial {k} (seed {trial_seed}, {kind}) FAILED: {'; '.join(wrong)}", flush=True)
        elif k % 25 == 0:
            print(f"{k} trials, {failed} failed", flush=True)
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(by_kind.items()))
    print(f"soak: {n} trials ({kinds}; {interrupted} ended the apply early), seed {seed}, "
          f"{latency_ms} ms per round trip, signals within {window:.2f} s: "
          f"{failed} failed, {time.monotonic() - started:.0f} s")
    if failed:
        print(f"failed trials kept under {keep}")
        sys.exit(1)


if __name__ == "__main__":
    main()
