from pathlib import Path

from arlm.bench.machine import cpu_model


def test_cpu_model_is_the_model_name_line_of_cpuinfo():
    name = cpu_model()
    assert name.strip() and "\n" not in name
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and "model name" in cpuinfo.read_text():
        names = [line.split(":", 1)[1] for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        assert name == names[0].strip()
