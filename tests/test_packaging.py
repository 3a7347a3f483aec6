# SPDX-License-Identifier: MIT
"""Packaging agrees with the code it packages.

Nothing here can run the artefacts for real (no Kubernetes, no systemd as PID
1, no container engine), so these tests check that the names and paths they
share agree: the k8s example (packaging/k8s/*.yaml) with its INI, the CLI's
probe commands and the Secret; the systemd unit with meson's install paths
and the default sockets; libkcache's exports (kcache.h, libkcache.map, the
built .so, the Debian symbols file); the man pages with the CLI and the
library; the Containerfile with the pod and the binaries' shared libraries.
The ConfigMap's INI is also loaded by the built kcached (`kcached -t -c`).

Environment (tests/meson.build): KCACHED, KCACHE_CLI, LIBKCACHE (built
artefacts), KCACHED_INSTALL_PATH (where meson installs kcached),
KCACHE_UNIT (the unit meson generated), KCACHE_SYSCONFDIR. No Redis needed.
"""

import configparser
import glob
import os
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from conftest import KCACHE_CLI, KCACHED, LIBKCACHE, SRC_ROOT

PKG = os.path.join(SRC_ROOT, "packaging")
K8S = os.path.join(PKG, "k8s")
MAN = os.path.join(PKG, "man")
DEBIAN = os.path.join(PKG, "debian")
UNIT_TEMPLATE = os.path.join(PKG, "systemd", "kcached.service.in")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# --- k8s ---------------------------------------------------------------------


def k8s_objects():
    """Every object of packaging/k8s/*.yaml, by (kind, name)."""
    objs = {}
    files = sorted(glob.glob(os.path.join(K8S, "*.yaml")))
    assert files, "no packaging/k8s/*.yaml"
    for path in files:
        for doc in yaml.safe_load_all(read(path)):
            if doc is None:
                continue
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objs, f"{key} defined twice"
            objs[key] = doc
    return objs


def the(objs, kind):
    found = [o for (k, _), o in objs.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def parse_ini(text):
    # kcached's rules: whole-line ';' or '#' comments, inline ' ;' comments.
    cp = configparser.ConfigParser(
        comment_prefixes=(";", "#"), inline_comment_prefixes=(";",), interpolation=None,
        strict=True)
    cp.optionxform = str  # keys are case-sensitive
    cp.read_string(text)
    return cp


@pytest.fixture(scope="module")
def k8s():
    objs = k8s_objects()
    pod = the(objs, "Pod")
    spec = pod["spec"]
    sidecars = [c for c in spec.get("initContainers", []) if c["name"] == "kcached"]
    assert len(sidecars) == 1, "the pod needs one init container named kcached"
    apps = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    # The INI comes from the ConfigMap the pod mounts.
    cm_vol = [v for v in volumes.values() if "configMap" in v]
    assert len(cm_vol) == 1
    cm = objs.get(("ConfigMap", cm_vol[0]["configMap"]["name"]))
    assert cm is not None, f"ConfigMap {cm_vol[0]['configMap']['name']} is not in packaging/k8s"
    return {"objs": objs, "pod": pod, "spec": spec, "sidecar": sidecars[0], "apps": apps,
            "volumes": volumes, "cm_volume": cm_vol[0], "cm": cm}


def mount_of(container, path, volumes):
    """(volume, subpath) of the mount holding path in container, longest mount first."""
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best[0]):
                best = (mp, m)
    if best is None:
        return None, None
    mp, m = best
    return volumes[m["name"]], os.path.relpath(path, mp)


def cm_ini(k8s):
    items = k8s["cm_volume"]["configMap"].get("items")
    key = items[0]["key"] if items else "kcached.ini"
    return parse_ini(k8s["cm"]["data"][key])


def test_sidecar_is_a_native_sidecar(k8s):
    sc = k8s["sidecar"]
    assert sc.get("restartPolicy") == "Always", "native sidecar: restartPolicy Always"
    # Not a regular container: it starts before the app and stops after it.
    assert all(c["name"] != "kcached" for c in k8s["apps"])


def test_config_path_is_the_configmap(k8s):
    sc = k8s["sidecar"]
    args = sc.get("args", []) + sc.get("command", [])
    assert "-c" in args
    path = args[args.index("-c") + 1]
    vol, rel = mount_of(sc, path, k8s["volumes"])
    assert vol is k8s["cm_volume"], f"{path} is not in the ConfigMap mount"
    items = vol["configMap"].get("items")
    if items:
        assert rel in [i["path"] for i in items]
        assert all(i["key"] in k8s["cm"]["data"] for i in items)
    else:
        assert rel in k8s["cm"]["data"]


