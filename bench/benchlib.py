# SPDX-License-Identifier: MIT
"""What the Python benchmarks share: kcached from a meson build directory with
the test harness of tests/conftest.py (real redis-server and kcached
processes), a one-line description of the machine, and compiling the C tools
of bench/."""

import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CC = ["cc", "-std=c11", "-O2", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror"]


def use_build(build, script):
    """The kcached of build (relative to the repository, or absolute), made the
    one tests/conftest.py starts; tests/ goes on sys.path for `from conftest
    import ...`. Exits with a message if it is not built."""
    build = build if os.path.isabs(build) else os.path.join(ROOT, build)
    kcached = os.path.join(build, "daemon", "kcached")
    if not os.path.exists(kcached):
        sys.exit(f"{script}: {kcached} not found (build first: ninja -C {build} daemon/kcached)")
    os.environ["KCACHED"] = kcached
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    return kcached


def version(kcached):
    return subprocess.run([kcached, "--version"], capture_output=True, text=True).stdout.strip()


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"nproc {os.cpu_count()}, {model}, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def build_tool(src, out, *extra):
    """Compiles bench/<src> to out (warnings are errors); returns out."""
    subprocess.run(CC + ["-o", out, os.path.join(ROOT, "bench", src)] + list(extra), check=True)
    return out


def kcache_bench(tmp):
    """bench/kcache-bench.c, built into tmp."""
    return build_tool("kcache-bench.c", os.path.join(tmp, "kcache-bench"), "-pthread", "-lm")
