"""What every bench result records about where it ran: the CPU's name and class (the kernels
skyscore picks differ by class), the core count and the commit measured (marked when the
tracked files other than results and Markdown differ from it). Imported by the bench scripts' result writers."""
import os
import subprocess


def facts() -> dict:
    cpuinfo = open("/proc/cpuinfo").read()
    name = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")), "unknown")
    cpu_class = "avx512bf16" if "avx512_bf16" in cpuinfo else "avx512" if "avx512f" in cpuinfo else "avx2"
    git = lambda *args: subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD")
    # Results and prose do not change what runs.
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results", ":!*.md")
    return {
        "cpu": name,
        "cpu_class": cpu_class,
        "cores": os.cpu_count(),
        "commit": commit + ("+uncommitted" if dirty else ""),
    }
