"""edgesdk.hardware.probe on fixture trees of real devices, on broken trees, and on this machine."""
from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgesdk import hardware

FIXTURES = Path(__file__).parent / "fixtures" / "hw"
KIB = 1024
MIB = 1 << 20


def fixture(name: str) -> str:
    return str(FIXTURES / name)


@pytest.fixture
def tree(tmp_path):
    """A writable copy of a fixture tree, to break in a test."""
    def copy(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(FIXTURES / name, dst, symlinks=True)
        return dst
    return copy


# -- the four devices ------------------------------------------------------------

def test_raspberry_pi_4_is_four_a72_cores_with_neon_but_no_dotprod():
    info = hardware.probe(fixture("rpi4"))
    assert info.cpu.architecture == "aarch64"
    assert info.cpu.model == "Cortex-A72"
    assert info.cpu.features == {"neon"}
    assert not info.cpu.has("dotprod") and not info.cpu.has("fp16")
    assert (info.cpu.logical_cores, info.cpu.physical_cores, info.cpu.performance_cores) == (4, 4, 4)
    assert info.cpu.max_freq_khz == (1500000,) * 4
    assert info.default_threads() == 4
    assert info.board.kind == "raspberry-pi"
    assert info.board.model == "Raspberry Pi 4 Model B Rev 1.1"
    assert info.board.compatible == ("raspberrypi,4-model-b", "brcm,bcm2711")
    assert not info.board.unified_memory and info.board.cuda_version is None
    assert info.memory.total_bytes == 3884360 * KIB
    assert info.memory.available_bytes == 3405816 * KIB
    assert info.memory.swap_total_bytes == 102396 * KIB
    # cgroup v2 with memory.max = "max": the cgroup is seen but does not limit.
    assert info.memory.cgroup_version == 2 and info.memory.cgroup_limit_bytes is None
    assert info.memory.budget_bytes == 3405816 * KIB and info.memory.limit_source == "MemAvailable"


def test_raspberry_pi_5_has_dotprod_and_fp16_and_its_service_cgroup_limit_wins():
    info = hardware.probe(fixture("rpi5"))
    assert info.cpu.model == "Cortex-A76"
    assert info.cpu.features == {"neon", "dotprod", "fp16"}
    assert info.cpu.performance_cores == 4
    # The model comes from /sys/firmware/devicetree/base when /proc/device-tree is absent.
    assert info.board.model == "Raspberry Pi 5 Model B Rev 1.0"
    assert info.board.kind == "raspberry-pi"
    mem = info.memory
    assert mem.cgroup_version == 2
    assert mem.cgroup_limit_bytes == 2 * 1024 * MIB
    # memory.current less the reclaimable inactive file pages of memory.stat.
    assert mem.cgroup_usage_bytes == 314572800 - 104857600
    assert mem.budget_bytes == 2 * 1024 * MIB - (314572800 - 104857600)
    assert mem.budget_bytes < mem.available_bytes
    assert mem.limit_source == "cgroup v2 memory.max"


def test_jetson_orin_nano_reports_six_cores_across_clusters_unified_memory_l4t_and_cuda():
    info = hardware.probe(fixture("jetson-orin-nano"))
    assert info.cpu.model == "Cortex-A78AE"
    assert {"neon", "dotprod", "fp16"} <= info.cpu.features
    # core_id repeats across the two clusters (0-3, 0-1); each CPU is still its own core.
    assert info.cpu.physical_cores == 6 and info.default_threads() == 6
    board = info.board
    assert board.kind == "jetson" and board.unified_memory
    assert board.model == "NVIDIA Jetson Orin Nano Developer Kit"
    assert "nvidia,tegra234" in board.compatible
    assert board.l4t_release == "R36.3.0"
    assert board.cuda_version == "12.2.140"
    assert board.cuda_libraries == ("/usr/local/cuda/targets/aarch64-linux/lib/libcudart.so.12.2.140",)
    # Docker on cgroup v1: the mount root is the container's cgroup, so its files are at the mount point.
    mem = info.memory
    assert mem.cgroup_version == 1 and mem.cgroup_limit_bytes == 4 * 1024 * MIB
    assert mem.cgroup_usage_bytes == 1024 * MIB - 512 * MIB
    assert mem.budget_bytes == 4096 * MIB - 512 * MIB
    assert mem.limit_source == "cgroup v1 memory.limit_in_bytes"


def test_x86_box_counts_hyperthreads_once_and_uses_only_p_cores_by_default():
    info = hardware.probe(fixture("x86-box"))
    cpu = info.cpu
    assert cpu.architecture == "x86_64"
    assert cpu.model == "12th Gen Intel(R) Core(TM) i5-1235U"
    assert {"avx2", "fma", "f16c", "avx_vnni"} <= cpu.features
    assert not cpu.has("avx512f")
    assert (cpu.logical_cores, cpu.physical_cores) == (12, 10)
    # 2 P-cores at 4.4 GHz (each with an SMT sibling), 8 E-cores at 3.3 GHz.
    assert cpu.performance_cores == 2 and info.default_threads() == 2
    assert info.board.kind == "generic"
    assert info.board.model == "Intel(R) Client Systems NUC12WSKi5"
    assert info.accelerators.npu_devices == (hardware.NPUDevice("intel", "/dev/accel/accel0"),)
    mem = info.memory
    # cgroup v1's "unlimited" is LONG_MAX rounded to a page: no limit.
    assert mem.cgroup_version == 1 and mem.cgroup_limit_bytes is None
    assert mem.cgroup_usage_bytes == 2048 * MIB - 768 * MIB
    assert mem.address_space_limit_bytes == 8 * 1024 * MIB
    assert mem.address_space_used_bytes == 1024 * MIB
    assert mem.limit_source == "MemAvailable"


def test_fixture_trees_never_ask_onnxruntime():
    assert hardware.probe(fixture("rpi5")).accelerators.onnx_providers == ()


# -- big.LITTLE and NPU nodes built in the test ----------------------------------------

def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _rk3588(root: Path, with_capacity: bool) -> None:
    """Rockchip RK3588: cpu0-3 Cortex-A55 at 1.8 GHz, cpu4-7 Cortex-A76 at 2.256/2.4 GHz (binned pairs)."""
    blocks = []
    for cpu in range(8):
        part = "0xd05" if cpu < 4 else "0xd0b"
        blocks.append(f"processor\t: {cpu}\nBogoMIPS\t: 48.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 "
                      f"crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\n"
                      f"CPU architecture: 8\nCPU variant\t: 0x2\nCPU part\t: {part}\nCPU revision\t: 0\n")
    _write(root, "/proc/cpuinfo", "\n".join(blocks))
    _write(root, "/sys/devices/system/cpu/online", "0-7\n")
    freqs = [1800000] * 4 + [2256000, 2256000, 2400000, 2400000]
    capacities = [414] * 4 + [1024] * 4
    for cpu in range(8):
        _write(root, f"/sys/devices/system/cpu/cpu{cpu}/topology/core_cpus_list", f"{cpu}\n")
        _write(root, f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq", f"{freqs[cpu]}\n")
        if with_capacity:
            _write(root, f"/sys/devices/system/cpu/cpu{cpu}/cpu_capacity", f"{capacities[cpu]}\n")
    _write(root, "/proc/device-tree/model", "Radxa ROCK 5B\x00")
    _write(root, "/proc/device-tree/compatible", "radxa,rock-5b\x00rockchip,rk3588\x00")


@pytest.mark.parametrize("with_capacity", [True, False], ids=["cpu_capacity", "cpufreq_only"])
def test_big_little_uses_only_the_big_cores_for_default_threads(tmp_path, with_capacity):
    _rk3588(tmp_path, with_capacity)
    info = hardware.probe(str(tmp_path))
    assert info.cpu.physical_cores == 8
    # The two A76 pairs differ by 6% (binning): both are big cores; the A55s are not.
    assert info.cpu.performance_cores == 4
    assert info.default_threads() == 4
    assert info.board.kind == "generic" and info.board.model == "Radxa ROCK 5B"


def test_discrete_nvidia_gpus_are_read_from_the_driver_and_shown_by_info(tree):
    root = tree("x86-box")
    for slot, model in (("0000:17:00.0", "NVIDIA H200"), ("0000:65:00.0", "NVIDIA L4")):
        _write(root, f"proc/driver/nvidia/gpus/{slot}/information",
               f"Model: \t\t {model}\nIRQ:   \t\t 91\nGPU UUID: \t GPU-1234\n")
    info = hardware.probe(str(root))   # a fixture tree: the CUDA library is not asked
    assert [g.name for g in info.accelerators.gpus] == ["NVIDIA H200", "NVIDIA L4"]
    assert info.accelerators.gpus[0].total_bytes is None
    rows = dict(hardware.device_rows(info))
    assert rows["gpu"] == "NVIDIA H200; NVIDIA L4"
    assert dict(hardware.device_rows(hardware.probe(fixture("rpi4"))))["gpu"] == "none found"


def test_npu_device_nodes_are_recognized_by_vendor(tmp_path):
    _rk3588(tmp_path, True)
    for node in ("/dev/hailo0", "/dev/apex_0", "/dev/davinci0", "/dev/dri/renderD128", "/dev/dri/renderD129"):
        _write(tmp_path, node, "")
    os.makedirs(tmp_path / "sys/bus/platform/drivers/rknpu")
    os.makedirs(tmp_path / "sys/class/drm/renderD129/device")
    os.symlink(tmp_path / "sys/bus/platform/drivers/rknpu", tmp_path / "sys/class/drm/renderD129/device/driver")
    _write(tmp_path, "/sys/class/drm/renderD128/device/uevent", "DRIVER=panthor\n")
    _write(tmp_path, "/sys/bus/usb/devices/2-1/idVendor", "18d1\n")
    _write(tmp_path, "/sys/bus/usb/devices/2-1/idProduct", "9302\n")
    devices = set(hardware.probe(str(tmp_path)).accelerators.npu_devices)
    assert devices == {
        hardware.NPUDevice("hailo", "/dev/hailo0"), hardware.NPUDevice("coral", "/dev/apex_0"),
        hardware.NPUDevice("huawei", "/dev/davinci0"), hardware.NPUDevice("rockchip", "/dev/dri/renderD129"),
        hardware.NPUDevice("coral", "/sys/bus/usb/devices/2-1"),
    }


def test_a_parent_cgroup_limit_caps_its_child(tree):
    root = tree("rpi5")
    _write(root, "/sys/fs/cgroup/system.slice/memory.max", "1073741824\n")
    info = hardware.probe(str(root))
    assert info.memory.cgroup_limit_bytes == 1024 * MIB


# -- broken trees: degrade, never raise -------------------------------------------------

def test_empty_root_gives_unknowns_not_errors(tmp_path):
    info = hardware.probe(str(tmp_path))
    assert info.cpu.architecture == "unknown" and info.cpu.model == "unknown"
    assert info.cpu.features == frozenset() and info.cpu.logical_cores == 0
    assert info.default_threads() == 1
    mem = info.memory
    assert mem.total_bytes is None and mem.available_bytes is None and mem.budget_bytes is None
    assert mem.cgroup_version is None and mem.limit_source == "unknown"
    assert info.board.kind == "unknown" and info.board.model is None
    assert info.accelerators.npu_devices == ()
    assert "unknown" in hardware.format_device(info)


def test_missing_root_directory_is_not_an_error(tmp_path):
    info = hardware.probe(str(tmp_path / "does-not-exist"))
    assert info.cpu.architecture == "unknown" and info.memory.budget_bytes is None


def test_truncated_meminfo_keeps_the_lines_that_survived(tree):
    root = tree("rpi4")
    text = (root / "proc/meminfo").read_text()
    (root / "proc/meminfo").write_text(text[:text.index("MemAvailable") + 20])  # cut inside MemAvailable
    mem = hardware.probe(str(root)).memory
    assert mem.total_bytes == 3884360 * KIB
    assert mem.available_bytes is None or mem.available_bytes <= mem.total_bytes
    assert mem.swap_total_bytes is None


def test_garbage_numbers_become_none(tree):
    root = tree("rpi5")
    (root / "proc/meminfo").write_text("MemTotal: lots kB\nMemAvailable: -5 kB\nSwapTotal:\n")
    (root / "sys/fs/cgroup/system.slice/edge-chat.service/memory.max").write_text("two gigabytes\n")
    (root / "sys/devices/system/cpu/online").write_text("3-1\n")
    (root / "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").write_text("fast\n")
    info = hardware.probe(str(root))
    assert info.memory.total_bytes is None and info.memory.available_bytes is None
    assert info.memory.cgroup_limit_bytes is None
    assert info.cpu.logical_cores == 4           # falls back to cpuinfo's processor entries
    assert info.cpu.max_freq_khz[0] is None


def test_missing_sys_tree_falls_back_to_cpuinfo(tree):
    root = tree("x86-box")
    shutil.rmtree(root / "sys")
    cpu = hardware.probe(str(root)).cpu
    assert cpu.logical_cores == 12
    assert cpu.physical_cores == 10              # from cpuinfo: processors sharing (physical id, core id)
    assert cpu.performance_cores == 10           # no frequencies: every core is as fast as any other


def test_binary_garbage_in_cpuinfo_does_not_raise(tree):
    root = tree("jetson-orin-nano")
    (root / "proc/cpuinfo").write_bytes(bytes(range(256)) * 8)
    (root / "etc/nv_tegra_release").write_bytes(b"\xff\xfe# R\x00")
    info = hardware.probe(str(root))
    assert info.cpu.architecture == "unknown"
    assert info.board.kind == "jetson"           # the device tree still says tegra234
    assert info.board.l4t_release is None


def test_a_directory_where_a_file_should_be_is_tolerated(tree):
    root = tree("rpi4")
    (root / "proc/meminfo").unlink()
    (root / "proc/meminfo").mkdir()
    assert hardware.probe(str(root)).memory.total_bytes is None


FUZZED_FILES = ("proc/cpuinfo", "proc/meminfo", "proc/self/cgroup", "proc/self/mountinfo", "proc/self/limits",
                "proc/self/status", "sys/devices/system/cpu/online",
                "sys/fs/cgroup/system.slice/edge-chat.service/memory.max",
                "sys/fs/cgroup/system.slice/edge-chat.service/memory.stat",
                "sys/firmware/devicetree/base/model", "sys/devices/system/cpu/cpu2/topology/core_cpus_list")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, len(FUZZED_FILES) - 1), content=st.binary(max_size=300))