def test_client_socket_shared_through_emptydir(k8s):
    ini = cm_ini(k8s)
    sock = ini["server"]["socket"]
    vol, _ = mount_of(k8s["sidecar"], sock, k8s["volumes"])
    assert vol is not None and "emptyDir" in vol, f"{sock} must be in an emptyDir in the sidecar"
    for app in k8s["apps"]:
        avol, _ = mount_of(app, sock, k8s["volumes"])
        assert avol is vol, f"{app['name']} does not mount {sock} from the sidecar's emptyDir"
        env = {e["name"]: e.get("value") for e in app.get("env", [])}
        assert env.get("KCACHE_SOCKET") == sock, f"{app['name']}: KCACHE_SOCKET must be {sock}"
    # The app reaches it through the group bits: same group, mode 0660.
    mode = int(ini["server"].get("socket_mode", "0660"), 8)
    assert mode & 0o060 == 0o060 and mode & 0o007 == 0
    group = ini["server"].get("socket_group", "")
    pod_group = k8s["spec"]["securityContext"].get("runAsGroup")
    if group:
        assert int(group) == pod_group
    uids = ini["server"].get("allowed_uids", "")
    if uids:
        app_uids = {app.get("securityContext", {}).get("runAsUser") for app in k8s["apps"]}
        assert app_uids <= {int(u) for u in uids.split(",")}, "allowed_uids must admit the app"


def probe_argv(probe):
    cmd = probe["exec"]["command"]
    if cmd[:2] == ["/bin/sh", "-c"]:
        # "kcache admin ... health ready; test $? -le 1": the first command.
        return shlex.split(cmd[2].split(";")[0])
    return cmd


def test_probes_ask_the_admin_socket_of_the_ini(k8s):
    ini = cm_ini(k8s)
    admin = ini["admin"]["socket"]
    sc = k8s["sidecar"]
    want = {"livenessProbe": "live", "readinessProbe": "ready", "startupProbe": "live"}
    for name, what in want.items():
        if name == "startupProbe" and name not in sc:
            continue
        argv = probe_argv(sc[name])
        assert argv == ["kcache", "admin", "-a", admin, "health", what], f"{name}: {argv}"
    # The readiness wrapper accepts exactly 0 (ok) and 1 (degraded).
    ready = sc["readinessProbe"]["exec"]["command"]
    if ready[:2] == ["/bin/sh", "-c"]:
        assert ready[2].split(";", 1)[1].strip() == "test $? -le 1"
    # The admin socket's directory is the sidecar's alone.
    vol, _ = mount_of(sc, admin, k8s["volumes"])
    assert vol is not None and "emptyDir" in vol
    for app in k8s["apps"]:
        avol, _ = mount_of(app, admin, k8s["volumes"])
        assert avol is not vol, f"{app['name']} must not reach the admin socket"


def test_probe_commands_are_what_the_cli_accepts(k8s):
    """`kcache admin -a PATH health live|ready` parses: with no kcached there, exit 3."""
    sc = k8s["sidecar"]
    for name in ("livenessProbe", "readinessProbe"):
        argv = probe_argv(sc[name])
        argv = [KCACHE_CLI] + argv[1:]
        argv[argv.index("-a") + 1] = "/nonexistent/kcached-admin.sock"
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert r.returncode == 3, (argv, r.returncode, r.stderr)
        assert "usage" not in r.stderr, r.stderr


def test_password_file_is_the_secret(k8s):
    ini = cm_ini(k8s)
    pw = ini["redis"]["password_file"]
    assert "password" not in ini["redis"], "the password comes from the Secret file only"
    vol, rel = mount_of(k8s["sidecar"], pw, k8s["volumes"])
    assert vol is not None and "secret" in vol, f"{pw} is not in a Secret mount"
    sec = vol["secret"]
    secret = k8s["objs"].get(("Secret", sec["secretName"]))
    assert secret is not None, f"Secret {sec['secretName']} is not in packaging/k8s"
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    items = {i["path"]: i["key"] for i in sec.get("items", [])}
    key = items.get(rel, rel)
    assert key in keys, f"{pw}: key {key} not in Secret {sec['secretName']}"
    assert sec.get("defaultMode", 0o644) & 0o007 == 0, "the password file is not world-readable"
    for app in k8s["apps"]:
        assert mount_of(app, pw, k8s["volumes"])[0] is None, "only kcached reads the password"
    for c in [k8s["sidecar"]] + k8s["apps"]:
        assert not any("PASSWORD" in e["name"] for e in c.get("env", []))


