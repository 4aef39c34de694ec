#!/usr/bin/env python3
"""The "Summary" section of bench/RESULTS.md, from the data the bench scripts leave in
target/bench-data (bench/run calls it last):

    summary.py DATA_DIR > summary.md

Every row is one headline figure next to a baseline measured in the same run and the ratio
ours ÷ baseline; a figure whose data is missing (stage not run) is shown as such.
"""
import json
import os
import re
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results import machine_line  # noqa: E402

d = sys.argv[1]


def load(path):
    p = os.path.join(d, path)
    try:
        return json.load(open(p))
    except (OSError, ValueError):
        return None


def ns(v):
    """A duration in nanoseconds, readable."""
    if v is None:
        return "—"
    for unit, k in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if v >= k:
            return f"{v / k:.2f} {unit}" if v / k < 100 else f"{v / k:.1f} {unit}"
    return f"{v:.0f} ns"


def parse_dur(text):
    m = re.match(r"([\d.]+)\s*(ns|µs|us|ms|s)", text.strip())
    if not m:
        return None
    return float(m.group(1)) * {"ns": 1, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}[m.group(2)]


rows = []


def row(figure, ours, base, ratio, base_what):
    rows.append((figure, ours, base, ratio, base_what))


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    r = a / b
    if r < 0.01:
        return f"1 / {1 / r:,.0f}"
    return f"{r:.3f}" if r < 1 else f"{r:.2f}" if r < 100 else f"{r:,.0f}"


missing = []

# Gateway (run-gateway)
gw = {n: load(f"gateway/{n}.json") for n in ("direct", "bare_proxy", "gw_valid", "gw_invalid")}
if all(gw.values()):
    dr, va, inv = gw["direct"], gw["gw_valid"], gw["gw_invalid"]
    row("gateway, valid key: req/s (p99)", f"**{va['rps']:,.0f}** ({va['p99_ms']:.2f} ms)",
        f"{dr['rps']:,.0f} ({dr['p99_ms']:.2f} ms)", ratio(va["rps"], dr["rps"]),
        f"straight to the upstream, {dr['conns']} connections")
    row("gateway, unknown key (401): req/s", f"{inv['rps']:,.0f}", f"{va['rps']:,.0f}",
        ratio(inv["rps"], va["rps"]), "the gateway with a valid key")
else:
    missing.append("gateway")
auth = load("gateway/auth-summary.md.json")
if auth:
    sha = auth["auth/sha256_of_key"]["median_ns"]
    for k, what in (("auth/valid_user_key", "auth decision, valid key"),
                    ("auth/unknown_key", "auth decision, unknown key")):
        row(what, f"**{ns(auth[k]['median_ns'])}**", ns(sha), ratio(auth[k]["median_ns"], sha),
            "SHA-256 of the key alone")

# Store (run-store)
store_md = os.path.join(d, "summary.md")
if os.path.exists(store_md):
    cells = {}
    for line in open(store_md):
        parts = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(parts) >= 4 and "/" in parts[1]:
            cells[parts[0]] = (parse_dur(parts[1].split("/")[0]), parse_dur(parts[3].split("/")[0]))
    for n in (1000, 10000, 100000):
        ours, base = cells.get(f"issue, {n} keys, excluding fsync", (None, None))
        row(f"issue latency, {n:,} keys (excluding fsync)", f"**{ns(ours)}**", ns(base),
            ratio(ours, base), "the reference's algorithm (read, parse, render all, rename)")
    for n in (1000, 10000, 100000):
        ours, base = cells.get(f"load, {n} keys (fresh FileStore)", (None, None))
        row(f"store load, {n:,} keys", f"**{ns(ours)}**", ns(base), ratio(ours, base),
            "generic JSON parse + hydration (the reference's load)")
    key = next((k for k in cells if k.startswith("events --limit 50, ") and k.endswith("lines")
                and "100 lines" not in k), None)
    if key:
        ours, base = cells[key]
        row(f"events tail, {key.split(', ')[1]} (in-process)", f"**{ns(ours)}**", ns(base),
            ratio(ours, base), "read and parse every line, keep the last 50")
