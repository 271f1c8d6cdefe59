"""Fleet provisioning (tools/provision/) run for real with ansible-playbook against this machine.

Three "devices" nx-01..nx-03 are localhost with ``ansible_connection=local``, each with its own install root and
a simulated Jetson Orin NX 16GB (L4T 36.4.0 nv_tegra_release, device tree, meminfo: tests/bundle_fixtures.py), and
the ONNX Runtime backend (no TensorRT here). The bundles are the small signed bundles of the install tests.

Sequence (one module fixture, each run once): v1 to all hosts -> v1 again (must report changed=0) -> v2 one host
at a time with nx-02's copy tampered (nx-02 fails and keeps v1, the rollout stops before nx-03) -> rollback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.bundle_fixtures import NV_TEGRA_61, fake_jetson, make_bundles, smoke_through_current
from tests.conftest import ROOT, run_cli

PROVISION = ROOT / "tools" / "provision"
HOSTS = ("nx-01", "nx-02", "nx-03")
_RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def _ansible_playbook() -> str | None:
    here = Path(sys.executable).parent / "ansible-playbook"
    return str(here) if here.is_file() else shutil.which("ansible-playbook")


needs_ansible = pytest.mark.skipif(
    _ansible_playbook() is None,
    reason="ansible-playbook not found: pip install ansible-core==2.19.14 (part of the dev extra)",
)


@dataclass
class Run:
    rc: int
    output: str
    recap: dict[str, dict[str, int]]
    fleet: dict[str, Any] = field(default_factory=dict)  # reports/fleet.json right after the run
    status: dict[str, dict[str, Any]] = field(default_factory=dict)  # each host's `status` right after the run

    def changed(self, host: str) -> int:
        return self.recap[host]["changed"]


@dataclass
class Fleet:
    tmp: Path
    bundles: dict[str, Path]
    runs: dict[str, Run] = field(default_factory=dict)
    seen: dict[str, Any] = field(default_factory=dict)  # observations between runs

    @property
    def reports(self) -> Path:
        return self.tmp / "reports"

    def root(self, host: str) -> Path:
        return self.tmp / "dev" / host / "vqz" / "root"

    def status(self, host: str) -> dict[str, Any]:
        from vqz_edge.bundle import status

        return status(self.root(host))

    def write_inventory(self, name: str, bundle: Path, per_host_bundle: dict[str, Path] | None = None) -> Path:
        """An inventory in the shape of tools/provision/inventory/example.yml (group orin_nx_16gb under
        jetsons, so group_vars/orin_nx_16gb.yml applies), with every path pointing into the test folder."""
        vqz_cmd = [sys.executable, "-m", "vqz_edge"]
        hosts: dict[str, Any] = {}
        for h in HOSTS:
            dev = fake_jetson(self.tmp / "dev" / h / "hw", release=NV_TEGRA_61)
            hosts[h] = {
                "vqz_base": str(self.tmp / "dev" / h / "vqz"),
                "vqz_device_args": ["--nv-tegra-release", str(dev.nv_tegra_release), "--device-tree",
                                    str(dev.device_tree), "--meminfo", str(dev.meminfo), "--no-jtop"],
            }
            if per_host_bundle and h in per_host_bundle:
                hosts[h]["vqz_bundle"] = str(per_host_bundle[h])
        inv = {"all": {"children": {"jetsons": {
            "vars": {
                "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                "vqz_edge_cmd": vqz_cmd, "vqz_controller_cmd": vqz_cmd, "vqz_backend": "onnxruntime",
                "vqz_public_key": str(self.bundles["pub"]), "vqz_report_dir": str(self.reports),
                "vqz_bundle": str(bundle), "vqz_install_poll": 1,
            },
            "children": {"orin_nx_16gb": {"hosts": hosts}},
        }}}}
        path = self.tmp / f"{name}.yml"
        path.write_text(json.dumps(inv, indent=2))  # JSON is YAML
        return path

    def playbook(self, name: str, playbook: str, inventory: Path, *extra: str) -> Run:
        env = dict(os.environ)
        env.update({
            "ANSIBLE_CONFIG": str(PROVISION / "ansible.cfg"),
            "ANSIBLE_HOME": str(self.tmp / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(self.tmp / "ansible-tmp"),
            "ANSIBLE_ASYNC_DIR": str(self.tmp / "ansible-async"),
            "ANSIBLE_NOCOLOR": "1",
            "LC_ALL": "C.UTF-8",  # ansible-core refuses to start under a non-UTF-8 locale
            "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        })
        proc = subprocess.run(
            [str(_ansible_playbook()), "-i", str(inventory), str(PROVISION / playbook), *extra],
            cwd=PROVISION, env=env, capture_output=True, text=True, timeout=600,
        )
        out = proc.stdout + proc.stderr
        (self.tmp / f"{name}.log").write_text(out)
        recap = {m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4])}
                 for m in _RECAP.findall(out)}
        report = self.reports / "fleet.json"
        run = Run(proc.returncode, out, recap, json.loads(report.read_text()) if report.is_file() else {},
                  {h: self.status(h) for h in HOSTS if self.root(h).is_dir()})
        self.runs[name] = run
        return run


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    if _ansible_playbook() is None:
        pytest.skip("ansible-playbook not found: pip install ansible-core==2.19.14 (part of the dev extra)")
    tmp = tmp_path_factory.mktemp("fleet")
    (tmp / "bundles").mkdir()
    bundles = make_bundles(tmp / "bundles")
    tampered = tmp / "bundles" / "v2-tampered.tar"
    data = bytearray(bundles["v2"].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a member: its sha256 no longer matches the manifest
    tampered.write_bytes(bytes(data))
    bundles["v2-tampered"] = tampered
    f = Fleet(tmp, bundles)

    inv1 = f.write_inventory("inv-v1", bundles["v1"])
    f.playbook("first", "deploy.yml", inv1, "-e", "vqz_serial=3")
    f.seen["first_smoke"] = {h: smoke_through_current(f.root(h)) for h in HOSTS if (f.root(h) / "current").exists()}
    served = f.root("nx-01") / "current" / "model.onnx"
    before = (served.stat().st_ino, served.stat().st_mtime_ns)
    f.playbook("second", "deploy.yml", inv1, "-e", "vqz_serial=3")
    f.seen["served_unchanged"] = (served.stat().st_ino, served.stat().st_mtime_ns) == before
    f.seen["nx-03_last_op"] = f.status("nx-03")["last_operation"]

    inv2 = f.write_inventory("inv-v2", bundles["v2"], {"nx-02": tampered})
    f.playbook("tampered", "deploy.yml", inv2)  # the default batches: one canary host, then 25% (= 1 of 3) at a time
    f.seen["tampered_nx-02_smoke"] = smoke_through_current(f.root("nx-02"))
    return f


@needs_ansible
@pytest.mark.slow
def test_first_run_installs_on_every_host(fleet: Fleet) -> None:
    run = fleet.runs["first"]
    assert run.rc == 0, run.output[-3000:]
    for h in HOSTS:
        assert run.changed(h) >= 2, run.output[-3000:]  # at least the bundle push and the install
        st = run.status[h]
        assert st["healthy"] and st["current"]["bundle_version"] == 1 and st["current"]["target"] == "orin-nx-16gb"
        assert st["current"]["device_key"] == "onnxruntime-l4t36.4.0"  # the simulated Jetson was detected
        assert fleet.seen["first_smoke"][h] > 0.99  # the installed model runs through `current`
    report = run.fleet
    assert report["ok"] and {r["host"]: r["result"] for r in report["hosts"]} == dict.fromkeys(HOSTS, "installed")
    assert report["summary"]["current_bundles"] == {run.status["nx-01"]["current"]["bundle_id"]: list(HOSTS)}
    assert "fleet OK" in run.output  # the playbook printed the table


@needs_ansible
@pytest.mark.slow
def test_second_run_changes_nothing(fleet: Fleet) -> None:
    run = fleet.runs["second"]
    assert run.rc == 0, run.output[-3000:]
    assert set(run.recap) >= set(HOSTS)
    assert {h: run.changed(h) for h in HOSTS} == dict.fromkeys(HOSTS, 0), run.output[-3000:]
    assert fleet.seen["served_unchanged"]  # nothing rebuilt or replaced
    report = run.fleet
    assert report["ok"] and {r["result"] for r in report["hosts"]} == {"unchanged"}
    assert report["summary"]["changed"] == []
    assert all(run.status[h]["last_operation"]["result"] == "noop" for h in HOSTS)


@needs_ansible
@pytest.mark.slow
def test_tampered_bundle_fails_that_host_and_stops_the_rollout(fleet: Fleet) -> None:
    run = fleet.runs["tampered"]
    assert run.rc != 0  # max_fail_percentage 0: the failed batch ends the play with an error
    assert run.recap["nx-02"]["failed"] == 1 and "nx-03" not in run.recap, run.output[-3000:]
    # nx-01 (first batch) is on v2; nx-02 refused the tampered copy and still serves v1; nx-03 was never touched
    assert run.status["nx-01"]["current"]["bundle_version"] == 2
    nx02 = run.status["nx-02"]
    assert nx02["healthy"] and nx02["current"]["bundle_version"] == 1
    assert nx02["last_operation"]["result"] == "failed" and "does not match the manifest" in nx02["last_operation"]["reason"]
    assert fleet.seen["tampered_nx-02_smoke"] > 0.99  # the previous release still runs
    assert run.status["nx-03"]["last_operation"] == fleet.seen["nx-03_last_op"]
    report = run.fleet
    rows = {r["host"]: r for r in report["hosts"]}
    assert not report["ok"]
    assert (rows["nx-01"]["result"], rows["nx-02"]["result"], rows["nx-03"]["result"]) == ("installed", "failed", "not-reached")
    assert "does not match the manifest" in rows["nx-02"]["reason"] and rows["nx-02"]["bundle_version"] == 1
    assert report["summary"]["failed"] == ["nx-02"] and report["summary"]["not_reached"] == ["nx-03"]
    # the same report from the CLI, as an operator would read it afterwards
    cli = run_cli("fleet", "report", str(fleet.reports), "--json")
    assert cli.returncode == 1 and json.loads(cli.stdout)["hosts"] == report["hosts"]


@needs_ansible
@pytest.mark.slow
def test_rollback_a_group_idempotently(fleet: Fleet) -> None:
    inv = fleet.tmp / "inv-v2.yml"
    first = fleet.playbook("rollback", "rollback.yml", inv, "-e", "vqz_serial=3", "-e", "vqz_rollback_to_version=1")
    assert first.rc == 0, first.output[-3000:]
    assert first.changed("nx-01") == 1 and first.changed("nx-02") == 0 and first.changed("nx-03") == 0
    assert {h: first.status[h]["current"]["bundle_version"] for h in HOSTS} == dict.fromkeys(HOSTS, 1)
    assert first.status["nx-01"]["last_operation"]["kind"] == "rollback"
    rows = {r["host"]: r["result"] for r in first.fleet["hosts"]}
    assert rows == {"nx-01": "rolled-back", "nx-02": "unchanged", "nx-03": "unchanged"}
    again = fleet.playbook("rollback-again", "rollback.yml", inv, "-e", "vqz_serial=3", "-e", "vqz_rollback_to_version=1")
    assert again.rc == 0 and {h: again.changed(h) for h in HOSTS} == dict.fromkeys(HOSTS, 0), again.output[-3000:]


@needs_ansible
def test_playbooks_pass_syntax_check_with_the_example_inventory() -> None:
    for pb in ("deploy.yml", "rollback.yml"):
        proc = subprocess.run(
            [str(_ansible_playbook()), "--syntax-check", "-i", "inventory/example.yml", pb],
            cwd=PROVISION, env={**os.environ, "ANSIBLE_CONFIG": str(PROVISION / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                                "LC_ALL": "C.UTF-8"},
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_inventory_variables_by_target_match_the_catalog() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with ansible-core")
    from vqz_edge.targets import get_target

    example = yaml.safe_load((PROVISION / "inventory" / "example.yml").read_text())
    groups = example["all"]["children"]["jetsons"]["children"]
    assert set(groups) == {"orin_nano_8gb", "orin_nx_16gb", "agx_orin_64gb"}
    for group in groups:
        gv = yaml.safe_load((PROVISION / "group_vars" / f"{group}.yml").read_text())
        assert gv["vqz_target"].replace("-", "_") == group
        assert get_target(gv["vqz_target"]).name == gv["vqz_target"]  # a catalog target
        assert int(gv["vqz_keep"]) >= 1 and int(gv["vqz_install_timeout"]) > 0


# ------------------------------------------------------------------------------------------ fleet report CLI


def _status_doc(bundle_id: str, version: int, healthy: bool = True) -> dict[str, Any]:
    return {"root": "/var/lib/vqz-edge/root", "healthy": healthy, "history": [], "highest_bundle_version": version,
            "current": {"bundle_id": bundle_id, "bundle_version": version, "backend": "tensorrt",
                        "device_key": "tensorrt-l4t36.4.3", "target": "orin-nano-8gb"},
            "last_operation": {"kind": "install", "result": "done", "bundle_id": bundle_id}}


def test_fleet_report_from_plain_status_files(tmp_path: Path) -> None:
    (tmp_path / "nano-01.json").write_text(json.dumps(_status_doc("m-orin-nano-8gb-v3-abc", 3)))
    (tmp_path / "nano-02.json").write_text(json.dumps(_status_doc("m-orin-nano-8gb-v2-def", 2, healthy=False)))
    out = tmp_path / "fleet.json"
    proc = run_cli("fleet", "report", str(tmp_path / "nano-01.json"), str(tmp_path / "nano-02.json"), "-o", str(out))
    assert proc.returncode == 1, proc.stderr  # nano-02 is unhealthy
    assert "nano-01  orin-nano-8gb  status-only  m-orin-nano-8gb-v3-abc" in proc.stdout
    assert "fleet NOT OK: unhealthy nano-02" in proc.stdout
    report = json.loads(out.read_text())
    assert report["summary"]["current_bundles"] == {"m-orin-nano-8gb-v2-def": ["nano-02"], "m-orin-nano-8gb-v3-abc": ["nano-01"]}
    ok = run_cli("fleet", "report", str(tmp_path / "nano-01.json"), "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True


def test_fleet_report_bad_input(tmp_path: Path) -> None:
    missing = run_cli("fleet", "report", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    (tmp_path / "junk.json").write_text('{"hello": 1}')
    junk = run_cli("fleet", "report", str(tmp_path / "junk.json"))
    assert junk.returncode == 2 and "not a fleet host record" in junk.stderr
    (tmp_path / "broken.json").write_text("{")
    broken = run_cli("fleet", "report", str(tmp_path / "broken.json"))
    assert broken.returncode == 2 and "not readable JSON" in broken.stderr
    (tmp_path / "ok.json").write_text(json.dumps(_status_doc("x", 1)))
    out = run_cli("fleet", "report", str(tmp_path / "ok.json"), "-o", str(tmp_path / "no" / "dir" / "f.json"))
    assert out.returncode == 2 and "does not exist" in out.stderr and not (tmp_path / "no").exists()


def _host_record(host: str, run_id: str, *, action: str | None = "installed", failure: str | None = None) -> dict[str, Any]:
    return {"schema": "vqz-edge-fleet-host/1", "host": host, "run_id": run_id, "operation": "install",
            "target": "orin-nx-16gb", "bundle": "orin-nx-16gb.tar", "ok": failure is None, "changed": failure is None,
            "result": {"action": action} if failure is None else {"error": failure, "hint": "fix it"},
            "failure": None if failure is None else {"task": "Install", "reason": failure, "hint": "fix it"},
            "status": _status_doc(f"m-orin-nx-16gb-v{1 if failure else 2}-abc", 1 if failure else 2)}


def test_fleet_report_tells_pending_from_not_reached_and_stale(tmp_path: Path) -> None:
    """Hosts of the run without a record from it are 'pending' while no host failed (a report refreshed
    mid-rollout) and 'not-reached' once one did; records of hosts outside the run are kept as stale."""
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    (tmp_path / "run.json").write_text(json.dumps({"schema": "vqz-edge-fleet-run/1", "run_id": "r2", "operation": "install",
                                                   "hosts": ["a", "b", "c"]}))
    (hosts / "a.json").write_text(json.dumps(_host_record("a", "r2")))
    (hosts / "c.json").write_text(json.dumps(_host_record("c", "r1", action="noop")))  # from the previous run
    (hosts / "z.json").write_text(json.dumps(_host_record("z", "r1", action="noop")))  # not in this run
    mid = run_cli("fleet", "report", str(tmp_path), "--json")
    rows = {r["host"]: r for r in json.loads(mid.stdout)["hosts"]}
    assert mid.returncode == 1
    assert {h: (r["result"], r["stale"]) for h, r in rows.items()} == {
        "a": ("installed", False), "b": ("pending", False), "c": ("pending", False), "z": ("unchanged", True)}
    assert rows["c"]["current"] == "m-orin-nx-16gb-v2-abc" and "last known state from run r1" in rows["c"]["reason"]
    (hosts / "b.json").write_text(json.dumps(_host_record("b", "r2", failure="sha256 does not match the manifest")))
    end = run_cli("fleet", "report", str(tmp_path))
    assert end.returncode == 1
    assert "b: failed: sha256 does not match the manifest (hint: fix it)" in end.stdout
    assert re.search(r"^c\s+orin-nx-16gb\s+not-reached\s+m-orin-nx-16gb-v2-abc", end.stdout, re.M), end.stdout
    assert re.search(r"^z\s+orin-nx-16gb\s+unchanged \(stale\)", end.stdout, re.M)
    assert "4 host(s), 3 in this run: 1 failed, 1 installed, 1 not-reached; changed: 1" in end.stdout
    assert end.stdout.rstrip().endswith("fleet NOT OK: failed b; not_reached c")