def test_runs_as_non_root(k8s):
    psc = k8s["spec"]["securityContext"]
    assert psc.get("runAsNonRoot") is True
    for c in k8s["spec"].get("initContainers", []) + k8s["apps"]:
        sc = c.get("securityContext", {})
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        assert uid is not None and uid != 0, f"{c['name']}: runAsUser"
        assert sc.get("allowPrivilegeEscalation") is False, c["name"]
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], c["name"]


def test_configmap_ini_loads(k8s, tmp_path):
    """kcached -t -c accepts the ConfigMap's INI (paths moved into a temp dir)."""
    text = k8s["cm"]["data"]["kcached.ini"]
    ini = cm_ini(k8s)
    moves = {
        ini["server"]["socket"]: str(tmp_path / "run" / "kcached.sock"),
        ini["admin"]["socket"]: str(tmp_path / "admin" / "kcached-admin.sock"),
        ini["redis"]["password_file"]: str(tmp_path / "redis-password"),
    }
    for old, new in moves.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    (tmp_path / "redis-password").write_text("change-me\n")
    os.chmod(tmp_path / "redis-password", 0o600)
    path = tmp_path / "kcached.ini"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    r = subprocess.run([KCACHED, "-t", "-c", str(path)], capture_output=True, text=True,
                       timeout=30, env=env)
    assert r.returncode == 0, r.stderr
    dump = parse_ini(r.stdout)
    assert dump["server"]["socket"] == moves[ini["server"]["socket"]]
    assert dump["redis"]["password_file"] == moves[ini["redis"]["password_file"]]
    assert dump["health"]["fail_open"] in ("yes", "true", "1")


def containerfile():
    text = read(os.path.join(PKG, "Containerfile"))
    # Join continuation lines.
    return re.sub(r"\\\n", " ", text)


def test_containerfile_agrees_with_the_pod(k8s):
    text = containerfile()
    final = text[text.rindex("\nFROM "):]
    assert "debian:12-slim" in final.splitlines()[1]
    entry = re.search(r'^ENTRYPOINT (\[.*\])$', final, re.M)
    assert entry and yaml.safe_load(entry.group(1)) == ["/usr/sbin/kcached"]
    user = re.search(r"^USER (\d+):(\d+)$", final, re.M)
    assert user, "USER uid:gid, numeric (runAsNonRoot needs a numeric user)"
    uid, gid = int(user.group(1)), int(user.group(2))
    sc = k8s["sidecar"].get("securityContext", {})
    psc = k8s["spec"]["securityContext"]
    assert sc.get("runAsUser", psc.get("runAsUser")) == uid
    assert sc.get("runAsGroup", psc.get("runAsGroup")) == gid


def project_version():
    top = read(os.path.join(SRC_ROOT, "meson.build"))
    m = re.search(r"^project\('kcache',.*?version: '([^']+)'", top, re.S | re.M)
    assert m
    return m.group(1)


def test_versions_agree(k8s):
    version = project_version()
    changelog = read(os.path.join(DEBIAN, "changelog")).splitlines()[0]
    assert changelog.startswith(f"kcache ({version}"), changelog
    image = k8s["sidecar"]["image"]
    assert image.rsplit(":", 1)[1] == version, image
    assert f"kcache:{version}" in read(os.path.join(PKG, "Containerfile"))


def test_containerfile_copies_every_subdir():
    """The build stage copies the directories meson reads (not a whole working tree)."""
    text = containerfile()
    build = text[:text.rindex("\nFROM ")]
    copied = set(re.findall(r"^COPY (\S+)/ \1/$", build, re.M))
    subdirs = set(re.findall(r"^subdir\('([^']+)'\)", read(os.path.join(SRC_ROOT, "meson.build")),
                             re.M))
    assert subdirs <= copied, f"not copied: {subdirs - copied}"
    # packaging/meson.build installs ../conf/kcached.ini.
    assert "conf" in copied


def runtime_packages():
    final = containerfile()
    final = final[final.rindex("\nFROM "):]
    m = re.search(r"apt-get install -y --no-install-recommends ([^&]*)&&", final)
    assert m, "the final stage installs its libraries with apt-get"
    return set(m.group(1).split())


