"""Merges the benchmark binaries' outputs (bench/results/parts/*.json) into
bench/results/latest.json, a Markdown table (bench/results/latest.md, also put into the README
between its bench markers) and PNG plots: create→Running latency CDFs beside each baseline's,
memory per running VM against the VM count, and the watch fan-out CDF. Every part must come from
the same run (bench/run gives them one id); a run that lost a part writes a report labelled partial.
    python3 bench/report.py [RESULTS_DIR] [README]"""
import datetime
import glob
import json
import os
import platform
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results = sys.argv[1] if len(sys.argv) > 1 else "bench/results"
readme = sys.argv[2] if len(sys.argv) > 2 else "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

# The benchmarks one full run makes; a report without one of them is labelled partial.
EXPECTED = ["api-bench", "guest-bench", "cluster-bench", "import-bench", "migration-bench"]
parts = {}
for path in sorted(glob.glob(os.path.join(results, "parts", "*.json"))):
    doc = json.load(open(path))
    parts[doc["bench"]] = doc
run_ids = {doc.get("run") for doc in parts.values()}
if len(run_ids) > 1:
    sys.exit(f"report: the parts come from different runs {sorted(map(str, run_ids))}: one run, one report")
missing = [b for b in EXPECTED if b not in parts]


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


# Only code counts: docs edited while a run goes on do not change what it measured.
dirty = sh("git status --porcelain --untracked-files=no -- . ':!bench/results' ':!*.md'")
machine = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "run": next(iter(run_ids), None),
    "commit": sh("git rev-parse --short HEAD") + ("-dirty" if dirty else ""),
    "partial": missing,
    "cpus": os.cpu_count(),
    "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
    "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    "kernel": platform.release(),
    "libvirt": sh("virsh -c qemu:///system version --daemon 2>/dev/null | grep -i 'running hypervisor' | cut -d: -f2").strip(),
}
figures = [f for doc in parts.values() for f in doc["figures"]]
latest = {"machine": machine, "figures": figures, "series": {k: d["series"] for k, d in parts.items()},
          "notes": [n for d in parts.values() for n in d.get("notes", [])]}
json.dump(latest, open(os.path.join(results, "latest.json"), "w"), indent=1)


def num(v, unit):
    if v is None:
        return "–"
    if unit in ("req/s", "MiB/s"):
        return f"{v:,.0f} {unit}"
    if unit == "ms":
        return f"{v:.1f} ms"
    if unit == "s":
        return f"{v:.3f} s"
    return f"{v:.2f} {unit}"


rows = ["| figure | what | Converge | baseline (same run) | ratio | goal | met |",
        "|---|---|---|---|---|---|---|"]
for f in figures:
    base = f["baseline"]
    if base:
        base_text = f"{num(base['value'], f['unit'])} ({base['what']})"
    elif f.get("no_baseline"):
        base_text = f"no baseline: {f['no_baseline']}"
    else:
        sys.exit(f"report: {f['id']} has neither a baseline nor a reason for none")
    ratio = f"{f['ratio']:.2f}×" if f.get("ratio") is not None else "–"
    met = {True: "yes", False: "**no**", None: "–"}[f["met"]]
    rows.append(f"| {f['id']} | {f['what']} | {num(f['value'], f['unit'])} | {base_text} | {ratio} | {f['goal'] or '–'} | {met} |")
header = (f"Measured {machine['date']} at {machine['commit']} on {machine['cpus']} cores ({machine['cpu']}), "
          f"{machine['memory_gib']} GiB, hypervisor {machine['libvirt'] or '?'}; every row from one `bench/run` "
          f"(run {machine['run']}).")
if missing:
    header = f"**Partial report: {', '.join(missing)} did not finish in this run.** " + header
notes = "\n".join(f"- {n}" for n in latest["notes"])

# Where create → Running goes, phase by phase (medians over every VMI of a scale).
phase_rows = []
guest_series = parts.get("guest-bench", {}).get("series", {})
for key in sorted((k for k in guest_series if k.endswith(".phases")), key=lambda k: int(k.split(".")[1])):
    names, ms = guest_series[key]["names"], guest_series[key]["ms"]
    if not phase_rows:
        phase_rows = ["| VMIs | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    med = []
    for i in range(len(names)):
        col = sorted(r[i] for r in ms)
        med.append(f"{col[len(col) // 2]:.1f}" if col else "–")
    phase_rows.append(f"| {key.split('.')[1]} | " + " | ".join(med) + " |")
phases = ("\n\nP1 by phase, median ms per VMI (API → Scheduled and the last column from the client's watch, "
          "the rest from the node agent's `converge::launch` events):\n\n" + "\n".join(phase_rows)) if phase_rows else ""
table = f"{header}\n\n" + "\n".join(rows) + phases + (f"\n\n{notes}" if notes else "") + "\n"
open(os.path.join(results, "latest.md"), "w").write(table)

guest = guest_series
counts = sorted({int(k.split(".")[1]) for k in guest if k.startswith("P1.") and k.endswith(".converge")})
if counts:
    fig, axes = plt.subplots(1, len(counts), figsize=(5 * len(counts), 4), squeeze=False)
    for ax, n in zip(axes[0], counts):
        lines = [("Converge (API → Running)", guest.get(f"P1.{n}.converge", []), "-")]
        prefix = f"P1.{n}.baseline."
        lines += [(k[len(prefix):], v, "--") for k, v in sorted(guest.items()) if k.startswith(prefix)]
        for label, data, style in lines:
            data = sorted(data)
            if data:
                ax.step(data, [(i + 1) / len(data) for i in range(len(data))], style, where="post", label=label)
        ax.set_title(f"P1: {n} VMIs, 100 ms apart")
        ax.set_xlabel("create → Running (s)")
        ax.set_ylabel("fraction of VMIs")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(results, "p1_create_to_running_cdf.png"), dpi=110)
memory = guest.get("P2.memory_kib")
if memory:
    idle = memory[0]
    points = [(m["running"], (m["converge"] + m["daemons"] - idle["converge"] - idle["daemons"]) / m["running"] / 1024,
               m["qemu"] / m["running"] / 1024) for m in memory if m["running"] > 0]
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot([p[0] for p in points], [p[1] for p in points], "o-", label="converge + libvirt daemons, growth per VM")
    ax1.axhline(5.0, color="red", linestyle=":", label="goal: 5 MiB per VM")
    ax1.plot([p[0] for p in points], [p[2] for p in points], "s--", color="gray", label="QEMU's own RSS per VM (beside)")
    ax1.set_xlabel("running VMs")
    ax1.set_ylabel("MiB per VM")
    ax1.legend(loc="upper right", fontsize=8)
    ax1.set_title("P2: memory per running VM")
    ax1.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(results, "p2_rss_per_vm.png"), dpi=110)
api = parts.get("api-bench", {}).get("series", {})
if api.get("P5.watch_ms"):
    fig, ax = plt.subplots(figsize=(6, 4))
    data = sorted(api["P5.watch_ms"])
    ax.step(data, [(i + 1) / len(data) for i in range(len(data))], where="post", label="change → all watchers")
    ax.axvline(50, color="red", linestyle=":", label="goal: 50 ms")
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of rounds")
    ax.set_title("P5: watch fan-out latency")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(results, "p5_watch_fanout_cdf.png"), dpi=110)

if os.path.exists(readme):
    text = open(readme).read()
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        _, after = rest.split(END, 1)
        open(readme, "w").write(f"{before}{BEGIN}\n{table}{END}{after}")
print(table)
