"""What device this is: CPU features and cores, memory and its limits, board, accelerators.

Everything is read from files under a root directory (`/` on a real device, a
fixture tree in tests): /proc/cpuinfo, /proc/meminfo, /proc/self/{cgroup,
mountinfo,limits,status}, /sys/devices/system/cpu, the device tree, /etc and
/dev. A probe never raises: a missing, truncated or garbled file gives None,
"unknown" or an empty set for the fields it would have filled, because a
report with holes is more useful than no report on an odd board.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import platform
import re
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Optional, Tuple

log = logging.getLogger("edgesdk")

# cgroup v1 writes "no limit" as LONG_MAX rounded down to a page; anything at
# or above 2**60 bytes (1 EiB) is no limit on any machine we will meet.
UNLIMITED_BYTES = 1 << 60

# Cores whose capacity (or top frequency) is within this fraction of the
# fastest core count as performance cores: binned clusters of the same core
# type differ by a few percent (RK3588's A76 pairs: 2.26 and 2.4 GHz), while
# big.LITTLE and P/E splits differ by 25% or more.
FAST_CORE_FRACTION = 0.85

# /proc/cpuinfo flag (x86) or Features word (ARM) -> the name edgesdk uses, spelled as the
# native layer spells the features it detects (edgesdk._native.CPU_FEATURE_BITS), so that
# `edgesdk info` names each feature one way.
X86_FEATURES = {
    "sse4_2": "sse4_2", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c",
    "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512vl": "avx512vl", "avx512dq": "avx512dq",
    "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni", "avx512_bf16": "avx512_bf16",
    "amx_int8": "amx_int8", "amx_bf16": "amx_bf16",
}
ARM_FEATURES = {
    "asimd": "neon", "neon": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "sve",
    "sve2": "sve2", "fphp": "fp16", "asimdhp": "fp16", "bf16": "bf16",
}


@dataclass(frozen=True)
class CPUInfo:
    architecture: str                     # "x86_64", "aarch64", "armv7l" or "unknown"
    model: str                            # "Intel(R) Xeon(R) ...", "Cortex-A76", or "unknown"
    features: FrozenSet[str]              # edgesdk names: avx2, avx512_vnni, neon, dotprod, i8mm, fp16 ...
    logical_cores: int                    # online CPUs the OS schedules on
    physical_cores: int                   # distinct cores (SMT siblings counted once)
    performance_cores: int                # physical cores in the fastest class (all of them if uniform)
    max_freq_khz: Tuple[Optional[int], ...] = ()   # per online CPU, from cpufreq; None where unknown

    def has(self, feature: str) -> bool:
        return feature in self.features


@dataclass(frozen=True)
class MemoryInfo:
    total_bytes: Optional[int]            # MemTotal
    available_bytes: Optional[int]        # MemAvailable (or MemFree + Cached on old kernels)
    swap_total_bytes: Optional[int]
    swap_free_bytes: Optional[int]
    cgroup_version: Optional[int]         # 1, 2 or None when no memory cgroup applies
    cgroup_limit_bytes: Optional[int]     # smallest limit on the path to the root cgroup; None = unlimited
    cgroup_usage_bytes: Optional[int]     # usage less reclaimable page cache (inactive file pages)
    address_space_limit_bytes: Optional[int]   # RLIMIT_AS soft limit (None = unlimited)
    address_space_used_bytes: Optional[int]    # VmSize of the process that reads /proc/self
    budget_bytes: Optional[int]           # what this process may still use: min over the sources
    limit_source: str                     # which source gives budget_bytes, e.g. "cgroup v2 memory.max"


@dataclass(frozen=True)
class BoardInfo:
    kind: str                             # "raspberry-pi", "jetson", "generic" or "unknown"
    model: Optional[str]                  # device-tree model or DMI product name
    compatible: Tuple[str, ...] = ()
    unified_memory: bool = False          # GPU shares system RAM (Jetson)
    l4t_release: Optional[str] = None     # "R36.3.0"
    cuda_version: Optional[str] = None
    cuda_libraries: Tuple[str, ...] = ()  # libcudart files found


@dataclass(frozen=True)
class NPUDevice:
    vendor: str                           # "rockchip", "hailo", "coral", "intel", "amd", "huawei", "verisilicon"
    path: str                             # the device node, relative to the probed root


@dataclass(frozen=True)
class GPUDevice:
    name: str
    total_bytes: Optional[int] = None     # from the CUDA library when it is built, else None
    compute_capability: Optional[Tuple[int, int]] = None
    integrated: bool = False


@dataclass(frozen=True)
class AcceleratorInfo:
    onnx_providers: Tuple[str, ...] = ()  # onnxruntime.get_available_providers(), if it imports
    npu_devices: Tuple[NPUDevice, ...] = ()
    gpus: Tuple[GPUDevice, ...] = ()
    gpu_note: str = ""                    # why the CUDA library reports none (no driver, not built)


@dataclass(frozen=True)
class DeviceInfo:
    cpu: CPUInfo
    memory: MemoryInfo
    board: BoardInfo
    accelerators: AcceleratorInfo = field(default_factory=AcceleratorInfo)

    def default_threads(self) -> int:
        """Threads for compute: one per physical performance core (SMT and LITTLE cores only slow GEMV down)."""
        return max(1, self.cpu.performance_cores)


# -- reading files under the root ------------------------------------------------

def _path(root: str, rel: str) -> str:
    return os.path.join(root, rel.lstrip("/"))


def _read_text(root: str, rel: str, limit: int = 1 << 20) -> Optional[str]:
    try:
        with open(_path(root, rel), "rb") as f:
            return f.read(limit).decode("utf-8", errors="replace")
    except (OSError, ValueError):
        return None


def _read_int(root: str, rel: str) -> Optional[int]:
    text = _read_text(root, rel, 4096)
    if text is None:
        return None
    try:
        return int(text.strip().split()[0])
    except (ValueError, IndexError):
        return None


def _parse_cpu_list(text: Optional[str]) -> Optional[List[int]]:
    """'0-3,6' -> [0, 1, 2, 3, 6]; None on anything malformed."""
    if text is None:
        return None
    cpus: List[int] = []
    try:
        for part in text.strip().split(","):
            if not part:
                continue
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo or hi - lo > 4096:
                    return None
                cpus.extend(range(lo, hi + 1))
            else:
                cpus.append(int(part))
    except ValueError:
        return None
    return cpus or None


# -- CPU -------------------------------------------------------------------------

def _cpuinfo_blocks(text: str) -> List[Dict[str, str]]:
    blocks, current = [], {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip().lower()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


# ARM "CPU part" numbers of implementer 0x41 (Arm Ltd) for the cores edge boards use.
_ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE", "0xd44": "Cortex-X1",
    "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2", "0xd4d": "Cortex-A715",
    "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd49": "Neoverse-N2",
}


def _probe_cpu(root: str) -> CPUInfo:
    text = _read_text(root, "/proc/cpuinfo") or ""
    blocks = _cpuinfo_blocks(text)
    cpu_blocks = [b for b in blocks if "processor" in b and b["processor"].isdigit()]

    architecture, model, features = "unknown", "unknown", frozenset()
    first = cpu_blocks[0] if cpu_blocks else (blocks[0] if blocks else {})
    if "flags" in first:
        architecture = "x86_64" if "lm" in first["flags"].split() else "x86"
        features = frozenset(X86_FEATURES[f] for f in first["flags"].split() if f in X86_FEATURES)
        model = first.get("model name", "unknown")
    elif "features" in first:
        words = first["features"].split()
        arch_field = first.get("cpu architecture", "")
        if arch_field == "8" or "asimd" in words:
            architecture = "aarch64"
        elif arch_field.startswith("7"):
            architecture = "armv7l"
        features = frozenset(ARM_FEATURES[w] for w in words if w in ARM_FEATURES)
        if first.get("cpu implementer", "").lower() == "0x41":
            model = _ARM_PARTS.get(first.get("cpu part", "").lower(), "unknown")
    if architecture == "unknown" and os.path.abspath(root) == "/":
        architecture = platform.machine() or "unknown"

    online = _parse_cpu_list(_read_text(root, "/sys/devices/system/cpu/online"))
    if online is None:
        online = [int(b["processor"]) for b in cpu_blocks] or None
    logical = len(online) if online else 0

    # A physical core is a distinct set of SMT siblings; ARM cores list only themselves.
    siblings_of: Dict[int, Tuple[int, ...]] = {}
    for cpu in online or []:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        sib = (_parse_cpu_list(_read_text(root, base + "core_cpus_list"))
               or _parse_cpu_list(_read_text(root, base + "thread_siblings_list")))
        if sib:
            siblings_of[cpu] = tuple(sorted(sib))
    if online and len(siblings_of) == len(online):
        cores = sorted(set(siblings_of.values()))
    else:
        cores = [(cpu,) for cpu in online or []]
        # x86 cpuinfo names each processor's core: SMT siblings share (physical id, core id).
        keyed: Dict[Tuple[str, str], List[int]] = {}
        for block in cpu_blocks:
            if "core id" not in block:
                keyed = {}
                break
            keyed.setdefault((block.get("physical id", "0"), block["core id"]), []).append(int(block["processor"]))
        if keyed and sum(len(v) for v in keyed.values()) == logical:
            cores = sorted(tuple(sorted(v)) for v in keyed.values())
    physical = len(cores)

    # Speed class of each core: cpu_capacity (ARM's scheduler view) first, else cpufreq's top frequency.
    max_freq = tuple(_read_int(root, f"/sys/devices/system/cpu/cpu{c}/cpufreq/cpuinfo_max_freq")
                     for c in online or [])
    freq_of = dict(zip(online or [], max_freq))
    performance = physical
    for source in ("capacity", "freq"):
        speed = {}
        for core in cores:
            value = (_read_int(root, f"/sys/devices/system/cpu/cpu{core[0]}/cpu_capacity")
                     if source == "capacity" else freq_of.get(core[0]))
            if value is None or value <= 0:
                speed = {}
                break
            speed[core] = value
        if speed:
            top = max(speed.values())
            performance = sum(1 for v in speed.values() if v >= FAST_CORE_FRACTION * top)
            break
    return CPUInfo(architecture=architecture, model=model, features=features, logical_cores=logical,
                   physical_cores=physical, performance_cores=performance, max_freq_khz=max_freq)


# -- memory ----------------------------------------------------------------------

def _parse_meminfo(text: Optional[str]) -> Dict[str, int]:
    values: Dict[str, int] = {}
    for line in (text or "").splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts:
            continue
        try:
            number = int(parts[0])
        except ValueError:
            continue
        if number < 0:
            continue
        unit = parts[1].lower() if len(parts) > 1 else ""
        values[key.strip()] = number * 1024 if unit == "kb" else number
    return values


def _parse_stat(text: Optional[str]) -> Dict[str, int]:
    """A cgroup memory.stat file: 'key value' per line, values in bytes."""
    values: Dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            values[parts[0]] = int(parts[1])
    return values


def _limit_value(text: Optional[str]) -> Tuple[bool, Optional[int]]:
    """(readable, bytes or None for unlimited) of a cgroup limit file."""
    if text is None:
        return False, None
    word = text.strip()
    if word == "max":
        return True, None
    try:
        value = int(word)
    except ValueError:
        return False, None
    if value < 0:
        return False, None
    return True, (None if value >= UNLIMITED_BYTES else value)


def _mountinfo_cgroup_mounts(root: str) -> Dict[str, Tuple[str, str]]:
    """{'v2': (mount point, mount root), 'v1': (...)} for the memory controller's cgroup mounts."""
    mounts: Dict[str, Tuple[str, str]] = {}
    for line in (_read_text(root, "/proc/self/mountinfo") or "").splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        mount_root, mount_point, fstype, options = fields[3], fields[4], tail[0], tail[2]
        if fstype == "cgroup2" and "v2" not in mounts:
            mounts["v2"] = (mount_point, mount_root)
        elif fstype == "cgroup" and "memory" in options.split(",") and "v1" not in mounts:
            mounts["v1"] = (mount_point, mount_root)
    return mounts