else:
    missing.append("store")
hf = load("hyperfine-events.json")
if hf:
    res = {r["command"]: r["median"] for r in hf["results"]}
    big = res.get("events --limit 50, 1M-line log")
    tail = res.get("tail -n 50, 1M-line log (baseline)")
    if big and tail:
        row("events tail, 1M lines, `xai-keys events --limit 50` process",
            f"**{ns(big * 1e9)}**", ns(tail * 1e9), ratio(big, tail), "`tail -n 50` of the same log")

# Propagation (run-gateway b)
prop = load("gateway/propagation.json")
if prop:
    p, rt = prop["revoke_exit_to_refused"], prop["revoke_cli_runtime"]
    for q in ("p50", "p99"):
        row(f"revocation propagation {q}: CLI exit → refused", f"**{p[q + '_ms']:.1f} ms**",
            f"{rt[q + '_ms']:.1f} ms", ratio(p[q + "_ms"], rt[q + "_ms"]),
            f"the `xai-keys revoke` process's own run time ({q})")

# Telemetry (run-telemetry a)
ev = load("telemetry/events.json")
if ev:
    b, one = ev["baseline_parse"], ev["pipeline_one_sink"]
    row("webhook/security-event throughput, one sink: lines/s", f"**{one['lines_per_sec']:,.0f}**",
        f"{b['lines_per_sec']:,.0f}", ratio(one["lines_per_sec"], b["lines_per_sec"]),
        "the log follower alone parsing the same lines")
else:
    missing.append("telemetry")

# Peer (run-peer)
peer = load("peer/criterion.md.json")
if peer:
    sha = peer["peer/sha256_of_body"]["median_ns"]
    for k, what in (("peer/sign", "peer signing (300-byte body)"),
                    ("peer/verify_fresh", "peer verification (300-byte body)")):
        row(what, f"**{ns(peer[k]['median_ns'])}**", ns(sha), ratio(peer[k]["median_ns"], sha),
            "SHA-256 of the body alone")
    runs = [load(f"peer/{n}{i}.json") for n in ("legacy", "signed") for i in (1, 2)]
    leg = [r["rps"] for r in runs if r and r["path"] == "legacy"]
    sig = [r["rps"] for r in runs if r and r["path"] == "signed"]
    if leg and sig:
        lm, sm = sum(leg) / len(leg), sum(sig) / len(sig)
        row("signed gossip via egress + ingress: req/s", f"{sm:,.0f}", f"{lm:,.0f}", ratio(sm, lm),
            "legacy `X-API-Key` peer requests")
else:
    missing.append("peer")

# Memory (run-memory)
mem = load("memory/summary.json")
if mem:
    row(f"memory per key, {mem['keys']:,} keys (gateway RSS after start-up)",
        f"**{mem['bytes_per_key']:,.0f} B**", f"{mem['store_bytes_per_key']:.0f} B",
        ratio(mem["bytes_per_key"], mem["store_bytes_per_key"]), "the store file's bytes per key")
    row(f"memory per key, {mem['keys']:,} keys, after one reload",
        f"{mem['bytes_per_key_after_reload']:,.0f} B", f"{mem['store_bytes_per_key']:.0f} B",
        ratio(mem["bytes_per_key_after_reload"], mem["store_bytes_per_key"]),
        "the store file's bytes per key")
else:
    missing.append("memory")

# Lockdown (run-lockdown)
ld = load("lockdown/summary.json")
if ld:
    for k, what in (("lockdown_on", "lockdown on → /admin/* fenced on a running gateway, p50 (p99)"),
                    ("lockdown_off", "lockdown off → /admin/* served again, p50 (p99)")):
        row(what, f"**{ld[k]['p50_ms']} ms** ({ld[k]['p99_ms']} ms)",
            f"{ld['revoke']['p50_ms']} ms ({ld['revoke']['p99_ms']} ms)",
            ratio(ld[k]["p50_ms"], ld["revoke"]["p50_ms"]),
            "revoke → that key refused, same gateway")
else:
    missing.append("lockdown")

