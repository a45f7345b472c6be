"""GPU telemetry through NVML (``pynvml`` from nvidia-ml-py): utilisation, memory and power per device.

Where NVML cannot start (no driver, no GPU, a CPU-only box like CI) the telemetry says "no GPU" once and stays
quiet; it never raises into a run or the UI. A device that lacks one reading (power on some boards) reports None.
The engine records a summary per measured point (``GpuSampler``) so GPU figures sit beside the client's metrics;
the TUI draws the live readings.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

NO_GPU = "no GPU"


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    util_percent: float
    mem_used_mib: float
    mem_total_mib: float
    power_w: float | None


class GpuTelemetry:
    """Opens NVML on first use; ``sample()`` returns one reading per device, or [] with ``unavailable`` set."""

    def __init__(self) -> None:
        self.unavailable: str | None = None
        self._nvml: Any = None
        self._handles: list[Any] = []

    def _open(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except (ImportError, OSError) as err:
            self.unavailable = f"{NO_GPU} (nvidia-ml-py: {err})"
            return
        except Exception as err:  # noqa: BLE001 - every NVMLError subclass means the same to us: no telemetry
            self.unavailable = NO_GPU if "NotFound" in type(err).__name__ else f"{NO_GPU} ({err})"
            return
        self._nvml = pynvml
        if not self._handles:
            self.unavailable = NO_GPU

    def sample(self) -> list[GpuSample]:
        if self._nvml is None and self.unavailable is None:
            self._open()
        if self._nvml is None:
            return []
        nvml = self._nvml
        samples = []
        for index, handle in enumerate(self._handles):
            try:
                name = nvml.nvmlDeviceGetName(handle)
                util = nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            except nvml.NVMLError:
                continue  # a device that fell off the bus reads as absent, not as an error dialog
            try:
                power_w: float | None = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            except nvml.NVMLError:
                power_w = None
            samples.append(
                GpuSample(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    util_percent=float(util.gpu),
                    mem_used_mib=mem.used / 2**20,
                    mem_total_mib=mem.total / 2**20,
                    power_w=power_w,
                )
            )
        return samples

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self._nvml = None


def describe(samples: list[GpuSample], unavailable: str | None) -> list[str]:
    """One line per device for the telemetry panel."""
    if not samples:
        return [unavailable or NO_GPU]
    lines = []
    for s in samples:
        power = f"{s.power_w:.0f} W" if s.power_w is not None else "- W"
        lines.append(
            f"GPU{s.index} {s.util_percent:3.0f}%  mem {s.mem_used_mib / 1024:.1f}/{s.mem_total_mib / 1024:.1f} GiB"
            f"  {power}  {s.name}"
        )
    return lines


class GpuSampler:
    """Samples every device in a background thread while a point is measured (NVML calls block briefly, so they
    stay off the load generator's event loop). ``summary()`` gives per-device means and peaks."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.telemetry = GpuTelemetry()
        self.samples: list[tuple[float, list[GpuSample]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        first = self.telemetry.sample()
        if first:
            self.samples.append((time.monotonic(), first))
            self._thread = threading.Thread(target=self._loop, name="hpload-gpu", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.telemetry.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append((time.monotonic(), self.telemetry.sample()))

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"available": False, "reason": self.telemetry.unavailable or NO_GPU}
        devices: dict[int, list[GpuSample]] = {}
        for _, batch in self.samples:
            for s in batch:
                devices.setdefault(s.index, []).append(s)
        out: dict[str, Any] = {"available": True, "samples": len(self.samples), "devices": []}
        for index, series in sorted(devices.items()):
            powers = [s.power_w for s in series if s.power_w is not None]
            out["devices"].append(
                {
                    "index": index,
                    "name": series[0].name,
                    "util_mean_percent": round(sum(s.util_percent for s in series) / len(series), 1),
                    "util_max_percent": max(s.util_percent for s in series),
                    "mem_max_mib": round(max(s.mem_used_mib for s in series), 1),
                    "mem_total_mib": round(series[0].mem_total_mib, 1),
                    "power_mean_w": round(sum(powers) / len(powers), 1) if powers else None,
                    "power_max_w": round(max(powers), 1) if powers else None,
                }
            )
        return out