def _cgroup_dir(root: str, mount: Tuple[str, str], cgroup_path: str) -> Tuple[str, str]:
    """(the process's cgroup directory, its mount point), both relative to root."""
    mount_point, mount_root = mount
    rel = cgroup_path
    if mount_root != "/" and (cgroup_path == mount_root or cgroup_path.startswith(mount_root.rstrip("/") + "/")):
        rel = cgroup_path[len(mount_root.rstrip("/")):]
    leaf = os.path.normpath(mount_point + "/" + rel.lstrip("/"))
    if not os.path.isdir(_path(root, leaf)):
        leaf = mount_point   # inside a cgroup namespace the mount itself is our cgroup
    return leaf, mount_point


def _probe_cgroup(root: str) -> Tuple[Optional[int], Optional[int], Optional[int]]:
    """(version, limit bytes or None, usage bytes or None) of the memory cgroup this process is in."""
    v1_path = v2_path = None
    for line in (_read_text(root, "/proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        elif "memory" in parts[1].split(","):
            v1_path = parts[2]
    mounts = _mountinfo_cgroup_mounts(root)
    candidates = []
    if v1_path is not None:
        candidates.append((1, mounts.get("v1", ("/sys/fs/cgroup/memory", "/")), v1_path,
                           "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))
    if v2_path is not None:
        candidates.append((2, mounts.get("v2", ("/sys/fs/cgroup", "/")), v2_path,
                           "memory.max", "memory.current", "inactive_file"))
    best: Tuple[Optional[int], Optional[int], Optional[int]] = (None, None, None)
    for version, mount, cgroup_path, limit_file, usage_file, inactive_key in candidates:
        leaf, top = _cgroup_dir(root, mount, cgroup_path)
        if not os.path.isdir(_path(root, leaf)):
            continue
        # A parent's limit caps its children: the smallest on the way up applies.
        limit, directory, seen_any = None, leaf, False
        while True:
            readable, value = _limit_value(_read_text(root, directory + "/" + limit_file, 4096))
            seen_any |= readable
            if value is not None and (limit is None or value < limit):
                limit = value
            if directory == top or len(directory) <= len(top):
                break
            directory = os.path.dirname(directory)
        if not seen_any:
            continue
        usage = _read_int(root, leaf + "/" + usage_file)
        if usage is not None:
            usage = max(0, usage - _parse_stat(_read_text(root, leaf + "/memory.stat")).get(inactive_key, 0))
        if best[0] is None or (limit is not None and (best[1] is None or limit < best[1])):
            best = (version, limit, usage)
    return best


def _probe_address_space(root: str) -> Tuple[Optional[int], Optional[int]]:
    """(RLIMIT_AS soft limit or None, VmSize) from /proc/self/limits and /proc/self/status."""
    limit = None
    for line in (_read_text(root, "/proc/self/limits") or "").splitlines():
        if line.startswith("Max address space"):
            words = line[len("Max address space"):].split()
            if words and words[0] != "unlimited":
                try:
                    value = int(words[0])
                    limit = value if 0 < value < UNLIMITED_BYTES else None
                except ValueError:
                    limit = None
    used = _parse_meminfo(_read_text(root, "/proc/self/status")).get("VmSize")
    return limit, used


def _probe_memory(root: str) -> MemoryInfo:
    info = _parse_meminfo(_read_text(root, "/proc/meminfo"))
    total = info.get("MemTotal")
    available = info.get("MemAvailable")
    if available is None and "MemFree" in info:
        available = info["MemFree"] + info.get("Cached", 0)
    if total is not None and available is not None and available > total:
        available = total   # garbage in one of them; trust the smaller
    version, limit, usage = _probe_cgroup(root)
    as_limit, as_used = _probe_address_space(root)

    budget, source = available, "MemAvailable"
    if available is None:
        source = "unknown"
    if limit is not None:
        cgroup_room = max(0, limit - (usage or 0))
        if budget is None or cgroup_room < budget:
            budget = cgroup_room
            source = f"cgroup v{version} " + ("memory.max" if version == 2 else "memory.limit_in_bytes")
    return MemoryInfo(total_bytes=total, available_bytes=available,
                      swap_total_bytes=info.get("SwapTotal"), swap_free_bytes=info.get("SwapFree"),
                      cgroup_version=version, cgroup_limit_bytes=limit, cgroup_usage_bytes=usage,
                      address_space_limit_bytes=as_limit, address_space_used_bytes=as_used,
                      budget_bytes=budget, limit_source=source)


# -- board -----------------------------------------------------------------------

_CUDA_LIBRARY_GLOBS = (
    "/usr/local/cuda/lib64/libcudart.so*",
    "/usr/local/cuda/targets/*/lib/libcudart.so*",
    "/usr/local/cuda-*/lib64/libcudart.so*",
    "/usr/local/cuda-*/targets/*/lib/libcudart.so*",
    "/usr/lib/aarch64-linux-gnu/libcudart.so*",
    "/usr/lib/x86_64-linux-gnu/libcudart.so*",
    "/usr/lib64/libcudart.so*",
)


def _device_tree(root: str, name: str) -> Optional[str]:
    for base in ("/proc/device-tree/", "/sys/firmware/devicetree/base/"):
        text = _read_text(root, base + name, 65536)
        if text is not None:
            return text
    return None


def _cuda_version(root: str) -> Optional[str]:
    text = _read_text(root, "/usr/local/cuda/version.json")
    if text is not None:
        try:
            version = json.loads(text)["cuda"]["version"]
            if isinstance(version, str) and version:
                return version
        except (ValueError, KeyError, TypeError):
            pass
    text = _read_text(root, "/usr/local/cuda/version.txt")
    match = re.search(r"CUDA Version\s+([0-9][0-9.]*)", text or "")
    return match.group(1) if match else None


def _probe_board(root: str) -> BoardInfo:
    model_text = _device_tree(root, "model")
    model = model_text.strip("\x00\n ") if model_text else None
    compatible_text = _device_tree(root, "compatible") or ""
    compatible = tuple(c for c in compatible_text.split("\x00") if c.strip())

    l4t = None
    release = _read_text(root, "/etc/nv_tegra_release", 4096)
    match = re.match(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)", release or "")
    if match:
        l4t = f"R{match.group(1)}.{match.group(2)}"

    libraries, seen = [], set()
    for pattern in _CUDA_LIBRARY_GLOBS:
        for hit in sorted(glob.glob(_path(root, pattern))):
            real = os.path.realpath(hit)   # the same library reached through cuda -> cuda-12.6 links
            if real not in seen:
                seen.add(real)
                libraries.append("/" + os.path.relpath(hit, root).replace(os.sep, "/"))

    is_jetson = (any(c.startswith("nvidia,tegra") for c in compatible)
                 or bool(model and "jetson" in model.lower()) or l4t is not None)
    if model and model.startswith("Raspberry Pi") or any(c.startswith("raspberrypi,") for c in compatible):
        kind = "raspberry-pi"
    elif is_jetson:
        kind = "jetson"
    else:
        product = _read_text(root, "/sys/class/dmi/id/product_name", 4096)
        if product and product.strip() and model is None:
            vendor = (_read_text(root, "/sys/class/dmi/id/sys_vendor", 4096) or "").strip()
            model = f"{vendor} {product.strip()}".strip()
        kind = "generic" if model else "unknown"
    return BoardInfo(kind=kind, model=model, compatible=compatible, unified_memory=is_jetson,
                     l4t_release=l4t, cuda_version=_cuda_version(root), cuda_libraries=tuple(libraries))


# -- accelerators ----------------------------------------------------------------

def _driver_of(root: str, sysfs_device: str) -> str:
    try:
        return os.path.basename(os.readlink(_path(root, sysfs_device + "/driver")))
    except OSError:
        text = _read_text(root, sysfs_device + "/uevent", 4096) or ""
        match = re.search(r"^DRIVER=(\S+)", text, re.M)
        return match.group(1) if match else ""


_ACCEL_DRIVERS = {"intel_vpu": "intel", "amdxdna": "amd", "habanalabs": "intel", "qaic": "qualcomm",
                  "rocket": "rockchip", "ethosu": "arm"}


def _probe_npus(root: str) -> Tuple[NPUDevice, ...]:
    found: List[NPUDevice] = []

    def rel(hit: str) -> str:
        return "/" + os.path.relpath(hit, root).replace(os.sep, "/")

    fixed = (("/dev/rknpu", "rockchip"), ("/dev/galcore", "verisilicon"), ("/dev/vipcore", "verisilicon"))
    for node, vendor in fixed:
        if os.path.exists(_path(root, node)):
            found.append(NPUDevice(vendor, node))
    for pattern, vendor in (("/dev/hailo*", "hailo"), ("/dev/apex_*", "coral"), ("/dev/davinci[0-9]*", "huawei")):
        for hit in sorted(glob.glob(_path(root, pattern))):
            found.append(NPUDevice(vendor, rel(hit)))
    # Rockchip's newer kernels expose the NPU as a DRM render node driven by "rknpu".
    for hit in sorted(glob.glob(_path(root, "/dev/dri/renderD*"))):
        node = os.path.basename(hit)
        if _driver_of(root, f"/sys/class/drm/{node}/device") == "rknpu":
            found.append(NPUDevice("rockchip", rel(hit)))
    for hit in sorted(glob.glob(_path(root, "/dev/accel/accel*"))):
        node = os.path.basename(hit)
        driver = _driver_of(root, f"/sys/class/accel/{node}/device")
        found.append(NPUDevice(_ACCEL_DRIVERS.get(driver, driver or "unknown"), rel(hit)))
    # Coral USB accelerator: Global Unichip (1a6e:089a) before firmware load, Google (18d1:9302) after.
    for dev in sorted(glob.glob(_path(root, "/sys/bus/usb/devices/*"))):
        ids = ((_read_text(root, rel(dev) + "/idVendor", 64) or "").strip(),
               (_read_text(root, rel(dev) + "/idProduct", 64) or "").strip())
        if ids in (("1a6e", "089a"), ("18d1", "9302")):
            found.append(NPUDevice("coral", rel(dev)))
    return tuple(found)


def _probe_gpus(root: str, ask_cuda: bool) -> Tuple[Tuple[GPUDevice, ...], str]:
    """NVIDIA GPUs: the CUDA library's cudaGetDeviceProperties when it is built and this is the
    real root, else the driver's /proc/driver/nvidia/gpus/*/information (discrete GPUs; a Jetson's
    integrated GPU is the board's, see BoardInfo)."""
    note = ""
    if ask_cuda:
        from . import _cuda   # a leaf like this module; loads libedgecuda.so only when it exists
        found, note = _cuda.gpus()
        if found:
            return tuple(GPUDevice(g.name, g.total_bytes, g.compute_capability, g.integrated) for g in found), ""
    names = []
    for info in sorted(glob.glob(_path(root, "/proc/driver/nvidia/gpus/*/information"))):
        text = _read_text(root, "/" + os.path.relpath(info, root), 65536) or ""
        match = re.search(r"^Model:\s*(.+)$", text, re.M)
        names.append(GPUDevice(match.group(1).strip() if match else "NVIDIA GPU"))
    return tuple(names), note


def _onnx_providers() -> Tuple[str, ...]:
    try:
        import onnxruntime  # imported here: it costs ~100 ms and tens of MiB, and is optional
        return tuple(str(p) for p in onnxruntime.get_available_providers())
    except Exception as exc:  # ImportError, or a broken install raising anything at import
        log.debug("onnxruntime providers unavailable: %s", exc)
        return ()


# -- the probe -------------------------------------------------------------------

def probe(root: str = "/", onnx: Optional[bool] = None) -> DeviceInfo:
    """Describe the device whose /proc, /sys, /etc and /dev live under `root`; never raises.

    `onnx` asks onnxruntime for its execution providers; by default only when
    probing the real root, since a fixture tree is not this machine.
    """
    root = os.fspath(root)
    if onnx is None:
        onnx = os.path.abspath(root) == "/"
    parts = {}
    for name, fn, fallback in (
        ("cpu", _probe_cpu, lambda: CPUInfo("unknown", "unknown", frozenset(), 0, 0, 0)),
        ("memory", _probe_memory, lambda: MemoryInfo(None, None, None, None, None, None, None, None, None,
                                                     None, "unknown")),
        ("board", _probe_board, lambda: BoardInfo("unknown", None)),
        ("npus", _probe_npus, tuple),
        # the CUDA library is asked only in a full probe of this machine (as onnxruntime is)
        ("gpus", lambda r: _probe_gpus(r, ask_cuda=onnx), lambda: ((), "")),
    ):
        try:
            parts[name] = fn(root)
        except Exception as exc:  # a probe must never take the caller down; log what went wrong
            log.warning("hardware probe of %s under %s failed: %s", name, root, exc)
            parts[name] = fallback()
    accelerators = AcceleratorInfo(onnx_providers=_onnx_providers() if onnx else (), npu_devices=parts["npus"],
                                   gpus=parts["gpus"][0], gpu_note=parts["gpus"][1])
    return DeviceInfo(cpu=parts["cpu"], memory=parts["memory"], board=parts["board"], accelerators=accelerators)


def default_threads(root: str = "/") -> int:
    """Compute threads for this device: its physical performance cores, within this process's CPU affinity."""
    threads = probe(root, onnx=False).default_threads()
    if os.path.abspath(root) == "/" and hasattr(os, "sched_getaffinity"):
        try:
            threads = min(threads, len(os.sched_getaffinity(0))) or 1
        except OSError:
            pass
    return threads


def _mib(n: Optional[int]) -> str:
    return "unknown" if n is None else f"{n / 2**20:,.0f} MiB"


def device_rows(info: DeviceInfo) -> List[Tuple[str, str]]:
    """The device report as (label, value) rows, for `edgesdk info`."""
    cpu, mem, board, acc = info.cpu, info.memory, info.board, info.accelerators
    rows = [
        ("cpu", f"{cpu.architecture}, {cpu.model}"),
        ("cores", f"{cpu.physical_cores} physical ({cpu.logical_cores} logical), {cpu.performance_cores} "
                  f"performance -> default threads {info.default_threads()}"),
        ("features", " ".join(sorted(cpu.features)) or "none detected"),
        ("memory", f"{_mib(mem.total_bytes)} total, {_mib(mem.available_bytes)} available, "
                   f"swap {_mib(mem.swap_total_bytes)} ({_mib(mem.swap_free_bytes)} free)"),
    ]
    if mem.cgroup_version is not None:
        limit = "no limit" if mem.cgroup_limit_bytes is None else _mib(mem.cgroup_limit_bytes)
        rows.append(("cgroup", f"v{mem.cgroup_version}, limit {limit}, using {_mib(mem.cgroup_usage_bytes)}"))
    if mem.address_space_limit_bytes is not None:
        rows.append(("rlimit", f"address space {_mib(mem.address_space_limit_bytes)}, "
                               f"{_mib(mem.address_space_used_bytes)} mapped now"))
    rows.append(("budget", f"{_mib(mem.budget_bytes)} (from {mem.limit_source})"))
    board_text = board.kind + (f", {board.model}" if board.model else "")
    if board.unified_memory:
        board_text += ", unified CPU/GPU memory"
    rows.append(("board", board_text))
    if board.kind == "jetson":   # elsewhere a stray libcudart says nothing edgesdk uses (the JSON keeps it)
        rows.append(("cuda", f"L4T {board.l4t_release or 'unknown'}, CUDA {board.cuda_version or 'unknown'}, "
                             f"{len(board.cuda_libraries)} libcudart file(s)"))
    gpu_rows = []
    for g in acc.gpus:
        text = g.name
        if g.total_bytes is not None:
            text += f", {_mib(g.total_bytes)}"
        if g.compute_capability is not None:
            text += f", compute capability {g.compute_capability[0]}.{g.compute_capability[1]}"
        gpu_rows.append(text + (", integrated" if g.integrated else ""))
    rows.append(("gpu", "; ".join(gpu_rows) or f"none found{' (' + acc.gpu_note + ')' if acc.gpu_note else ''}"))
    rows.append(("npu", ", ".join(f"{d.vendor} ({d.path})" for d in acc.npu_devices) or "none found"))
    if acc.onnx_providers:
        rows.append(("onnx", ", ".join(acc.onnx_providers)))
    return rows


def format_device(info: DeviceInfo) -> str:
    """The device report as text."""
    return "\n".join(f"{label + ':':10}{value}" for label, value in device_rows(info))


__all__ = ["AcceleratorInfo", "BoardInfo", "CPUInfo", "DeviceInfo", "GPUDevice", "MemoryInfo", "NPUDevice",
           "default_threads", "device_rows", "format_device", "probe"]