def test_any_bytes_in_any_probed_file_never_raise(tmp_path_factory, index, content):
    root = tmp_path_factory.mktemp("fuzz") / "rpi5"
    shutil.copytree(FIXTURES / "rpi5", root, symlinks=True)
    (root / FUZZED_FILES[index]).write_bytes(content)
    info = hardware.probe(str(root))
    assert isinstance(hardware.format_device(info), str)


# -- this machine --------------------------------------------------------------

def test_probe_of_this_machine_matches_python_s_view():
    info = hardware.probe()
    assert info.cpu.architecture == platform.machine()
    assert info.cpu.logical_cores == os.cpu_count()
    assert 1 <= info.default_threads() <= os.cpu_count()
    assert info.memory.total_bytes == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < info.memory.budget_bytes <= info.memory.total_bytes


def test_onnx_providers_are_listed_when_onnxruntime_imports():
    import onnxruntime  # a declared dependency of the project's test environment
    providers = hardware.probe("/").accelerators.onnx_providers
    assert providers == tuple(onnxruntime.get_available_providers())
    assert "CPUExecutionProvider" in providers


def test_a_broken_onnxruntime_import_is_swallowed(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # makes `import onnxruntime` raise ImportError
    assert hardware.probe("/", onnx=True).accelerators.onnx_providers == ()


def test_cpu_features_are_spelled_as_the_native_layer_spells_them():
    from edgesdk import _native

    ours = set(hardware.X86_FEATURES.values()) | set(hardware.ARM_FEATURES.values())
    assert set(_native.CPU_FEATURE_BITS) <= ours
    # On this machine both read the same CPU: what the kernels may use, the probe names too, spelled alike.
    assert set(_native.cpu_features()) <= hardware.probe("/", onnx=False).cpu.features


def test_jetson_lines_appear_only_on_a_jetson(tree):
    jetson = dict(hardware.device_rows(hardware.probe(fixture("jetson-orin-nano"))))
    assert jetson["cuda"] == "L4T R36.3.0, CUDA 12.2.140, 1 libcudart file(s)"
    root = tree("x86-box")     # an x86 box with a CUDA runtime installed is still no Jetson
    _write(root, "/usr/local/cuda/lib64/libcudart.so.12", "")
    info = hardware.probe(str(root))
    assert info.board.cuda_libraries == ("/usr/local/cuda/lib64/libcudart.so.12",)
    labels = [label for label, _ in hardware.device_rows(info)]
    assert "cuda" not in labels and not any("L4T" in value for _, value in hardware.device_rows(info))


def test_format_device_names_the_limit_source():
    text = hardware.format_device(hardware.probe(fixture("rpi5")))
    assert "cgroup v2 memory.max" in text and "dotprod" in text and "Raspberry Pi 5" in text
