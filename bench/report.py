"""Merges the benchmark binaries' outputs (bench/results/parts/*.json) into
bench/results/latest.json, a Markdown table (bench/results/latest.md, also put into the README
between its bench markers) and PNG plots: create→Running latency CDFs beside virsh's, and
Converge's RSS per running VM against the VM count.
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

parts = {}
for path in sorted(glob.glob(os.path.join(results, "parts", "*.json"))):
    doc = json.load(open(path))
    parts[doc["bench"]] = doc


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


machine = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "commit": sh("git rev-parse --short HEAD"),
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
    base_text = f"{num(base['value'], f['unit'])} ({base['what']})" if base else "–"
    ratio = f"{f['ratio']:.2f}×" if f.get("ratio") is not None else "–"
    met = {True: "yes", False: "**no**", None: "–"}[f["met"]]
    rows.append(f"| {f['id']} | {f['what']} | {num(f['value'], f['unit'])} | {base_text} | {ratio} | {f['goal'] or '–'} | {met} |")
header = (f"Measured {machine['date']} at {machine['commit']} on {machine['cpus']} cores ({machine['cpu']}), "
          f"{machine['memory_gib']} GiB, hypervisor {machine['libvirt'] or '?'}; `bench/run` made it.")
notes = "\n".join(f"- {n}" for n in latest["notes"])
table = f"{header}\n\n" + "\n".join(rows) + (f"\n\n{notes}" if notes else "") + "\n"
open(os.path.join(results, "latest.md"), "w").write(table)

guest = parts.get("guest-bench", {}).get("series", {})
counts = sorted({int(k.split(".")[1]) for k in guest if k.startswith("P1.") and k.endswith(".converge")})
if counts:
    fig, axes = plt.subplots(1, len(counts), figsize=(5 * len(counts), 4), squeeze=False)
    for ax, n in zip(axes[0], counts):
        for side, style in (("converge", "-"), ("virsh", "--")):
            data = sorted(guest.get(f"P1.{n}.{side}", []))
            if data:
                ax.step(data, [(i + 1) / len(data) for i in range(len(data))], style, where="post",
                        label="Converge (API → Running)" if side == "converge" else "virsh create (same XML)")
        ax.set_title(f"P1: {n} VMIs, 100 ms apart")
        ax.set_xlabel("create → Running (s)")
        ax.set_ylabel("fraction of VMIs")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(results, "p1_create_to_running_cdf.png"), dpi=110)
rss = guest.get("P2.rss_kib")
if rss:
    idle = rss[0][1]
    points = [(n, (kib - idle) / n / 1024) for n, kib in rss if n > 0]
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot([p[0] for p in points], [p[1] for p in points], "o-", label="RSS per running VM over idle")
    ax1.axhline(2.0, color="red", linestyle=":", label="goal: 2 MiB per VM")
    ax1.set_xlabel("running VMs")
    ax1.set_ylabel("MiB per VM")
    ax2 = ax1.twinx()
    ax2.plot([n for n, _ in rss], [kib / 1024 for _, kib in rss], "s--", color="gray", label="total RSS")
    ax2.set_ylabel("converge RSS (MiB)")
    lines = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax1.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax1.legend(lines, labels, loc="upper right")
    ax1.set_title("P2: Converge's own memory (QEMU excluded)")
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