# Fleet (run-fleet): the etcd store against a file store, same run, same keys
fl = load("fleet/summary.json")
if fl:
    t = fl["throughput"]
    for k, what in (("valid", "valid key"), ("invalid", "unknown key (401)")):
        e, f = t[f"etcd_{k}"], t[f"file_{k}"]
        row(f"gateway on etcd, {what}: req/s (p99)", f"**{e['rps']:,.0f}** ({e['p99_ms']:.2f} ms)",
            f"{f['rps']:,.0f} ({f['p99_ms']:.2f} ms)", ratio(e["rps"], f["rps"]),
            f"a gateway on a file store, same {fl['fixture']['keys']:,} keys, {fl['conns']} connections")
    pe, pf = fl["propagation"]["etcd"], fl["propagation"]["file"]
    for what, e, f, base_what in (
            ("etcd: API revoke on one gateway → refused by the 2 others, p50 (p99)",
             pe["api_revoke_to_refused_ms"]["all"], pf["api_revoke_to_refused_ms"]["all"],
             "two gateways on one file store (poll 50 ms)"),
            ("etcd: CLI revoke exit → refused by all 3 gateways, p50 (p99)",
             pe["cli_exit_to_refused_ms"]["all"], pf["cli_exit_to_refused_ms"]["all"],
             "CLI revoke on a file store → its 2 gateways"),
            ("etcd: admin issue (POST /admin/api-keys), p50 (p99)",
             pe["issue_ms"], pf["issue_ms"], "the same on a gateway on a file store")):
        row(what, f"**{e['p50_ms']:.1f} ms** ({e['p99_ms']:.1f} ms)",
            f"{f['p50_ms']:.1f} ms ({f['p99_ms']:.1f} ms)", ratio(e["p50_ms"], f["p50_ms"]), base_what)
else:
    missing.append("fleet")

meta = load("run/meta.json") or {}
end = load("run/end.json") or {}
stages = []
try:
    for line in open(os.path.join(d, "run/stages.jsonl")):
        stages.append(json.loads(line))
except OSError:
    pass

out = ["## Summary", ""]
if meta:
    out.append(f"Measured {meta['date']} by `bench/run`{' (BENCH_QUICK=1: a smoke run, short measurements)' if end.get('quick') else ''} "
               f"on {machine_line(meta)}. Wall time **{end.get('total_s', 0) // 60} min "
               f"{end.get('total_s', 0) % 60} s** including the build; load average before "
               f"{' / '.join(meta['load'])}, after {end.get('load_after', '?')}.")
    try:
        if float(meta["load"][0]) > 1.0:
            out.append("")
            out.append(f"**The machine was busy** (load average {meta['load'][0]} before the run, "
                       "on 2 cores): other processes shared the cores, so these figures are "
                       "noisy; re-run on a quiet machine for final figures.")
    except (KeyError, ValueError, IndexError):
        pass
out.append("")
out.append("| figure | ours | baseline (same run) | ours ÷ baseline | baseline is |")
out.append("|---|---|---|---|---|")
for r in rows:
    out.append("| " + " | ".join(r) + " |")
soak = load("soak/summary.json")
if soak:
    pc = soak["propagation_cli_ms"]
    out.append("")
    out.append(f"Soak (`bench/soak`, last run): {soak['seconds']:.0f} s, {soak['requests']:,} requests, "
               f"{soak['mutations']:,} changes, wrong answers {soak['wrong']}, 5xx {soak['by_status']['5xx']}; "
               f"CLI revocation ack → refusal p50 {pc['p50']:.1f} / p99 {pc['p99']:.1f} ms; "
               f"RSS {soak['rss_kib']['start'] / 1024:.1f} → {soak['rss_kib']['end'] / 1024:.1f} MiB, "
               f"fds {soak['fds']['start']} → {soak['fds']['end']}.")
if missing:
    out.append("")
    out.append("No data (stage not run): " + ", ".join(missing) + ".")
if stages:
    out.append("")
    out.append("Stages (wall time): " + ", ".join(f"{s['stage']} {s['seconds']} s" for s in stages) + ".")
print("\n".join(out))
