"""Admission defaults count the CPUs a container may use, not the host's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from roost.config import AdmissionConfig
from roost.runtime import limits
from roost.runtime.limits import admission_limits, available_cpus


def fake_root(tmp_path: Path, cgroup: str, files: dict[str, str]) -> Path:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    for name, text in files.items():
        path = tmp_path / "sys/fs/cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))


@pytest.mark.usefixtures("eight_cpus")
@pytest.mark.parametrize(("cgroup", "files", "expected"), [
    ("0::/\n", {"cpu.max": "200000 100000\n"}, 2),                       # v2, container root
    ("0::/\n", {"cpu.max": "150000 100000\n"}, 2),                       # 1.5 CPUs round up
    ("0::/\n", {"cpu.max": "max 100000\n"}, 8),                          # no quota
    ("0::/kubepods/pod1/c1\n", {"kubepods/pod1/cpu.max": "100000 100000",
                                "kubepods/pod1/c1/cpu.max": "max 100000"}, 1),  # a parent's
    ("4:cpu,cpuacct:/docker/abc\n", {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000",
                                     "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"}, 3),
    ("4:cpu,cpuacct:/\n", {"cpu,cpuacct/cpu.cfs_quota_us": "-1",
                           "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 8),      # v1 unlimited
    ("0::/\n", {"cpu.max": "1000 100000"}, 1),                           # never below one
])
def test_the_cgroup_quota_caps_the_affinity_mask(tmp_path: Path, cgroup: str,
                                                 files: dict[str, str], expected: int) -> None:
    assert available_cpus(fake_root(tmp_path, cgroup, files)) == expected


def test_the_affinity_mask_counts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3})
    assert available_cpus(tmp_path) == 2  # no /proc/self/cgroup under tmp_path: no quota


def test_admission_defaults_follow_the_available_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "available_cpus", lambda: 1)
    assert admission_limits(AdmissionConfig()).max_running == 256
    monkeypatch.setattr(limits, "available_cpus", lambda: 2)
    assert admission_limits(AdmissionConfig()).max_running == 512