def test_containerfile_installs_every_needed_library():
    if shutil.which("dpkg") is None or shutil.which("ldd") is None:
        pytest.skip("needs dpkg and ldd")
    pkgs = runtime_packages()
    for binary in (KCACHED, KCACHE_CLI):
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
        if re.search(r"\blib(asan|ubsan|lsan|tsan)\.so", out):
            pytest.skip("a sanitizer build links more than the image's kcached does")
        for line in out.splitlines():
            m = re.match(r"\s*(\S+) => (/\S+)", line)
            if not m:
                continue
            soname, path = m.groups()
            if soname.startswith("libkcache.so"):
                continue  # ours, copied from the build stage
            r = subprocess.run(["dpkg", "-S", os.path.realpath(path)], capture_output=True,
                               text=True)
            if r.returncode != 0:
                r = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
            assert r.returncode == 0, f"{soname}: no package owns {path}"
            pkg = r.stdout.split(":")[0]
            if pkg in ("libc6", "libgcc-s1"):
                continue  # in every Debian image
            assert pkg in pkgs, f"{binary} needs {soname} from {pkg}: add it to the Containerfile"


# --- systemd -----------------------------------------------------------------


def unit_entries(text):
    """{key: [values]} of a unit file, sections merged (keys are distinct here)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def example_defaults():
    """Defaults from conf/kcached.ini ("; key = value" lines), by (section, key)."""
    out, section = {}, None
    for line in read(os.path.join(SRC_ROOT, "conf", "kcached.ini")).splitlines():
        m = re.match(r"^\[(\w+)\]$", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^; ([a-z_]+) =(?: (.*))?$", line)
        if m and section:
            out[(section, m.group(1))] = m.group(2) or ""
    return out


@pytest.fixture(scope="module")
def unit():
    path = os.environ.get("KCACHE_UNIT")
    if not path:
        pytest.skip("KCACHE_UNIT not set (run through meson test)")
    return unit_entries(read(path))


def test_unit_execstart_is_meson_install_path(unit):
    want = os.environ["KCACHED_INSTALL_PATH"]
    argv = shlex.split(unit["ExecStart"][0])
    assert argv[0] == want
    assert argv[1:] == ["-c", os.path.join(os.environ["KCACHE_SYSCONFDIR"], "kcache",
                                           "kcached.ini")]
    template = unit_entries(read(UNIT_TEMPLATE))
    assert template["ExecStart"] == ["@sbindir@/kcached -c @sysconfdir@/kcache/kcached.ini"]


def test_unit_reload_sends_sighup(unit):
    argv = shlex.split(unit["ExecReload"][0])
    assert argv[0] in ("/bin/kill", "/usr/bin/kill")
    assert argv[1:] == ["-HUP", "$MAINPID"]


def test_unit_type_user_and_runtime_dir(unit):
    assert unit["Type"] == ["notify"]
    assert unit["RuntimeDirectory"] == ["kcache"]
    d = example_defaults()
    # Both default sockets live in the RuntimeDirectory.
    for key in (("server", "socket"), ("admin", "socket")):
        assert os.path.dirname(d[key]) == "/run/kcache", key
    # The user is the one sysusers.d creates, and the Debian copy is the same file.
    sysusers = read(os.path.join(PKG, "systemd", "kcached.sysusers"))
    assert read(os.path.join(DEBIAN, "kcached.sysusers")) == sysusers
    users = [ln.split()[1] for ln in sysusers.splitlines() if ln.startswith("u ")]
    assert unit["User"] == users and unit["Group"] == users


def test_unit_hardening(unit):
    want = {
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter": "@system-service", "MemoryDenyWriteExecute": "yes",
    }
    for k, v in want.items():
        assert unit.get(k) == [v], f"{k}={unit.get(k)}"


def test_unit_nofile_fits_max_clients(unit):
    """kcached refuses to start below max_clients + pool_size + 16 replicas' pools + 64."""
    d = example_defaults()
    need = (int(d[("server", "max_clients")]) + int(d[("redis", "pool_size")])
            + 16 * int(d[("redis", "replica_pool_size")]) + 64)
    nofile = int(unit["LimitNOFILE"][0].split(":")[-1])
    assert nofile >= need, f"LimitNOFILE={nofile} < {need}"
    r = subprocess.run(["prlimit", f"--nofile={nofile}:{nofile}", KCACHED, "-t"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


# --- libkcache exports ---------------------------------------------------------


def header_api():
    text = re.sub(r"/\*.*?\*/", "", read(os.path.join(SRC_ROOT, "client", "kcache.h")), flags=re.S)
    return set(re.findall(r"KCACHE_API[^;(]*?\b(kcache_\w+)\s*\(", text))


def map_symbols():
    text = read(os.path.join(SRC_ROOT, "client", "libkcache.map"))
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    nodes = re.findall(r"(\w[\w.]*)\s*\{\s*global:(.*?)local:", text, re.S)
    assert len(nodes) == 1, "one version node"
    node, body = nodes[0]
    return node, set(re.findall(r"(kcache_\w+);", body))


def test_exports_agree():
    api = header_api()
    node, mapped = map_symbols()
    assert api, "no KCACHE_API function found in kcache.h"
    assert mapped == api, f"map vs header: {mapped ^ api}"
    out = subprocess.run(["nm", "-D", "--defined-only", LIBKCACHE], capture_output=True,
                         text=True, check=True).stdout
    exported = {}
    for line in out.splitlines():
        name = line.split()[-1]
        sym, _, ver = name.partition("@@")
        exported[sym] = ver
    assert exported.pop(node, None) is not None, f"{node} is not defined in the .so"
    assert set(exported) == api, f".so vs header: {set(exported) ^ api}"
    assert set(exported.values()) == {node}
    syms = {}
    for line in read(os.path.join(DEBIAN, "libkcache1.symbols")).splitlines():
        m = re.match(r"^ (\S+)@(\S+) ", line)
        if m:
            syms[m.group(1)] = m.group(2)
    assert syms.pop(node, None) == node
    assert set(syms) == api, f"debian symbols vs header: {set(syms) ^ api}"
    assert set(syms.values()) == {node}


def test_soname():
    out = subprocess.run(["readelf", "-d", LIBKCACHE], capture_output=True, text=True,
                         check=True).stdout
    assert "Library soname: [libkcache.so.1]" in out
    control = read(os.path.join(DEBIAN, "control"))
    assert "\nPackage: libkcache1\n" in control
    assert read(os.path.join(DEBIAN, "libkcache1.symbols")).startswith("libkcache.so.1 libkcache1 ")


# --- man pages ---------------------------------------------------------------


def man(name):
    return read(os.path.join(MAN, name))


def test_kcache_1_lists_every_command_and_option():
    usage = subprocess.run([KCACHE_CLI, "--help"], capture_output=True, text=True,
                           check=True).stdout
    commands = re.findall(r"^  ([a-z][a-z-]*)(?: |$)", usage.split("\ncommands:\n", 1)[1], re.M)
    assert "admin" in commands and "get" in commands
    page = man("kcache.1")
    for c in commands:
        assert re.search(rf"^\.It Cm {re.escape(c)}(?: |$)", page, re.M), f"kcache.1 lacks {c}"
    for opt in re.findall(r"^  -(\w), --([a-z-]+)", usage, re.M):
        assert f".It Fl {opt[0]} " in page and f"Fl Fl {opt[1]}" in page, opt


def test_kcached_8_lists_every_option():
    usage = subprocess.run([KCACHED, "--help"], capture_output=True, text=True,
                           check=True).stdout
    page = man("kcached.8")
    opts = re.findall(r"^  -(\w), --([a-z-]+)", usage, re.M)
    assert opts
    for short, long in opts:
        assert f".It Fl {short}" in page and f"Fl Fl {long}" in page, (short, long)


def test_libkcache_3_lists_every_function():
    page = man("libkcache.3")
    listed = set(re.findall(r"^\.Fo (kcache_\w+)$", page, re.M))
    assert listed == header_api(), listed ^ header_api()


def test_every_page_installed_and_packaged():
    pages = sorted(os.path.basename(p) for p in glob.glob(os.path.join(MAN, "*.[0-9]")))
    assert pages == ["kcache.1", "kcached.8", "kcached.ini.5", "libkcache.3"]
    build = read(os.path.join(PKG, "meson.build"))
    installs = "".join(read(p) for p in glob.glob(os.path.join(DEBIAN, "*.install")))
    for p in pages:
        assert f"'man/{p}'" in build, f"packaging/meson.build does not install {p}"
        sec = p.rsplit(".", 1)[1]
        assert f"usr/share/man/man{sec}/{p}\n" in installs, f"no Debian package ships {p}"


def test_man_pages_lint_clean():
    if shutil.which("mandoc") is None:
        pytest.skip("mandoc not installed (scripts/test installs it)")
    pages = sorted(glob.glob(os.path.join(MAN, "*.[0-9]")))
    r = subprocess.run(["mandoc", "-T", "lint", "-W", "warning"] + pages, capture_output=True,
                       text=True)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr
